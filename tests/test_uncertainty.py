"""What to label next: the uncertainty of hand-made instance pairs, the mirrored view mapped back,
``predict.py --rank uncertainty --top K --labelme`` on a trained model, and the diversity ranking
(k-centre greedy on hand-made points, then ``--rank diversity --labelled`` on real features)."""

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
from segkit.loop.diversity import k_centre_order
from segkit.loop.uncertainty import flipped, instance_uncertainties

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


def test_k_centre_picks_cover_the_clusters_away_from_the_labelled_one():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    pool = np.concatenate([c + 0.02 * rng.standard_normal((5, 2)) for c in centres])  # rows 0-4, 5-9, 10-14
    labelled = centres[:1]
    order, scores = k_centre_order(pool, labelled)
    assert sorted(order) == list(range(15))
    assert {order[0] // 5, order[1] // 5} == {1, 2}  # one of each unlabelled cluster first
    assert scores == sorted(scores, reverse=True)
    assert all(s < 0.02 for s in scores[2:])  # then everything is near a labelled image or a pick

    # weights (uncertainty) choose among the clusters: a doubtful cluster comes first, a sure one later
    weights = np.r_[np.full(5, 1.0), np.full(5, 0.05), np.full(5, 1.0)]
    order, _ = k_centre_order(pool, labelled, weights)
    assert order[0] // 5 == 2 and order[1] // 5 == 1

    # nothing labelled: the first pick is the most typical row, then the farthest from it
    order, _ = k_centre_order(np.array([[0.0], [1.0], [2.0], [9.0]]))
    assert order[:2] == [2, 3]


def test_rank_diversity_puts_what_is_labelled_last(trained_mini_checkpoint, sample_data, tmp_path):
    """Copies of labelled images rank last; images unlike them first; every input is in the CSV."""
    from PIL import Image, ImageOps

    labelled = sorted((sample_data / "images").glob("*.jpg"))
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    for image in labelled[:2]:
        shutil.copy(image, unlabelled / f"copy_{image.name}")
        with Image.open(image) as im:  # the same scene, looking different to the model
            ImageOps.invert(im.convert("RGB")).rotate(90, expand=True).save(unlabelled / f"new_{image.name}")
    (unlabelled / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--input", unlabelled,
                           "--weights", trained_mini_checkpoint, "--rank", "diversity", "--labelled", sample_data,
                           "--top", "1", "--output", out, "--quiet"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "broken.jpg" in proc.stderr
    with open(out / "ranking_diversity.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    names = [os.path.basename(r["file"]) for r in rows]
    assert len(rows) == 4 and [int(r["rank"]) for r in rows] == [1, 2, 3, 4]
    assert all(n.startswith("new_") for n in names[:2]) and all(n.startswith("copy_") for n in names[2:]), names
    assert all(float(r["score"]) < 1e-3 for r in rows[2:]) and float(rows[0]["score"]) > 0.1


def test_labelled_needs_a_diversity_ranking(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--input", tmp_path, "--rank", "uncertainty",
                           "--labelled", tmp_path, "--output", tmp_path / "out"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--labelled only applies to --rank diversity" in proc.stderr


def test_rank_is_handed_in_by_the_command(tmp_path, capsys):
    """Inference cannot import the loop: predict_cli's main runs --rank only with the ranking the
    command (predict.py, `segkit predict`) hands it, and says so otherwise."""
    from segkit.cli.main import COMMANDS
    from segkit.inference.predict_cli import main

    with pytest.raises(SystemExit) as e:
        main(["--input", str(tmp_path), "--rank", "uncertainty"])
    assert e.value.code == 2 and "segkit.loop.rank" in capsys.readouterr().err
    assert COMMANDS["predict"][:2] == ("segkit.cli.predict", "main")
