"""What to label next: the uncertainty of hand-made instance pairs, the mirrored view mapped back,
and ``predict.py --rank uncertainty --top K --labelme`` on a trained model."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances

from conftest import ROOT
from segkit.inference.predictor import Prediction
from segkit.inference.uncertainty import flipped, instance_uncertainties

pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid")


def instances(objects, size=(60, 80)):
    """Instances from (class, score, (x0, y0, x1, y1)) rectangles."""
    inst = Instances(size)
    masks = torch.zeros((len(objects), *size), dtype=torch.bool)
    for k, (_, _, (x0, y0, x1, y1)) in enumerate(objects):
        masks[k, y0:y1, x0:x1] = True
    inst.pred_masks = masks
    inst.pred_boxes = Boxes(torch.tensor([o[2] for o in objects], dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor([o[1] for o in objects], dtype=torch.float32)
    inst.pred_classes = torch.tensor([o[0] for o in objects], dtype=torch.int64)
    return inst


def test_agreeing_views_are_certain_and_doubt_adds_up():
    sure = instances([(0, 0.99, (5, 5, 25, 25))])
    assert instance_uncertainties(sure, sure, [0.5])[0][0] < 0.05
    # seen in one view only, or with another outline: uncertain
    unseen = instance_uncertainties(sure, instances([]), [0.5])
    assert unseen[0][0] > 0.5
    moved = instance_uncertainties(sure, instances([(0, 0.99, (15, 5, 35, 25))]), [0.5])
    assert 0.1 < moved[0][0] < unseen[0][0]
    # a score right at the threshold is the most doubtful margin
    at_threshold = instance_uncertainties(instances([(0, 0.5, (5, 5, 25, 25))]),
                                          instances([(0, 0.5, (5, 5, 25, 25))]), [0.5])
    assert at_threshold[0][0] == pytest.approx(0.5)
    # another class in the mirrored view is no pair: two instances, each seen once
    assert len(instance_uncertainties(sure, instances([(1, 0.99, (5, 5, 25, 25))]), [0.5, 0.5])) == 2


def test_mirrored_prediction_is_mapped_back():
    inst = instances([(0, 0.9, (0, 10, 20, 30))], size=(60, 80))
    back = flipped(Prediction(["a"], instances=inst))
    ys, xs = np.nonzero(back.pred_masks[0].numpy())
    assert (xs.min(), xs.max() + 1) == (60, 80)
    assert back.pred_boxes.tensor[0].tolist() == [60.0, 10.0, 80.0, 30.0]


def test_rank_uncertainty_prelabels_the_top_k(trained_mini_checkpoint, sample_data, tmp_path):
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    for image in sorted((sample_data / "images").glob("*.jpg")):
        shutil.copy(image, unlabelled / image.name)
    (unlabelled / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="2")

    def predict(*args):
        return subprocess.run([sys.executable, str(ROOT / "predict.py"), "--input", unlabelled,
                               "--weights", trained_mini_checkpoint, "--rank", "uncertainty",
                               "--labelme", "--output", out, "--quiet", *map(str, args)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)

    proc = predict("--top", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "broken.jpg" in proc.stderr
    with open(out / "ranking_uncertainty.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and [int(r["rank"]) for r in rows] == list(range(1, 7))
    values = [float(r["uncertainty"]) for r in rows]
    assert values == sorted(values, reverse=True) and values[0] > 0
    top = {os.path.basename(r["file"]) for r in rows[:2]}
    written = {p.with_suffix(".jpg").name for p in unlabelled.glob("*.json")}
    assert written == top
    for name in top:
        doc = json.loads((unlabelled / name).with_suffix(".json").read_text())
        assert doc["imagePath"] == name and doc["shapes"]

    # an existing annotation is never overwritten: the next run keeps it
    kept = unlabelled / (os.path.splitext(rows[0]["file"])[0].split(os.sep)[-1] + ".json")
    kept.write_text('{"mine": true}')
    proc = predict("--top", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(kept.read_text()) == {"mine": True}
    assert len(list(unlabelled.glob("*.json"))) == 3
