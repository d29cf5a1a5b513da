"""``predict.py --input ... --output OUT`` image by image, with records, in one process or shared
among several (``--num-gpus G [--num-machines M --machine-rank R --dist-url URL]``, detectron2's
``launch``: NCCL on GPUs, gloo on CPUs); ``--skip-done`` continues a killed run.

- Rank 0's input list is the one every rank uses (machines may list a folder differently); rank
  ``r`` of ``n`` takes images ``r, r + n, r + 2n, ...`` of it.
- Each rank writes the usual per-image outputs and, last, the image's record
  ``per_image/<name>.json`` (segkit/inference/records.py): a killed rank loses nothing it finished.
  An ``s3://`` output gets each image's files uploaded as soon as its record is written (the
  record last), and their staged copy deleted.
- ``--skip-done`` skips the images that have a record, and refuses (in one line, every rank
  together) when the records were made with another checkpoint, thresholds, tiles, options or
  outputs. Without it a run first removes what an earlier run wrote for its images: an image that
  fails this time keeps none of it and is not counted.
- At the end every rank sends the records of its share to rank 0 (no shared file system needed),
  which writes ``results.json`` and ``images.json`` exactly as one process would (image ids 1..N
  in input order) and prints the summary.
- The merge waits for the slowest rank however long it takes, but not for a dead one: every rank
  leaves signs of life in torch.distributed's key-value store (ShareWatch); rank 0 starts the gather
  once every rank is done, or stops every rank with one line naming a rank silent for SILENCE_S.
"""

import datetime
import json
import os
import sys
import threading
import time
from typing import Callable, NamedTuple

from segkit.inference import records as rec


class PredictSteps(NamedTuple):
    """predict_cli's functions this module runs in each process (passed in: predict_cli imports us)."""

    expand_inputs: Callable
    unique_names: Callable
    build_predictor: Callable
    run_images: Callable
    writer_class: type
# The collectives (rank 0's input list, the gather, the final barrier) start only when every rank is
# at them (ShareWatch waits for the shares), so detectron2's own 30 minutes are plenty; a longer
# timeout only makes a dead rank's survivors wait longer.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)
# Each rank's sign of life in the store, and how long without one means dead (the rank or its
# machine): long enough for a loaded machine, short against the hours a merge would otherwise wait.
HEARTBEAT_S = 2.0
SILENCE_S = 120.0


