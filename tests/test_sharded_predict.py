"""predict.py sharded over processes (detectron2's launch, gloo on CPU): the merged results equal
one process's, a killed run continues with --skip-done and loses nothing it wrote."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT

pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid")


def predict(*args, wait=True):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(ROOT / "predict.py"), *map(str, args)]
    if not wait:  # its own session: the test can kill it with its spawned workers
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def folder(sample_data, tmp_path_factory):
    """Nine images (two with the same stem in a sub-folder) and a broken one."""
    images = sorted((sample_data / "images").glob("*.jpg"))
    d = tmp_path_factory.mktemp("shard_in")
    (d / "sub").mkdir()
    for k in range(8):
        shutil.copy(images[k % len(images)], d / f"img{k}.jpg")
    shutil.copy(images[0], d / "sub" / "img1.jpg")
    (d / "broken.jpg").write_bytes(b"not a JPEG")
    return d


def _common(random_mask_rcnn, folder, out):
    return ["--input", folder, "--output", out, "--weights", random_mask_rcnn, "--confidence-threshold", "0.05",
            "--no-masks", "--quiet", "--device", "cpu"]


def _outputs(out):
    return (json.loads((out / "results.json").read_text()), json.loads((out / "images.json").read_text()))


def _sorted(results):
    return sorted(results, key=lambda r: json.dumps(r, sort_keys=True))


def test_two_processes_give_what_one_gives(random_mask_rcnn, folder, tmp_path):
    one = predict(*_common(random_mask_rcnn, folder, tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-3000:]
    two = predict(*_common(random_mask_rcnn, folder, tmp_path / "two"), "--num-gpus", "2")
    assert two.returncode == 0, two.stderr[-3000:]
    results_one, images_one = _outputs(tmp_path / "one")
    results_two, images_two = _outputs(tmp_path / "two")
    assert len(results_one) > 20
    assert _sorted(results_two) == _sorted(results_one)
    assert images_two == images_one  # the same image ids, in input order
    assert "9 image(s)" in two.stdout and "1 skipped" in two.stdout, two.stdout
    assert [l for l in two.stderr.splitlines() if "broken.jpg" in l], two.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "two" / "overlays").iterdir()) == \
        sorted(p.name for p in (tmp_path / "one" / "overlays").iterdir())


def test_killed_run_continues_with_skip_done(random_mask_rcnn, folder, tmp_path):
    out = tmp_path / "out"
    proc = predict(*_common(random_mask_rcnn, folder, out), "--num-gpus", "2", wait=False)
    records = out / "per_image"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(records.glob("*.json")) if records.is_dir() else []) < 2:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, mid-run
    proc.communicate()
    assert not (out / "results.json").exists()
    done = {p.name: p.stat().st_mtime_ns for p in records.glob("*.json")}
    assert 2 <= len(done) < 9, done

    rerun = predict(*_common(random_mask_rcnn, folder, out), "--num-gpus", "2", "--skip-done")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "already predicted" in rerun.stderr
    assert all(p.stat().st_mtime_ns == done[p.name] for p in records.glob("*.json") if p.name in done)
    assert len(list(records.glob("*.json"))) == 9

    plain = predict(*_common(random_mask_rcnn, folder, tmp_path / "plain"))
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert _sorted(_outputs(out)[0]) == _sorted(_outputs(tmp_path / "plain")[0])
    assert _outputs(out)[1] == _outputs(tmp_path / "plain")[1]


def test_several_machines_need_an_address(random_mask_rcnn, folder, tmp_path):
    proc = predict(*_common(random_mask_rcnn, folder, tmp_path / "o"), "--num-machines", "2")
    assert proc.returncode == 2 and "--dist-url" in proc.stderr.splitlines()[-1]


def test_s3_input_and_output_give_what_local_files_give(moto_s3, random_mask_rcnn, folder, tmp_path):
    """--input s3://bucket/prefix is listed and read image by image (nothing mirrored into the
    output); --output s3://... receives what a local --output folder holds."""
    moto_s3.create_bucket(Bucket="shots")
    for dirpath, _, files in os.walk(folder):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), folder).replace(os.sep, "/")
            moto_s3.upload_file(os.path.join(dirpath, f), "shots", f"in/{rel}")
    local = predict(*_common(random_mask_rcnn, folder, tmp_path / "local"))
    assert local.returncode == 0, local.stderr[-3000:]
    cloud = predict(*_common(random_mask_rcnn, "s3://shots/in", "s3://shots/out"))
    assert cloud.returncode == 0, cloud.stderr[-3000:]
    assert [l for l in cloud.stderr.splitlines() if "broken.jpg" in l], cloud.stderr[-2000:]
    assert "9 image(s)" in cloud.stdout and "uploaded" in cloud.stderr

    listed = moto_s3.list_objects_v2(Bucket="shots", Prefix="out/")["Contents"]
    uploaded = sorted(o["Key"][len("out/"):] for o in listed)
    written = sorted(os.path.relpath(os.path.join(d, f), tmp_path / "local").replace(os.sep, "/")
                     for d, _, files in os.walk(tmp_path / "local") for f in files)
    assert uploaded == written  # overlays/, results.json, images.json: no copy of the inputs
    body = {k: json.loads(moto_s3.get_object(Bucket="shots", Key=f"out/{k}")["Body"].read())
            for k in ("results.json", "images.json")}
    assert body["results.json"] == json.loads((tmp_path / "local" / "results.json").read_text())
    assert body["images.json"] == json.loads((tmp_path / "local" / "images.json").read_text())
