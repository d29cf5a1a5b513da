"""Training on a Slurm cluster through submitit (MIT), as Meta's detectron2 projects launch it:

    python -m segkit.engine.slurm --nodes 2 --gpus-per-node 8 --partition gpu --time 4h \\
        -- --config-file configs/mask_rcnn_R_50_FPN_3x.yaml OUTPUT_DIR /shared/run1

- One Slurm task per node; each runs ``train_net.py --num-gpus G --num-machines N --machine-rank R
  --dist-url tcp://FIRST_HOST:PORT`` (detectron2's launch then starts one process per GPU). The
  machine rank comes from submitit's ``JobEnvironment``, the address from the job's first host.
- Each task runs train_net.py as a child process. Before a preemption or time-out Slurm sends
  submitit's signal (USR2, SIGNAL_DELAY_S before the time limit); the training saves its full state
  after the current iteration (every rank stops at the same one) and exits, and the first task then
  requeues the job with ``--resume``, which continues from that checkpoint in OUTPUT_DIR (on a file
  system every node shares). After ``--max-requeues`` time-outs the job is not requeued again;
  preemptions do not count. Our resume is bit-identical, so a requeued run ends on the same weights.
- ``--cluster local`` runs the N "nodes" as N local processes (submitit's LocalExecutor): a dry run
  of the whole chain on one machine.

Logs of each task: ``--folder`` (default ``slurm_logs/<job id>_<task>_log.out``).
"""

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time

from segkit.engine.budget import parse_duration
from segkit.engine.hooks import REQUEUE_EXIT_STATUS, SAVE_SIGNAL_ENV