class ShareWatch:
    """Signs of life and "share done" of every rank, through the key-value store torch.distributed
    already runs on rank 0 (reachable wherever the collectives are). A collective cannot tell a rank
    still predicting from a dead one: it waits out its timeout. A thread of each rank counts up
    ``alive/<rank>`` every HEARTBEAT_S and marks ``done/<rank>`` when its share is done; rank 0's
    thread watches the counters and writes the decision, "go" once every rank is done, or the line
    naming a rank silent for SILENCE_S. The main thread never calls the store itself: when rank 0's
    machine is gone, a store call blocks, and the main thread notices the silence instead."""

    PREFIX = "segkit/predict/"
    GO = "go"

    def __init__(self):
        from detectron2.utils import comm
        from torch.distributed import distributed_c10d

        self.rank, self.world = comm.get_rank(), comm.get_world_size()
        self.store = distributed_c10d._get_default_store()
        self._done = threading.Event()
        self._finished = threading.Event()
        self._answered = time.monotonic()  # the store's last answer
        self._decision = None
        self._failure = None  # the store's error: rank 0's process (which serves it) ended
        self._seen = {}  # rank 0: rank -> (its counter, when it last changed)
        threading.Thread(target=self._run, name="share-watch", daemon=True).start()

    def _key(self, *parts):
        return self.PREFIX + "/".join(map(str, parts))

    def _run(self):
        import socket

        try:
            self.store.set(self._key("host", self.rank), socket.gethostname())
            while not self._finished.is_set():
                self.store.add(self._key("alive", self.rank), 1)
                if self._done.is_set():
                    self.store.set(self._key("done", self.rank), "1")
                if self.rank == 0 and self._decision is None:
                    self._judge()
                elif self._decision is None and self.store.check([self._key("decision")]):
                    self._decision = self.store.get(self._key("decision")).decode()
                    self.store.add(self._key("heard"), 1)
                self._answered = time.monotonic()
                self._finished.wait(HEARTBEAT_S)
        except Exception as e:  # noqa: BLE001 (any store failure: the main thread words it)
            self._failure = e

    def _host(self, rank):
        key = self._key("host", rank)
        return self.store.get(key).decode() if self.store.check([key]) else "unknown host"

    def _judge(self):
        """Rank 0: the decision, once there is one, for every rank to read."""
        now = time.monotonic()
        working, silent = 0, None
        for r in range(self.world):
            if self.store.check([self._key("done", r)]):
                continue
            working += 1
            count = self.store.add(self._key("alive", r), 0)
            if self._seen.get(r, (None,))[0] != count:
                self._seen[r] = (count, now)
            elif now - self._seen[r][1] > SILENCE_S and silent is None:
                silent = r
        if silent is not None:
            decision = (f"error: rank {silent} (host {self._host(silent)}) gave no sign of life for {SILENCE_S:.0f} s "
                        f"before finishing its share: it or its machine died. No results.json; the records "
                        f"written stay: run the same command with --skip-done to finish.")
        elif working == 0:
            decision = self.GO
        else:
            return
        self.store.set(self._key("decision"), decision)
        self._decision = decision

    def wait_for_every_share(self):
        """Return once every rank has finished its share; SystemExit with the decision's line when a
        rank died (every living rank stops with the same line)."""
        self._done.set()
        while self._decision is None:
            if self._failure is not None or time.monotonic() - self._answered > SILENCE_S:
                self._finished.set()
                why = (f"its process ended ({self._failure})" if self._failure is not None else
                       f"no answer for {SILENCE_S:.0f} s: it or its machine died")
                raise SystemExit(f"error: rank 0 (which merges the results) is gone before the merge: {why}. "
                                 f"No results.json; the records written stay: run the same command with "
                                 f"--skip-done to finish.")
            time.sleep(0.2)
        if self._decision != self.GO:
            if self.rank == 0:
                self._wait_until_heard()  # the others read the line from rank 0's store, which ends with it
            self._finished.set()
            raise SystemExit(self._decision)
        self._finished.set()  # from here on the collectives: every rank is at the merge

    def _wait_until_heard(self):
        deadline = time.monotonic() + 5 * HEARTBEAT_S
        alive = self.world - 2  # all but rank 0 and the silent rank (more may be dead: then the deadline)
        while time.monotonic() < deadline and self.store.add(self._key("heard"), 0) < alive:
            time.sleep(0.2)


def add_arguments(parser):
    group = parser.add_argument_group("several processes or machines (detectron2's launch)")
    group.add_argument("--num-gpus", type=int, default=1,
                       help="processes per machine, one per GPU (CPU processes without a GPU; default 1)")
    group.add_argument("--num-machines", type=int, default=1, help="machines taking part (default 1)")
    group.add_argument("--machine-rank", type=int, default=0, help="this machine's rank, 0..M-1 (default 0)")
    group.add_argument("--dist-url", default="auto",
                       help="tcp://HOST:PORT of machine 0 (default auto: a free port, one machine only)")
    group.add_argument("--skip-done", action="store_true",
                       help=f"skip the images that already have {rec.RECORDS_DIR}/<name>.json in --output "
                            "(continue a killed run; refused when the records were made with other "
                            "weights, thresholds, tiles, options or outputs)")


def requested(args):
    """Images predicted into --output go through this module: records, and uploads per image."""
    return bool(args.input and args.output and not args.video_input and not args.rank)


