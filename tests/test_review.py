"""Error review on the converted sample with predictions made from its ground truth, errors
injected where the right answer is known; the page is checked in headless Chromium."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_util

from conftest import ROOT
from segkit.data.coco_masks import segmentation_to_rle


def _predictions(coco):
    """Every object as a prediction (score 0.9), then: image 1 loses one object (a miss),
    image 2 gets one object's class changed (a confusion), image 3 one mask shrunk to a quarter
    of its box (a poor mask) plus a false detection. Image 1 also gets a low-scored false detection
    that the threshold must drop."""
    cats = sorted(c["id"] for c in coco["categories"])
    by_image = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    sizes = {im["id"]: (im["height"], im["width"]) for im in coco["images"]}
    ids = sorted(i for i in by_image if len(by_image[i]) >= 2)[:3]
    assert len(ids) == 3, "the sample needs three images with two objects or more"
    results = []
    for image_id, anns in sorted(by_image.items()):
        h, w = sizes[image_id]
        for k, a in enumerate(anns):
            rle = segmentation_to_rle(a["segmentation"], h, w, raise_errors=True)
            cat = a["category_id"]
            if image_id == ids[0] and k == 0:
                continue
            if image_id == ids[1] and k == 0:
                cat = next(c for c in cats if c != cat)
            if image_id == ids[2] and k == 0:
                x, y, bw, bh = (int(v) for v in a["bbox"])
                m = np.zeros((h, w), np.uint8, order="F")
                m[y : y + max(bh // 2, 1), x : x + max(bw // 2, 1)] = 1
                rle = mask_util.encode(m)
            rle = dict(rle, counts=rle["counts"].decode() if isinstance(rle["counts"], bytes) else rle["counts"])
            results.append({"image_id": image_id, "category_id": cat, "bbox": a["bbox"], "score": 0.9, "segmentation": rle})
    for image_id, score in ((ids[2], 0.8), (ids[0], 0.1)):
        h, w = sizes[image_id]
        m = np.zeros((h, w), np.uint8, order="F")
        m[0:6, 0:6] = 1
        rle = mask_util.encode(m)
        results.append({"image_id": image_id, "category_id": cats[0], "bbox": [0, 0, 6, 6], "score": score,
                        "segmentation": dict(rle, counts=rle["counts"].decode())})
    return results, ids


@pytest.fixture(scope="module")
def review(sample_data, tmp_path_factory):
    gt = Path(sample_data) / "trainval.json"
    coco = json.loads(gt.read_text())
    results, ids = _predictions(coco)
    tmp = tmp_path_factory.mktemp("review")
    pred_file = tmp / "coco_instances_results.json"
    pred_file.write_text(json.dumps(results))
    out = tmp / "review"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in Path(sample_data).rglob("*"))
    proc = subprocess.run(
        [sys.executable, "-m", "segkit.loop.review", "--gt", gt, "--predictions", pred_file,
         "--score-threshold", "0.5", "-o", out, "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert before == sorted((p.name, p.stat().st_mtime_ns) for p in Path(sample_data).rglob("*"))  # inputs untouched
    return out, coco, ids, proc.stdout


def test_counts_ranking_and_source_files(review):
    out, coco, ids, stdout = review
    assert "index.html" in stdout
    rows = list(csv.DictReader((out / "review.csv").open()))
    assert len(rows) == len(coco["images"])
    by_id = {im["file_name"]: im for im in coco["images"]}
    counts = {by_id[r["file_name"]]["id"]: r for r in rows}
    miss, confused, poor = (counts[i] for i in ids)
    assert (miss["missed"], miss["fp"], miss["errors"]) == ("1", "0", "1")  # the 0.1 detection is below 0.5
    assert (confused["confusions"], confused["errors"]) == ("1", "1")
    assert (poor["poor_masks"], poor["fp"], poor["errors"]) == ("1", "1", "2")
    assert rows[0]["file_name"] == by_id_name(coco, ids[2])  # the worst first
    assert all(r["errors"] == "0" and r["fp"] == "0" for r in rows[3:])
    for r in rows:
        image = by_id[r["file_name"]]  # recorded by the converter: info.source + source_file
        assert r["annotation_file"] == os.path.join(coco["info"]["source"], image["source_file"])
        assert image["source_file"] == image["labelme_file"]
        assert (out / r["picture"]).stat().st_size > 1000
    data = json.loads((out / "review.json").read_text())
    assert data["summary"]["totals"] == {"tp": sum(int(r["tp"]) for r in rows), "fp": 1, "missed": 1,
                                         "confusions": 1, "poor_masks": 1}


def by_id_name(coco, image_id):
    return next(im["file_name"] for im in coco["images"] if im["id"] == image_id)


def test_side_by_side_marks_errors(review):
    out, coco, ids, _ = review
    import cv2

    rows = json.loads((out / "review.json").read_text())["images"]
    worst = cv2.imread(str(out / rows[0]["picture"]))[:, :, ::-1]
    im = next(i for i in coco["images"] if i["id"] == ids[2])
    assert worst.shape[:2] == (im["height"], 2 * im["width"] + 6)
    # violet (poor mask) and red (false detection) drawn on the prediction half
    right = worst[:, im["width"] + 6 :].reshape(-1, 3).astype(int)
    assert ((right[:, 0] > 150) & (right[:, 1] < 90) & (right[:, 2] > 170)).any()
    assert ((right[:, 0] > 200) & (right[:, 1] < 60) & (right[:, 2] < 60)).any()


@pytest.mark.slow
def test_page_opens_from_disk_in_chromium(review, tmp_path):
    from test_app_browser import CHROMIUM, _ensure_browser

    reason = _ensure_browser()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    out, coco, ids, _ = review
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.goto((out / "index.html").as_uri())
            page.wait_for_selector("tr.image-row")
            rows = page.query_selector_all("tr.image-row")
            assert len(rows) == len(coco["images"])
            errors = [int(r.get_attribute("data-errors")) for r in rows]
            assert errors == sorted(errors, reverse=True) and errors[0] == 2
            first = rows[0].inner_text()
            assert by_id_name(coco, ids[2]) in first
            assert next(im["labelme_file"] for im in coco["images"] if im["id"] == ids[2]) in first
            page.wait_for_function(
                "() => [...document.querySelectorAll('#review img')].every(i => i.complete && i.naturalWidth > 0)"
            )
            assert "1 image(s)" not in page.inner_text("#summary") and "poor masks: 1" in page.inner_text("#summary")
            shots = ROOT / "tests" / "_artifacts"
            shots.mkdir(exist_ok=True)
            page.screenshot(path=str(shots / "review_page.png"))
        finally:
            browser.close()


def test_review_of_a_training_run(trained_mini_checkpoint, tmp_path):
    """From train_net.py's eval folder alone: split, data folder and thresholds found by itself."""
    run = Path(trained_mini_checkpoint).parent
    out = tmp_path / "review"
    proc = subprocess.run(
        [sys.executable, "-m", "segkit.loop.review", run / "eval", "-o", out, "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best-F1 threshold from metrics_mydata_trainval.json" in proc.stdout
    data = json.loads((out / "review.json").read_text())
    metrics = json.loads((run / "eval/metrics_mydata_trainval.json").read_text())
    assert data["summary"]["num_images"] == metrics["num_images"]
    # the same matching at the same thresholds as the evaluator's confusion matrix
    cm = np.array(metrics["confusion_matrix"]["matrix"])
    totals = data["summary"]["totals"]
    assert totals["tp"] + totals["confusions"] == cm[:-1, :-1].sum()
    assert totals["tp"] == np.trace(cm[:-1, :-1])
    assert totals["fp"] + totals["poor_masks"] == cm[-1].sum()


def test_annotation_source_follows_the_provenance_contract():
    from segkit.loop.review import annotation_source

    local = {"info": {"source": os.path.join(os.sep, "data", "in")}}
    image = {"source_file": "sub/a.json", "labelme_file": "sub/a.json"}
    assert annotation_source(local, image) == os.path.join(os.sep, "data", "in", "sub", "a.json")
    remote = {"info": {"source": "s3://bucket/set/"}}
    assert annotation_source(remote, {"source_file": "labels/a.txt"}) == "s3://bucket/set/labels/a.txt"
    assert annotation_source({"info": {}}, {"labelme_file": "a.json"}) == "a.json"  # older files
    assert annotation_source({}, {}) is None
