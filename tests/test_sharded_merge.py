"""The merge of predict.py's shards waits for a slow rank however long it takes (past the timeout of
torch.distributed's groups, here made short) and stops the others promptly, with one line naming the
rank, when a rank's machine is gone (a stopped process group: its sockets stay open, as when a
machine vanishes from the network)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import ROOT

pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid")

# predict.py with knobs for the test, set in every process (launch's spawned ranks run this file
# again as __mp_main__): short signs of life, one rank that sleeps before its share, and a short
# timeout for torch.distributed's process groups (the old merge's gather group kept torch's 30 minutes).
WRAPPER = """
import datetime, os, sys, time
sys.path.insert(0, {root!r})
from segkit.inference import predict_cli, sharded_predict

sharded_predict.HEARTBEAT_S = 0.5
sharded_predict.SILENCE_S = float(os.environ["TEST_SILENCE_S"])
real_run_images = predict_cli.run_images


def run_images(args, predictor, paths, **kwargs):
    from detectron2.utils import comm

    if comm.get_rank() == int(os.environ["TEST_SLOW_RANK"]):
        open(os.environ["TEST_SLOW_MARK"], "w").close()
        time.sleep(float(os.environ["TEST_SLOW_S"]))
    return real_run_images(args, predictor, paths, **kwargs)


predict_cli.run_images = run_images
if os.environ.get("TEST_COLLECTIVE_S"):
    import detectron2.engine

    real_launch = detectron2.engine.launch

    def launch(*args, **kwargs):
        kwargs["timeout"] = datetime.timedelta(seconds=float(os.environ["TEST_COLLECTIVE_S"]))
        return real_launch(*args, **kwargs)

    detectron2.engine.launch = launch

if __name__ == "__main__":
    sys.exit(predict_cli.main())
"""


@pytest.fixture()
def wrapper(tmp_path):
    path = tmp_path / "predict_with_knobs.py"
    path.write_text(WRAPPER.format(root=str(ROOT)))
    return path


@pytest.fixture(scope="module")
def folder(sample_data, tmp_path_factory):
    images = sorted((sample_data / "images").glob("*.jpg"))
    d = tmp_path_factory.mktemp("merge_in")
    for k in range(6):
        shutil.copy(images[k % len(images)], d / f"img{k}.jpg")
    return d


def _start(wrapper, random_mask_rcnn, folder, out, *extra, **knobs):
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo",
               **{f"TEST_{k.upper()}": str(v) for k, v in knobs.items()})
    cmd = [sys.executable, str(wrapper), "--input", str(folder), "--output", str(out), "--weights",
           str(random_mask_rcnn), "--confidence-threshold", "0.05", "--no-masks", "--quiet", "--device", "cpu",
           *map(str, extra)]
    # its own session: the test stops or kills the process with the ranks it spawned
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_rank_slower_than_the_collective_timeout_is_waited_for(wrapper, random_mask_rcnn, folder, tmp_path):
    """Rank 1 starts its share 25 s late, with the process groups' timeout at 8 s and signs of life
    expected every 4 s: the merge still waits for it and writes every image."""
    proc = _start(wrapper, random_mask_rcnn, folder, tmp_path / "out", "--num-gpus", "2", silence_s=4,
                  slow_rank=1, slow_s=25, slow_mark=tmp_path / "slow", collective_s=8)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert (tmp_path / "slow").exists()  # rank 1 did sleep
    assert "6 image(s)" in out and "0 skipped" in out, out
    assert len(json.loads((tmp_path / "out" / "images.json").read_text())["images"]) == 6


@pytest.mark.parametrize("stopped", [1, 0], ids=["rank 1's machine", "rank 0's machine"])
def test_a_vanished_machine_stops_the_merge_with_one_line(wrapper, random_mask_rcnn, folder, tmp_path, stopped):
    """Two machines, each with its own --output. Once the slow rank has started its share, its
    machine's processes are stopped (SIGSTOP: alive to the network, silent). The other machine
    finishes its share and exits within a bounded time, naming the stopped rank; its records stay."""
    url = f"tcp://127.0.0.1:{_free_port()}"
    machines = [
        _start(wrapper, random_mask_rcnn, folder, tmp_path / f"out{rank}", "--num-machines", "2", "--machine-rank",
               rank, "--dist-url", url, silence_s=5, slow_rank=stopped, slow_s=600, slow_mark=tmp_path / "slow")
        for rank in (0, 1)
    ]
    survivor = machines[1 - stopped]
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "slow").exists():
            assert survivor.poll() is None and time.monotonic() < deadline, survivor.stderr.read()[-3000:]
            time.sleep(0.1)
        os.killpg(machines[stopped].pid, signal.SIGSTOP)
        _, err = survivor.communicate(timeout=180)  # the old merge waited here for 48 hours
    finally:
        for proc in machines:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert survivor.returncode != 0
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err[-3000:]
    if stopped == 1:
        assert lines[0].startswith("error: rank 1 (host ") and "gave no sign of life for 5 s" in lines[0], lines[0]
    else:
        assert lines[0].startswith("error: rank 0 (which merges the results) is gone") and "5 s" in lines[0], lines[0]
    assert "--skip-done" in lines[0]
    survivor_out = tmp_path / f"out{1 - stopped}"
    assert len(list((survivor_out / "per_image").glob("*.json"))) == 3  # its share, kept for --skip-done
    assert not (survivor_out / "results.json").exists()
