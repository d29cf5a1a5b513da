"""segkit.engine.slurm through submitit's LocalExecutor (real submitit, local processes): two
"nodes" train as two machine ranks, and a preempted job requeues itself with --resume."""

import time

import pytest
import torch
from conftest import ROOT, TINY_OVERRIDES

from segkit.engine import slurm

pytest.importorskip("submitit")
pytestmark = pytest.mark.slow
MINI = ROOT / "configs/mask_rcnn_R_18_FPN_mini.yaml"


def _submit(tmp_path, data, iters, *extra, time="20m"):
    args = slurm.build_argument_parser().parse_args([
        "--cluster", "local", "--nodes", "2", "--gpus-per-node", "1", "--time", time,
        "--folder", str(tmp_path / "logs"), "--script", str(ROOT / "train_net.py"), "--",
        "--config-file", str(MINI), "DATASETS.DATA_DIR", str(data), "OUTPUT_DIR", str(tmp_path / "out"),
        "SOLVER.MAX_ITER", str(iters), "SOLVER.IMS_PER_BATCH", "2", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()",
        "SEED", "1", *TINY_OVERRIDES, *extra])
    return slurm.submit(args)


def test_two_nodes_train_as_two_machine_ranks(sample_data, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    job = _submit(tmp_path, sample_data, 3, "SOLVER.CHECKPOINT_PERIOD", "3")
    job.results()  # raises with the task's traceback when a task failed
    final = torch.load(tmp_path / "out" / "model_final.pth", map_location="cpu", weights_only=True)
    assert final["iteration"] == 2
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "world size: 2" in log.lower() or "Rank of current process: 0. World size: 2" in log


def test_timed_out_job_requeues_itself_with_resume(sample_data, tmp_path, monkeypatch):
    """--time 1m: the LocalExecutor signals the job 30 s before its limit, as Slurm does; the job
    requeues itself with --resume and goes on from its last checkpoint, not from iteration 0. The
    run is too long to end within a limit on any machine, so the test cancels it once resumed."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    job = _submit(tmp_path, sample_data, 100000, "SOLVER.CHECKPOINT_PERIOD", "3", time="1m")
    log = tmp_path / "out" / "log.txt"
    deadline = time.monotonic() + 900
    resumed = []
    try:
        while not resumed or resumed[-1].endswith("iteration 0"):
            assert not job.done() and time.monotonic() < deadline, f"no resumed run: {resumed}"
            time.sleep(1)
            lines = log.read_text().splitlines() if log.is_file() else []
            resumed = [line for line in lines if "Starting training from iteration" in line]
    finally:
        job.cancel(check=False)
    assert len(resumed) >= 2 and int(resumed[-1].rsplit(" ", 1)[-1]) >= 3, resumed