def check_arguments(parser, args):
    if not (args.num_gpus * args.num_machines > 1 or args.skip_done):
        return
    if not args.output:
        parser.error("--num-gpus/--num-machines/--skip-done need --output DIR (the records live there)")
    if args.video_input or args.rank:
        parser.error("--num-gpus/--num-machines/--skip-done apply to --input images, not to "
                     "--video-input or --rank")
    if args.num_machines > 1 and args.dist_url == "auto":
        parser.error("--num-machines > 1 needs --dist-url tcp://HOST:PORT (machine 0's address)")


def make_shard_writer(writer_class):
    class ShardWriter(writer_class):
        """The usual outputs into ``output.local``, then the image's record, then ``output.push()``
        (an upload for a remote output); results.json is rank 0's merge, not ours."""

        def __init__(self, args, predictor, output):
            super().__init__(args, predictor)
            self.out, self.output = output.local, output
            self.made_by = rec.made_by(args, predictor, self.folders(predictor.semantic))
            self.records = {}  # {name: record} written by this run

        def write(self, prediction, name, image_id, source_name):
            from segkit.data.atomic import write_json

            start = len(self.results)
            super().write(prediction, name, image_id, source_name)
            h, w = prediction.image_size
            results = [{k: v for k, v in r.items() if k != "image_id"} for r in self.results[start:]]
            record = rec.make_record(prediction.file_name, source_name, h, w, results, self.made_by)
            write_json(rec.record_path(self.out, name), record, indent=None)
            self.output.push(last=rec.RECORDS_DIR)
            self.records[name] = record
            del self.results[:], self.images[:]  # the records hold them

        def finish(self):
            pass

    return ShardWriter


def _done_records(output, todo):
    """{name: record} of the images of ``todo`` ([(name, path)]) that have a record in ``output``."""
    present = output.files(rec.RECORDS_DIR)
    wanted = {rec.record_rel(name): (name, path) for name, path in todo if rec.record_rel(name) in present}
    done = {}
    for rel, data in output.read(wanted).items():
        name, path = wanted[rel]
        record = rec.parse_record(data, path)
        if record is not None:
            done[name] = record
    return done


def _refuse_other_settings(output, done, made_by):
    """Every rank together: stop with one line when the records some rank would skip were made
    otherwise than this run (their results and ours would be mixed)."""
    from detectron2.utils import comm

    from segkit.engine.distributed import leave_process_group

    mine = []
    for record in done.values():
        mine += [d for d in rec.differences(made_by, record) if d not in mine]
    found = []
    for part in comm.all_gather(mine):
        found += [d for d in part if d not in found]
    if not found:
        return
    if comm.is_main_process():
        print(f"error: {output.shown}: --skip-done would mix two runs, its records were made otherwise "
              f"({'; '.join(found)}); run without --skip-done to replace them, or choose another --output",
              file=sys.stderr, flush=True)
    leave_process_group()
    raise SystemExit(2)


def _remove_earlier_outputs(output, names):
    """What an earlier run wrote for ``names`` (records, overlays, masks, ...; nothing else), and on
    rank 0 the summary: a rerun replaces them, and an image that fails this time must not keep the
    earlier run's outputs nor be counted."""
    from detectron2.utils import comm

    names = set(names)
    stale = sorted(r for r in output.files(*rec.OUTPUT_DIRS) if rec.owned(r, names))
    if comm.is_main_process():
        stale += [rec.RESULTS_JSON, rec.IMAGES_JSON]
    output.remove(stale)


def merge(output, class_names, names, records, threshold_note, semantic=False):
    """results.json and images.json of every recorded image, numbered 1..N in input order, written
    into ``output`` (a segkit.data.remote output folder). ``semantic``: U-Net records, whose results
    are the classes present, so they count no instances."""
    from segkit.data.atomic import write_json, write_text
    from segkit.inference.coco_results import coco_images
    from segkit.inference.counts import class_counts, counts_csv, counts_line, total_counts

    images, results, counts = [], [], []
    for name in names:
        record = records.get(name)
        if record is None:
            continue
        image_id = len(images) + 1
        images.append((image_id, record[rec.SOURCE], record[rec.HEIGHT], record[rec.WIDTH]))
        results += [{"image_id": image_id, **r} for r in record[rec.RESULTS]]
        counts.append((record[rec.SOURCE], class_counts([] if semantic else record[rec.RESULTS], class_names)))
    write_json(os.path.join(output.local, rec.IMAGES_JSON), coco_images(images, class_names))
    write_text(os.path.join(output.local, rec.RESULTS_JSON), json.dumps(results))
    write_text(os.path.join(output.local, rec.COUNTS_CSV), counts_csv(counts, class_names))
    output.push()
    print(f"{len(images)} image(s), {len(results)} instance(s) ({threshold_note}): "
          f"{counts_line(total_counts(counts, class_names))}; "
          f"{len(names) - len(images)} skipped; results in {output.shown}")
    return 0 if images else 1


