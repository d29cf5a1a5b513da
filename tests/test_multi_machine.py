"""Several machines, played by processes on 127.0.0.1 (gloo): train_net.py with --num-machines 2,
one process per "machine", as detectron2's launch runs them across hosts."""

import os
import re
import socket
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TINY_OVERRIDES

MINI = ROOT / "configs/mask_rcnn_R_18_FPN_mini.yaml"
pytestmark = pytest.mark.slow


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_machines(per_rank_args, timeout=600, cwds=None):
    """train_net.py once per machine rank (rank r gets ``per_rank_args[r]``, runs in ``cwds[r]``: a
    relative path there stands for that machine's own disk); returns [(rc, stdout, stderr)]."""
    url = f"tcp://127.0.0.1:{free_port()}"
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "train_net.py"), "--num-gpus", "1", "--num-machines", str(len(per_rank_args)),
             "--machine-rank", str(rank), "--dist-url", url, *map(str, args)],
            cwd=cwds[rank] if cwds else ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank, args in enumerate(per_rank_args)
    ]
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        results.append((p.returncode, out, err))
    return results


def _args(data, out, *extra):
    return ["--config-file", MINI, "DATASETS.DATA_DIR", data, "OUTPUT_DIR", out, "SOLVER.IMS_PER_BATCH", "2",
            "DATASETS.TEST", "('mydata_val',)", "TEST.PR_CURVES", "False", "SOLVER.BEST_METRIC", "bbox/AP50",
            *TINY_OVERRIDES, *extra]


def test_two_machines_train_with_time_budget_and_early_stopping(sample_data, tmp_path):
    """Both machines exit 0 and stop at the same iteration, where early stopping fired, although
    only rank 0 has the metric and plans the budget; only rank 0 writes (rank 1's OUTPUT_DIR, as
    on a machine without a shared file system, stays absent)."""
    common = ["SOLVER.MAX_ITER", "200", "TEST.EVAL_PERIOD", "2", "SOLVER.EARLY_STOP_PATIENCE", "2",
              "SOLVER.CHECKPOINT_PERIOD", "4"]
    (rc0, out0, err0), (rc1, out1, err1) = run_machines(
        # a budget with room for several evaluations (its plan leaves out those it cannot afford), so
        # that early stopping is what ends the run, well before the budget would
        [["--time-budget", "90s", *_args(sample_data, tmp_path / f"machine{rank}", *common)] for rank in (0, 1)])
    assert rc0 == 0, err0[-3000:]
    assert rc1 == 0, err1[-3000:]
    assert not (tmp_path / "machine1").exists()
    log = (tmp_path / "machine0" / "log.txt").read_text()
    assert "Time budget 90 s" in log
    # Early stopping, not the budget, ended the run (EarlyStopping's line), at the same iteration
    # for both ranks (both exited 0: a rank still training would hang in its next all-reduce)
    stops = re.findall(r"Early stop at iteration (\d+): bbox/AP50 has not improved for 2 evaluations", log)
    assert len(stops) == 1, log[-3000:]
    stopped_at = int(stops[0])
    assert f"Time budget: training ended at iteration {stopped_at + 1:,} " in log, log[-3000:]
    final = torch.load(tmp_path / "machine0" / "model_final.pth", map_location="cpu", weights_only=True)
    assert final["iteration"] == stopped_at
    last = sorted(p.name for p in (tmp_path / "machine0").glob("model_0*.pth"))[-1]
    assert last == f"model_{final['iteration']:07d}.pth"  # --resume continues from the end
    assert not any(k.startswith("module.") for k in final["model"])


def test_a_machine_without_the_data_folder_stops_every_rank_with_one_line(sample_data, tmp_path):
    (rc0, _, err0), (rc1, _, err1) = run_machines(
        [_args(sample_data, tmp_path / "out", "SOLVER.MAX_ITER", "2"),
         _args(tmp_path / "no_data_here", tmp_path / "out", "SOLVER.MAX_ITER", "2")], timeout=300)
    assert rc0 != 0 and rc1 != 0
    for err in (err0, err1):
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert lines and "no_data_here" in lines[0] and "rank 1" in lines[0] and "'mydata_train'" in lines[0] and "is missing" in lines[0], err[-2000:]
    assert not list((tmp_path / "out").glob("*.pth"))


def test_resume_without_a_shared_output_dir_stops_every_rank_with_one_line(sample_data, tmp_path):
    """OUTPUT_DIR relative to each machine's own folder, as on machines without a shared file system:
    rank 0 finds the checkpoint of an earlier run, rank 1 none. Both stop at once with one line
    instead of training from different iterations (rank 1 from 0) until they wait on each other."""
    machines = [tmp_path / "machine0", tmp_path / "machine1"]
    for m in machines:
        m.mkdir()
    run = os.path.join("output", "run")
    first = subprocess.run(
        [sys.executable, str(ROOT / "train_net.py"), *map(str, _args(sample_data, run, "SOLVER.MAX_ITER", "2",
                                                                      "DATASETS.TEST", "()"))],
        cwd=machines[0], env=dict(os.environ, OMP_NUM_THREADS="2"), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (machines[0] / run / "model_0000001.pth").is_file()

    results = run_machines([["--resume", *_args(sample_data, run, "SOLVER.MAX_ITER", "4", "DATASETS.TEST", "()")]] * 2,
                           timeout=300, cwds=machines)
    for rc, _, err in results:
        assert rc != 0
        lines = [line for line in err.splitlines() if line.startswith("error: --resume:")]
        assert len(lines) == 1, err[-3000:]
        assert "rank 1" in lines[0] and "found no checkpoint and starts at iteration 0" in lines[0], lines[0]
        assert "model_0000001.pth at iteration 2" in lines[0] and "OUTPUT_DIR" in lines[0], lines[0]
    assert not (machines[1] / run).exists()
    assert not (machines[0] / run / "model_0000003.pth").exists()
