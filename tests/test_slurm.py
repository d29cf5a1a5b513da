"""segkit.engine.slurm through submitit's LocalExecutor (real submitit, local processes): two
"nodes" train as two machine ranks, and a preempted job requeues itself with --resume."""

import re
import time

import pytest
import torch
from conftest import ROOT, TINY_OVERRIDES

from segkit.engine import slurm

pytest.importorskip("submitit")
pytestmark = pytest.mark.slow
MINI = ROOT / "configs/mask_rcnn_R_18_FPN_mini.yaml"


def _submit(tmp_path, data, iters, *extra, time="20m", max_requeues=None):
    args = slurm.build_argument_parser().parse_args([
        "--cluster", "local", "--nodes", "2", "--gpus-per-node", "1", "--time", time,
        *(["--max-requeues", str(max_requeues)] if max_requeues is not None else []),
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


def test_timed_out_job_saves_where_it_stopped_and_requeues_until_max_requeues(sample_data, tmp_path, monkeypatch):
    """--time 1m: the LocalExecutor signals the job 30 s before its limit, as Slurm does. The
    training saves the iteration it is at (CHECKPOINT_PERIOD is past the run: no periodic checkpoint
    exists), the job requeues itself with --resume and continues from that iteration. The second
    time-out is one more than --max-requeues 1 allows: the job ends, its state saved again."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    job = _submit(tmp_path, sample_data, 100000, "SOLVER.CHECKPOINT_PERIOD", "100000", time="1m", max_requeues=1)
    deadline = time.monotonic() + 600
    try:
        while job.state == "RUNNING":  # the local controller, which runs the job's starts one after another
            assert time.monotonic() < deadline, "the job neither requeued nor ended"
            time.sleep(1)
    finally:
        job.cancel(check=False)
    log = (tmp_path / "out" / "log.txt").read_text()
    starts = [int(n) for n in re.findall(r"Starting training from iteration (\d+)", log)]
    saves = [(int(i), f) for i, f in re.findall(r"Stopped for a requeue after iteration (\d+): saved (\S+)\.", log)]
    assert len(saves) == 2 and starts == [0, saves[0][0] + 1], (starts, saves, log[-3000:])
    for iteration, path in saves:  # the file of the iteration the job stopped at
        assert torch.load(path, map_location="cpu", weights_only=True)["iteration"] == iteration
    assert saves[1][0] > saves[0][0]
    logs = "".join(p.read_text() for p in (tmp_path / "logs").rglob("*.err"))
    assert "timed-out too many times" in logs, logs[-3000:]
