"""segkit.engine.slurm through submitit's LocalExecutor (real submitit, local processes): two
"nodes" train as two machine ranks, and a preempted job requeues itself with --resume."""

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
    requeues itself with --resume and finishes from its last checkpoint."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    job = _submit(tmp_path, sample_data, 18, "SOLVER.CHECKPOINT_PERIOD", "3", time="1m")
    job.results()
    final = torch.load(tmp_path / "out" / "model_final.pth", map_location="cpu", weights_only=True)
    assert final["iteration"] == 17
    log = (tmp_path / "out" / "log.txt").read_text()
    resumed = [line for line in log.splitlines() if "Starting training from iteration" in line]
    assert len(resumed) >= 2 and not resumed[-1].endswith("iteration 0"), resumed
