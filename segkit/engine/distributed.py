"""Decisions that every training process must take together."""

import os

import torch.distributed as dist
from detectron2.utils import comm


def broadcast_from_main(obj):
    """``obj`` as the main process (rank 0) has it, on every rank; ``obj`` itself when not distributed.

    Only rank 0 holds evaluation results (COCOEvaluator returns {} elsewhere), so a decision taken
    from a metric is made there and sent to the others: a rank that decided alone would leave the
    rest waiting in the next all-reduce (gloo: "Connection closed by peer"; NCCL: a hang)."""
    if comm.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def leave_process_group():
    """Every rank calls this together at the end of its work: it waits for the others, then stops
    its process groups' threads. A gloo group left alive until interpreter exit now and then
    aborts the process ("terminate called without an active exception", exit status 250 = -6)
    after all its work is done, and launch then kills the other ranks (pytorch#190489)."""
    if dist.is_available() and dist.is_initialized():
        comm.synchronize()
        dist.destroy_process_group()


def annotation_fingerprints(dataset_names):
    """{dataset name: sha256 of its COCO file, or None when this process cannot read it}."""
    import hashlib

    from detectron2.data import DatasetCatalog, MetadataCatalog

    prints = {}
    for name in dataset_names:
        json_file = MetadataCatalog.get(name).get("json_file", None) if name in DatasetCatalog.list() else None
        try:
            with open(json_file, "rb") as f:
                prints[name] = hashlib.sha256(f.read()).hexdigest()
        except (TypeError, OSError):
            prints[name] = None
    return prints


def check_same_data_everywhere(data_dir, dataset_names):
    """Every machine reads DATASETS.DATA_DIR from its own disk: stop every rank with one line when
    one machine lacks it or holds other annotations than rank 0, instead of training on
    inconsistent data (or leaving rank 0 waiting for a rank that exited)."""
    import socket

    if comm.get_world_size() == 1:
        return
    mine = (socket.gethostname(), os.path.abspath(data_dir), annotation_fingerprints(dataset_names))
    everyone = comm.all_gather(mine)
    host0, _, reference = everyone[0]
    for rank, (host, folder, prints) in enumerate(everyone[1:], start=1):
        for name, digest in prints.items():
            if digest != reference.get(name):
                detail = ("is missing there but not" if digest is None else
                          "exists there but not" if reference.get(name) is None else "differs from the one")
                raise SystemExit(
                    f"error: {folder}: the annotations of {name!r} on rank {rank} (host {host}) {detail} "
                    f"on rank 0 (host {host0}); every machine needs the same data folder (copy it, or "
                    f"use a shared file system)."
                )


def check_same_resume_everywhere(start_iter, checkpoint_file):
    """After ``--resume`` loaded (or did not find) a checkpoint on every rank: stop every rank with one
    line when a rank starts at another iteration or from another checkpoint file (name and size) than
    rank 0. Each rank reads OUTPUT_DIR on its own machine: without a shared file system the others find
    no checkpoint and start at 0 while rank 0 resumes, and they would train different weights for
    different lengths until the ranks wait for each other for ever at the end."""
    import socket

    if comm.get_world_size() == 1:
        return
    identity = None
    if checkpoint_file:
        try:
            identity = (os.path.basename(checkpoint_file), os.path.getsize(checkpoint_file))
        except OSError:
            identity = (os.path.basename(checkpoint_file), None)
    mine = (socket.gethostname(), int(start_iter), checkpoint_file, identity)
    everyone = comm.all_gather(mine)
    host0, start0, file0, identity0 = everyone[0]

    def words(start, file):
        return f"resumes {file} at iteration {start}" if file else f"found no checkpoint and starts at iteration {start}"

    for rank, (host, start, file, identity) in enumerate(everyone[1:], start=1):
        if (start, identity) != (start0, identity0):
            raise SystemExit(
                f"error: --resume: rank {rank} (host {host}) {words(start, file)}, but rank 0 (host {host0}) "
                f"{words(start0, file0)}; every machine must see the same OUTPUT_DIR (a shared file system, "
                f"or a copy of the run folder on each)."
            )
