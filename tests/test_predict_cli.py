"""predict.py as a user runs it: folders with a broken file, COCO results, LabelMe files, video."""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import segkit
from segkit.inference.predict_cli import expand_inputs, unique_names

ROOT = Path(segkit.__file__).resolve().parents[1]
pytestmark = [pytest.mark.filterwarnings("ignore:torch.meshgrid"), pytest.mark.usefixtures("one_thread")]



def run(script, *args, cwd=ROOT):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def quiet_coco(path):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


@pytest.fixture(scope="module")
def images(sample_data):
    return sorted((Path(sample_data) / "images").glob("*.jpg"))


@pytest.fixture
def folder(tmp_path, images):
    """Three good images (one in a sub-folder), a broken one and a text file that is no image."""
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    shutil.copy(images[0], d / "a.jpg")
    shutil.copy(images[1], d / "b.jpg")
    shutil.copy(images[2], d / "sub" / "a.jpg")  # same stem as a.jpg: outputs must not collide
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (d / "notes.txt").write_text("ignored: not an image extension")
    return d


def test_folder_with_broken_file(trained_mini_checkpoint, folder, tmp_path):
    out = tmp_path / "out"
    proc = run("predict.py", "--input", folder, "--output", out, "--weights", trained_mini_checkpoint,
               "--confidence-threshold", "0.5", "--masked", "--label-map")
    assert proc.returncode == 0, proc.stderr[-2000:]
    broken_lines = [l for l in proc.stderr.splitlines() if "broken.jpg" in l]
    assert len(broken_lines) == 1 and "skipped" in broken_lines[0], proc.stderr
    assert "3 image(s)" in proc.stdout and "1 skipped" in proc.stdout

    names = sorted(p.stem for p in (out / "overlays").glob("*.png"))
    assert names == ["a", "a_2", "b"]
    for n in names:
        assert Image.open(out / "overlays" / f"{n}.png").size == Image.open(folder / "b.jpg").size
        assert (out / "masked" / f"{n}.png").is_file() and (out / "label_maps" / f"{n}.png").is_file()

    coco = quiet_coco(out / "images.json")
    with contextlib.redirect_stdout(io.StringIO()):
        res = coco.loadRes(str(out / "results.json"))  # pycocotools accepts the file
    results = json.loads((out / "results.json").read_text())
    assert len(results) > 0 and all(r["score"] >= 0.5 for r in results)
    assert {im["file_name"] for im in coco.dataset["images"]} == {"a.jpg", "b.jpg", "a_2.jpg"}
    assert [c["name"] for c in coco.dataset["categories"]] == ["disc", "square", "triangle"]
    for r in results:
        img = coco.imgs[r["image_id"]]
        assert r["file_name"] == img["file_name"]
        assert r["segmentation"]["size"] == [img["height"], img["width"]]
        assert 1 <= r["category_id"] <= 3
    # one mask PNG per instance, the same pixels as the RLE in results.json
    for img in coco.dataset["images"]:
        stem = os.path.splitext(img["file_name"])[0]
        anns = res.loadAnns(res.getAnnIds(imgIds=[img["id"]]))
        pngs = sorted((out / "masks" / stem).glob("*.png"))
        assert len(pngs) == len(anns)
        for ann, png in zip(sorted(anns, key=lambda a: a["id"]), pngs):
            assert np.array_equal(np.asarray(Image.open(png)) > 0, res.annToMask(ann) > 0)
    # counts.csv: per image, per class, the instances of results.json; the summary line adds them up
    import csv

    with open(out / "counts.csv", newline="") as f:
        rows = {r["file_name"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"a.jpg", "b.jpg", "a_2.jpg"}
    names = ["disc", "square", "triangle"]
    total = {n: 0 for n in names}
    for img in coco.dataset["images"]:
        mine = [r for r in results if r["image_id"] == img["id"]]
        row = rows[img["file_name"]]
        assert int(row["instances"]) == len(mine)
        for k, n in enumerate(names):
            assert int(row[n]) == sum(r["category_id"] == k + 1 for r in mine)
            total[n] += int(row[n])
    present = ", ".join(f"{c} {n}" for n, c in sorted(total.items(), key=lambda x: (-x[1], x[0])) if c)
    assert f"{len(results)} instance(s)" in proc.stdout and present in proc.stdout, proc.stdout


def test_expand_inputs(folder):
    paths, missing = expand_inputs([str(folder), str(folder / "*.jpg"), str(folder / "nope.png"),
                                    str(folder / "zz*.png")])
    rel = [os.path.relpath(p, folder) for p in paths]
    assert rel == ["a.jpg", "b.jpg", "broken.jpg", os.path.join("sub", "a.jpg")]  # no duplicates
    assert len(missing) == 2
    assert unique_names(["x/a.jpg", "y/a.png", "a.tif"]) == ["a", "a_2", "a_3"]


def test_missing_weights_says_what_to_do(tmp_path, folder):
    proc = run("predict.py", "--input", folder, "--output", tmp_path / "o", "--weights", tmp_path / "none.pth")
    assert proc.returncode != 0 and "train_net.py" in proc.stderr


def test_labelme_round_trip(trained_mini_checkpoint, images, tmp_path, capsys):
    """predict --labelme -> LabelMe JSON -> labelme2coco.py -> the same instances (mask IoU >= 0.9)."""
    from segkit.inference.predict_cli import main

    d = tmp_path / "label_me"
    d.mkdir()
    for p in images:
        shutil.copy(p, d / p.name)
    keep = d / f"{images[0].stem}.json"
    keep.write_text('{"mine": true}')  # an existing annotation: never overwritten by default

    args = ["--labelme", "--weights", str(trained_mini_checkpoint), "--confidence-threshold", "0.5", "--quiet"]
    assert main(["--input", str(d), *args]) == 0
    kept = [l for l in capsys.readouterr().err.splitlines() if keep.name in l]
    assert len(kept) == 1 and "kept" in kept[0]
    assert json.loads(keep.read_text()) == {"mine": True}
    assert main(["--input", str(d / images[0].name), "--overwrite", *args]) == 0
    assert "kept" not in capsys.readouterr().err

    doc = json.loads(keep.read_text())
    assert doc["imagePath"] == images[0].name and doc["imageData"] is None
    assert {"version", "flags", "shapes", "imageHeight", "imageWidth"} <= set(doc)
    assert all(s["shape_type"] == "polygon" and len(s["points"]) >= 3 for s in doc["shapes"])

    proc = run("labelme2coco.py", d, "--output", tmp_path / "coco", "--val-fraction", "0",
               "--no-report", "--quiet")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    coco = quiet_coco(tmp_path / "coco" / "trainval.json")
    names = {c["id"]: c["name"] for c in coco.dataset["categories"]}

    from segkit.inference.predictor import Predictor

    predictor = Predictor.from_checkpoint(trained_mini_checkpoint, device="cpu", confidence_threshold=0.5)
    total = 0
    for img in coco.dataset["images"]:
        pred = predictor(d / img["file_name"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        assert len(anns) == len(pred), img["file_name"]
        gts = [(names[a["category_id"]], coco.annToMask(a) > 0) for a in anns]
        for rec, mask in zip(pred.records(), pred.instances.pred_masks.numpy()):
            iou, cls = max(((g & mask).sum() / max((g | mask).sum(), 1), c) for c, g in gts)
            assert cls == rec["class"] and iou >= 0.9, (img["file_name"], rec, iou)
            total += 1
    assert total > 0


def test_video(trained_mini_checkpoint, images, tmp_path):
    frames = [cv2.imread(str(p)) for p in images[:3]]
    h, w = frames[0].shape[:2]
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (w, h))
    for f in frames:
        writer.write(f)
    writer.release()
    out = tmp_path / "out"
    proc = run("predict.py", "--video-input", video, "--output", out, "--weights", trained_mini_checkpoint,
               "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == 3
    results = json.loads((out / "results.json").read_text())
    assert {r["image_id"] for r in results} <= {1, 2, 3} and results


def test_unet_checkpoint(images, tmp_path, unet_checkpoint):
    """predict.py on a U-Net checkpoint: overlays, class-map PNGs, COCO-stuff style results."""
    ckpt = unet_checkpoint.path
    out = tmp_path / "out"
    proc = run("predict.py", "--input", images[0], images[1], "--output", out, "--weights", ckpt,
               "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    cmap = np.asarray(Image.open(out / "class_maps" / f"{images[0].stem}.png"))
    assert cmap.shape == Image.open(images[0]).size[::-1] and cmap.max() < len(unet_checkpoint.class_names)
    assert (out / "overlays" / f"{images[1].stem}.png").is_file()
    coco = quiet_coco(out / "images.json")
    with contextlib.redirect_stdout(io.StringIO()):
        res = coco.loadRes(str(out / "results.json"))
    anns = res.loadAnns(res.getAnnIds(imgIds=[1]))
    assert sorted(a["category_id"] - 1 for a in anns) == sorted(np.unique(cmap).tolist())
    for a in anns:
        assert np.array_equal(res.annToMask(a) > 0, cmap == a["category_id"] - 1)
    # U-Net results are the classes present, not instances: counts.csv counts none
    import csv

    with open(out / "counts.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(r["instances"] == "0" for r in rows), rows

    # ranking what to label next reads instances: a semantic model is refused in one line
    proc = run("predict.py", "--input", images[0], "--rank", "diversity", "--output", tmp_path / "ranked",
               "--weights", ckpt, "--quiet")
    assert proc.returncode == 2 and "--rank needs an instance model" in proc.stderr.strip().splitlines()[-1]


def test_default_threshold_comes_from_the_checkpoint(trained_mini_checkpoint, images, tmp_path):
    from segkit.inference.predictor import Predictor

    stored = Predictor.from_checkpoint(trained_mini_checkpoint, device="cpu", use_checkpoint_thresholds=True)
    per_class = stored.stored_thresholds["score_thresholds"]
    assert per_class and "each class's best F1" in stored.threshold_note
    low = Predictor.from_checkpoint(trained_mini_checkpoint, device="cpu", confidence_threshold=0.05)
    kept = dropped = 0
    for path in images[:3]:
        a, b = stored(path), low(path)
        for rec in a.records():
            assert rec["score"] > per_class.get(rec["class"], stored.stored_thresholds["score_threshold"])
        kept += len(a)
        dropped += len(b) - len(a)
        assert all(r in b.records() for r in a.records())  # a subset: same model, higher bar
    assert kept > 0

    out = tmp_path / "out"
    proc = run("predict.py", "--input", images[0], "--output", out, "--weights", trained_mini_checkpoint, "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Using score thresholds from the checkpoint's evaluation" in proc.stderr
    proc = run("predict.py", "--input", images[0], "--output", out, "--weights", trained_mini_checkpoint,
               "--quiet", "--confidence-threshold", "0.7")
    assert "Using score threshold 0.7 for every class, as asked" in proc.stderr