def _input_list(args, expand_inputs):
    """Rank 0's input list (None when it found no image), the same on every rank."""
    from detectron2.utils import comm

    from segkit.engine.distributed import broadcast_from_main

    paths = None
    if comm.is_main_process():
        paths, missing = expand_inputs(args.input)
        for m in missing:
            print(f"not found: {m}", file=sys.stderr)
        if not paths:
            print("error: no input images found", file=sys.stderr)
    return broadcast_from_main(paths)


def _predict_share(args, cli):
    from segkit.data.remote import RemoteSourceError, output_folder

    try:
        with output_folder(args.output) as output:  # s3://...: staged here, uploaded image by image
            _predict_share_into(args, cli, output)
    except RemoteSourceError as e:  # the images pushed so far are there: --skip-done continues
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def _predict_share_into(args, cli, output):
    from detectron2.utils import comm

    from segkit.engine.distributed import leave_process_group

    steps = PredictSteps(*cli)
    paths = _input_list(args, steps.expand_inputs)
    if not paths:  # every rank got the same empty list
        leave_process_group()
        raise SystemExit(1)
    watch = ShareWatch() if comm.get_world_size() > 1 else None
    names = steps.unique_names(paths)
    rank, world = comm.get_rank(), comm.get_world_size()
    share = list(range(rank, len(paths), world))
    predictor = steps.build_predictor(args, announce=comm.is_main_process())
    writer = make_shard_writer(steps.writer_class)(args, predictor, output)
    done = _done_records(output, [(names[i], paths[i]) for i in share]) if args.skip_done else {}
    _refuse_other_settings(output, done, writer.made_by)
    todo = [i for i in share if names[i] not in done]
    if not args.skip_done:  # (with it, the records were listed once and nothing else is)
        _remove_earlier_outputs(output, [names[i] for i in todo])
    if done and comm.is_main_process():
        print(f"--skip-done: rank 0 skips {len(done)} image(s) already predicted", file=sys.stderr)
    if todo:
        args.quiet = args.quiet or not comm.is_main_process()  # one bar; shares are the same size
        steps.run_images(args, predictor, [paths[i] for i in todo], names=[names[i] for i in todo],
                         writer=writer, summary=False)
    mine = {**done, **writer.records}  # an image that failed this time has none
    if watch is not None:
        watch.wait_for_every_share()  # the gather then waits for nobody: its timeout cannot cut a slow rank
    gathered = comm.gather(mine, dst=0)
    status = 0
    if comm.is_main_process():
        records = {k: v for part in gathered for k, v in part.items()}
        status = merge(output, predictor.class_names, names, records, predictor.threshold_note, predictor.semantic)
    leave_process_group()
    if status:
        raise SystemExit(status)


def run(args, steps):
    """Predict ``args.input`` with ``args.num_gpus`` processes on each of ``args.num_machines``
    machines; ``steps``: a :class:`PredictSteps` of predict_cli's functions."""
    from detectron2.engine import launch
    from torch.multiprocessing import ProcessExitedException

    try:
        launch(_predict_share, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args, tuple(steps)), timeout=COLLECTIVE_TIMEOUT)
    except SystemExit as e:  # one process: the worker ran here
        return e.code
    except ProcessExitedException as e:  # a spawned worker exited with a status (its lines are printed)
        return e.exit_code or 1
    return 0