DEFAULT_SCRIPT = "train_net.py"
# Slurm signals the job this long before its time limit (submitit's USR2; its default is 90 s): time
# for the current iteration, the save (SAVE_WAIT_S at most) and the requeue.
SIGNAL_DELAY_S = 120
SAVE_WAIT_S = 90
# Requeues after time-outs before the job is abandoned (submitit's max_num_timeout, default 3 there):
# a training longer than (DEFAULT_MAX_REQUEUES + 1) x --time needs --max-requeues. Preemptions do
# not count.
DEFAULT_MAX_REQUEUES = 20


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
    p.add_argument("--max-requeues", type=int, default=DEFAULT_MAX_REQUEUES, metavar="N",
                   help=f"requeue after at most N time-outs, then stop (default {DEFAULT_MAX_REQUEUES}: up to "
                        f"{DEFAULT_MAX_REQUEUES + 1} x --time of training); preemptions always requeue")
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
    """What each task runs: train_net.py as a child process that it watches. submitit calls
    ``checkpoint`` (first task only) when the job is about to be preempted or to time out."""

    def __init__(self, script, train_args, gpus_per_node, port=None):
        self.script = script
        self.train_args = list(train_args)
        self.gpus_per_node = gpus_per_node
        self.port = port
        self._process = None

    def __getstate__(self):
        # submitit pickles the job it requeues: the running child is not part of it.
        return {k: v for k, v in self.__dict__.items() if k != "_process"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._process = None

    def argv(self, env):
        # Flags first: train_net.py takes everything after its first KEY VALUE pair as config overrides.
        port = self.port or 20000 + int("".join(c for c in str(env.job_id) if c.isdigit()) or 0) % 20000
        return ["--num-gpus", str(self.gpus_per_node), "--num-machines", str(env.num_tasks),
                "--machine-rank", str(env.global_rank), "--dist-url", f"tcp://{env.hostnames[0]}:{port}",
                *self.train_args]

    def start(self, argv, save_signal):
        """train_net.py ``argv`` in a process group of its own (``checkpoint`` signals the whole
        group: detectron2's launch and the workers it spawns). ``save_signal`` is ignored until the
        training installs its handler (it would kill a process still importing), and the child dies
        with this process (a task killed by the local executor leaves no training behind)."""
        sig = int(save_signal)

        def prepare_child():
            signal.signal(sig, signal.SIG_IGN)  # ignored signals stay ignored across exec and spawn
            _die_with_parent()

        env = dict(os.environ, **{SAVE_SIGNAL_ENV: str(sig)})
        self._process = subprocess.Popen([sys.executable, self.script, *argv], env=env,
                                         start_new_session=True, preexec_fn=prepare_child)
        return self._process

    def __call__(self):
        import submitit

        env = submitit.JobEnvironment()
        proc = self.start(self.argv(env), submitit.JobEnvironment._usr_sig())
        try:
            status = proc.wait()
        except BaseException:
            # Cancelled (the local executor sends SIGINT): Ctrl-C for the training, which saves.
            _stop_group(proc, signal.SIGINT, wait_s=30)
            raise
        if status == 0:
            return None
        if status == REQUEUE_EXIT_STATUS and env.global_rank != 0:
            # The other nodes stop with the first, whose task requeues the whole job (submitit
            # calls checkpoint there only).
            print(f"Training stopped for the requeue of job {env.job_id}.", file=sys.stderr)
            return None
        raise RuntimeError(f"{os.path.basename(self.script)} exited with status {status}")

    def checkpoint(self):
        """Ask the training to save after its current iteration, wait for it (at most SAVE_WAIT_S),
        then return the job to requeue: the same training with --resume."""
        import submitit

        proc = self._process
        if proc is not None:
            status = _await_exit(proc, SAVE_WAIT_S, resend=submitit.JobEnvironment._usr_sig())
            if status is None:
                print(f"The training did not save within {SAVE_WAIT_S} s: requeued from its last checkpoint.",
                      file=sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                _await_exit(proc, 30)
            if status == 0:
                return submitit.helpers.DelayedSubmission(_finished)  # done before it could stop
        args = self.train_args if "--resume" in self.train_args else ["--resume", *self.train_args]
        return submitit.helpers.DelayedSubmission(TrainingJob(self.script, args, self.gpus_per_node, self.port))


def _finished():
    """The requeued job of a training that ended just as the job was signalled."""
    return None


def _await_exit(proc, timeout_s, resend=None):
    """The exit status of ``proc`` once it has exited (None after ``timeout_s``), sending it ``resend``
    every few seconds: Slurm signals every process of the job itself, the local executor only the
    task, and a training still starting up ignores the signal until it can save.

    Runs in submitit's signal handler, which interrupts ``proc.wait()`` in ``__call__``: that call
    holds Popen's lock, so Popen.poll would say "running" for ever. waitid(WNOWAIT) looks at the
    child without reaping it."""
    deadline = time.monotonic() + timeout_s
    next_signal = time.monotonic()
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            return proc.returncode
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is not None:
            return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
        if resend is not None and time.monotonic() >= next_signal:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, resend)
            next_signal = time.monotonic() + 5
        time.sleep(0.2)
    return None


def _die_with_parent():
    """Linux: the kernel kills this (child) process when its parent dies (prctl PR_SET_PDEATHSIG).
    Elsewhere a no-op; Slurm runs on Linux."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _stop_group(proc, sig, wait_s):
    """Send ``sig`` to the training's process group; SIGKILL when it has not exited after ``wait_s``."""
    for s in (sig, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, s)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait_s)
            return


def submit(args):
    """Submit the training described by the parsed ``args``; returns the submitit job."""
    import submitit

    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else list(args.train_args)
    script = os.path.abspath(args.script)
    if not os.path.isfile(script):
        raise SystemExit(f"error: {args.script}: no such training script (run from the project folder or pass --script)")
    job = TrainingJob(script, train_args, args.gpus_per_node, args.port)
    minutes = max(1, int(args.time // 60))
    if args.max_requeues < 0:
        raise SystemExit(f"error: --max-requeues {args.max_requeues}: expected 0 or more")
    if args.cluster == "local":
        executor = submitit.LocalExecutor(folder=os.path.join(args.folder, "%j"), max_num_timeout=args.max_requeues)
        # One node only: the "nodes" become tasks of it, each still one machine rank.
        executor.update_parameters(tasks_per_node=args.nodes, timeout_min=minutes,
                                   gpus_per_node=args.gpus_per_node if args.gpus_per_node and _has_gpu() else 0)
    else:
        executor = submitit.AutoExecutor(folder=os.path.join(args.folder, "%j"), cluster="slurm",
                                         slurm_max_num_timeout=args.max_requeues)
        executor.update_parameters(
            nodes=args.nodes, tasks_per_node=1, gpus_per_node=args.gpus_per_node,
            cpus_per_task=args.cpus_per_gpu * max(args.gpus_per_node, 1), timeout_min=minutes,
            slurm_partition=args.partition, slurm_signal_delay_s=SIGNAL_DELAY_S, name="segkit-train",
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
