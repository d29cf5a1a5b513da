"""predict.py sharded over processes (detectron2's launch, gloo on CPU): the merged results equal
one process's, a killed run continues with --skip-done and loses nothing it wrote, a rerun never
mixes two runs, and an s3:// output is uploaded image by image."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, save_random_mask_rcnn, tree_digest

from segkit.inference import records as rec

pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid")


def predict(*args, wait=True, env=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
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
    assert "9 image(s)" in cloud.stdout and "results in s3://shots/out" in cloud.stdout

    listed = moto_s3.list_objects_v2(Bucket="shots", Prefix="out/")["Contents"]
    uploaded = sorted(o["Key"][len("out/"):] for o in listed)
    written = sorted(os.path.relpath(os.path.join(d, f), tmp_path / "local").replace(os.sep, "/")
                     for d, _, files in os.walk(tmp_path / "local") for f in files)
    assert uploaded == written  # overlays/, per_image/, results.json, images.json: no copy of the inputs
    body = {k: json.loads(moto_s3.get_object(Bucket="shots", Key=f"out/{k}")["Body"].read())
            for k in ("results.json", "images.json")}
    assert body["results.json"] == json.loads((tmp_path / "local" / "results.json").read_text())
    assert body["images.json"] == json.loads((tmp_path / "local" / "images.json").read_text())


@pytest.fixture(scope="module")
def other_mask_rcnn(tmp_path_factory):
    """Another checkpoint of the same config and classes: other random weights."""
    return save_random_mask_rcnn(tmp_path_factory.mktemp("other_mask_rcnn") / "other.pth", seed=1)


def _images(sample_data, folder, count):
    images = sorted((sample_data / "images").glob("*.jpg"))
    folder.mkdir()
    for k in range(count):
        shutil.copy(images[k % len(images)], folder / f"img{k}.jpg")
    return folder


def test_rerun_with_other_weights_keeps_nothing_of_the_earlier_run(random_mask_rcnn, other_mask_rcnn,
                                                                  sample_data, tmp_path):
    """Rerun into the same --output with another checkpoint, one image unreadable this time: that
    image keeps neither the earlier record nor its overlay or masks, and is not counted; the
    records say which checkpoint and thresholds made them; files not ours stay."""
    folder, out = _images(sample_data, tmp_path / "in", 3), tmp_path / "out"
    with_masks = [a for a in _common(random_mask_rcnn, folder, out) if a != "--no-masks"]
    first = predict(*with_masks, "--num-gpus", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert (out / "overlays" / "img1.png").is_file() and (out / "per_image" / "img1.json").is_file()
    assert list((out / "masks" / "img1").glob("*.png"))
    (out / "overlays" / "notes.txt").write_text("mine")
    (folder / "img1.jpg").write_bytes(b"not a JPEG any more")

    with_masks[with_masks.index("--weights") + 1] = other_mask_rcnn
    second = predict(*with_masks, "--num-gpus", "2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "2 image(s)" in second.stdout and "1 skipped" in second.stdout, second.stdout
    assert not (out / "per_image" / "img1.json").exists()
    assert not (out / "overlays" / "img1.png").exists() and not (out / "masks" / "img1").exists()
    assert (out / "overlays" / "notes.txt").read_text() == "mine"
    results, images = _outputs(out)
    assert [im["file_name"] for im in images["images"]] == ["img0.jpg", "img2.jpg"]
    assert results and {r["file_name"] for r in results} <= {"img0.jpg", "img2.jpg"}

    sha = hashlib.sha256(other_mask_rcnn.read_bytes()).hexdigest()
    for name in ("img0", "img2"):
        made_by = json.loads((out / "per_image" / f"{name}.json").read_text())[rec.MADE_BY]
        assert made_by[rec.WEIGHTS]["sha256"] == sha
        assert made_by[rec.SCORE_THRESHOLDS] == {"disc": 0.05, "square": 0.05, "triangle": 0.05}


def test_skip_done_refuses_records_made_otherwise(random_mask_rcnn, other_mask_rcnn, sample_data, tmp_path):
    """--skip-done over records of another checkpoint, threshold, tile size or TTA stops in one line naming
    the output folder and what differs, and touches nothing; with the same settings it skips them."""
    folder, out = _images(sample_data, tmp_path / "in", 3), tmp_path / "out"
    first = predict(*_common(random_mask_rcnn, folder, out))
    assert first.returncode == 0, first.stderr[-3000:]
    before = tree_digest(out, mtimes=True)
    for weights, other, what in ((other_mask_rcnn, [], "weights: other.pth"),
                                 (random_mask_rcnn, ["--confidence-threshold", "0.3"], "score thresholds"),
                                 (random_mask_rcnn, ["--tile", "96"], "tile: 96 px"),
                                 (random_mask_rcnn, ["--tta"], "tta: sizes [192, 224, 256]")):
        proc = predict(*_common(weights, folder, out), *other, "--skip-done")
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode == 2 and str(out) in last and what in last, proc.stderr[-3000:]
        assert tree_digest(out, mtimes=True) == before
    same = predict(*_common(random_mask_rcnn, folder, out), "--skip-done")
    assert same.returncode == 0 and "skips 3 image(s)" in same.stderr, same.stderr[-3000:]


def test_s3_output_killed_mid_run_keeps_what_it_finished(moto_s3, random_mask_rcnn, sample_data, tmp_path):
    """--output s3://...: each image's outputs, then its record, are uploaded as it is done and the
    staged copy deleted. A run killed mid-way leaves the finished images in the bucket and at most
    one image staged on disk; --skip-done continues from the bucket's records and ends with what a
    local run writes."""
    folder, staging = _images(sample_data, tmp_path / "in", 10), tmp_path / "staging"
    staging.mkdir()
    moto_s3.create_bucket(Bucket="killed")
    common = _common(random_mask_rcnn, folder, "s3://killed/out")
    proc = predict(*common, wait=False, env={"TMPDIR": str(staging)})

    def keys(prefix):
        listed = moto_s3.list_objects_v2(Bucket="killed", Prefix=f"out/{prefix}").get("Contents", [])
        return sorted(o["Key"][len("out/"):] for o in listed)

    deadline = time.time() + 300
    while time.time() < deadline and len(keys("per_image/")) < 2:
        assert proc.poll() is None, proc.communicate()[1][-3000:]  # finished before any upload
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    done = keys("per_image/")
    assert 2 <= len(done) < 10, done
    assert "results.json" not in keys("")  # the summary only comes at the end
    assert all(f"overlays/{os.path.basename(r)[:-len('.json')]}.png" in keys("overlays/") for r in done)
    staged = {os.path.splitext(f)[0] for _, _, files in os.walk(staging) for f in files}
    assert len(staged) <= 1, staged  # the image in progress at most

    rerun = predict(*common, "--skip-done", env={"TMPDIR": str(staging)})
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"skips {len(done)} image(s) already predicted" in rerun.stderr, rerun.stderr[-3000:]
    local = predict(*_common(random_mask_rcnn, folder, tmp_path / "local"))
    assert local.returncode == 0, local.stderr[-3000:]
    written = sorted(os.path.relpath(os.path.join(d, f), tmp_path / "local").replace(os.sep, "/")
                     for d, _, files in os.walk(tmp_path / "local") for f in files)
    assert keys("") == written
    for name in ("results.json", "images.json"):
        body = moto_s3.get_object(Bucket="killed", Key=f"out/{name}")["Body"].read()
        assert json.loads(body) == json.loads((tmp_path / "local" / name).read_text())
