"""Training on a Slurm cluster through submitit (MIT), as Meta's detectron2 projects launch it:

    python -m segkit.engine.slurm --nodes 2 --gpus-per-node 8 --partition gpu --time 4h \\
        -- --config-file configs/mask_rcnn_R_50_FPN_3x.yaml OUTPUT_DIR /shared/run1

- One Slurm task per node; each runs ``train_net.py --num-gpus G --num-machines N --machine-rank R
  --dist-url tcp://FIRST_HOST:PORT`` (detectron2's launch then starts one process per GPU). The
  machine rank comes from submitit's ``JobEnvironment``, the address from the job's first host.
- On preemption or time-out submitit requeues the job; the requeued job runs with ``--resume`` and
  continues from the last checkpoint in OUTPUT_DIR (which must be on a file system every node
  shares). Our resume is bit-identical, so a requeued run ends on the same weights.
- ``--cluster local`` runs the N "nodes" as N local processes (submitit's LocalExecutor): a dry run
  of the whole chain on one machine.

Logs of each task: ``--folder`` (default ``slurm_logs/<job id>_<task>_log.out``).
"""

import argparse
import os
import runpy
import sys

from segkit.engine.budget import parse_duration

DEFAULT_SCRIPT = "train_net.py"


def build_argument_parser():
    p = argparse.ArgumentParser(
        prog="python -m segkit.engine.slurm",
        description="Submit train_net.py to Slurm (submitit): one task per node, requeued with --resume "
                    "on preemption or time-out. Everything after -- goes to train_net.py.",
        epilog="Example: python -m segkit.engine.slurm --nodes 2 --gpus-per-node 8 --partition gpu "
               "--time 4h -- --config-file configs/mask_rcnn_R_50_FPN_3x.yaml OUTPUT_DIR /shared/run1")
    p.add_argument("--nodes", type=int, default=1, help="machines (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=1, help="GPUs, i.e. training processes, per node (default 1)")
    p.add_argument("--partition", default=None, help="Slurm partition")
    p.add_argument("--time", type=parse_duration, default=parse_duration("4h"), metavar="DURATION",
                   help="time limit of one job, e.g. 90m, 4h (default 4h); the job requeues itself when it ends")
    p.add_argument("--cpus-per-gpu", type=int, default=8, help="CPU cores per GPU (data loading; default 8)")
    p.add_argument("--folder", default="slurm_logs", help="submitit's folder for logs and job files (default slurm_logs)")
    p.add_argument("--port", type=int, default=None,
                   help="TCP port on the first node for torch.distributed (default: from the job id)")
    p.add_argument("--cluster", choices=["slurm", "local"], default="slurm",
                   help="local: the nodes as local processes, to try the chain out (default slurm)")
    p.add_argument("--script", default=DEFAULT_SCRIPT, help=f"the training script (default {DEFAULT_SCRIPT})")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then train_net.py's arguments")
    return p


class TrainingJob:
    """What each task runs; submitit calls ``checkpoint`` on preemption / time-out to get the
    job to requeue."""

    def __init__(self, script, train_args, gpus_per_node, port=None):
        self.script = script
        self.train_args = list(train_args)
        self.gpus_per_node = gpus_per_node
        self.port = port

    def argv(self, env):
        # Flags first: train_net.py takes everything after its first KEY VALUE pair as config overrides.
        port = self.port or 20000 + int("".join(c for c in str(env.job_id) if c.isdigit()) or 0) % 20000
        return ["--num-gpus", str(self.gpus_per_node), "--num-machines", str(env.num_tasks),
                "--machine-rank", str(env.global_rank), "--dist-url", f"tcp://{env.hostnames[0]}:{port}",
                *self.train_args]

    def __call__(self):
        import submitit

        argv = self.argv(submitit.JobEnvironment())
        saved = sys.argv
        sys.argv = [self.script, *argv]
        try:
            runpy.run_path(self.script, run_name="__main__")
        except SystemExit as e:
            # The script's sys.exit(0) is a success: submitit records a result only when we return.
            # Any other exit (submitit's own after a requeue, a failed run) goes on as it was.
            if e.code not in (None, 0):
                raise
        finally:
            sys.argv = saved

    def checkpoint(self):
        import multiprocessing

        import submitit

        # launch's training processes are not daemons: the task could not exit (and requeue) before
        # they ended. Their work since the last checkpoint is lost either way.
        for child in multiprocessing.active_children():
            child.terminate()
        args = self.train_args if "--resume" in self.train_args else ["--resume", *self.train_args]
        return submitit.helpers.DelayedSubmission(TrainingJob(self.script, args, self.gpus_per_node, self.port))


def submit(args):
    """Submit the training described by the parsed ``args``; returns the submitit job."""
    import submitit

    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else list(args.train_args)
    script = os.path.abspath(args.script)
    if not os.path.isfile(script):
        raise SystemExit(f"error: {args.script}: no such training script (run from the project folder or pass --script)")
    job = TrainingJob(script, train_args, args.gpus_per_node, args.port)
    minutes = max(1, int(args.time // 60))
    if args.cluster == "local":
        executor = submitit.LocalExecutor(folder=os.path.join(args.folder, "%j"))
        # One node only: the "nodes" become tasks of it, each still one machine rank.
        executor.update_parameters(tasks_per_node=args.nodes, timeout_min=minutes,
                                   gpus_per_node=args.gpus_per_node if args.gpus_per_node and _has_gpu() else 0)
    else:
        executor = submitit.AutoExecutor(folder=os.path.join(args.folder, "%j"), cluster="slurm")
        executor.update_parameters(
            nodes=args.nodes, tasks_per_node=1, gpus_per_node=args.gpus_per_node,
            cpus_per_task=args.cpus_per_gpu * max(args.gpus_per_node, 1), timeout_min=minutes,
            slurm_partition=args.partition, name="segkit-train",
        )
    return executor.submit(job)


def _has_gpu():
    import torch

    return torch.cuda.is_available()


def main(argv=None):
    args = build_argument_parser().parse_args(argv)
    if args.cluster == "slurm" and not args.partition:
        build_argument_parser().error("--partition is needed on Slurm")
    job = submit(args)
    print(f"submitted job {job.job_id}: logs in {os.path.join(args.folder, str(job.job_id))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
