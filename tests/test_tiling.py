"""Sliced inference (segkit/modeling/tiling.py): tiles, seam merging, masks kept as crops.

Most tests run TiledModel around ``BlobDetector``, a deterministic detector with detectron2's
GeneralizedRCNN.inference interface (bright connected components; boxes and 28x28 mask
probabilities as Mask R-CNN returns them before pasting), so where objects are and what a tile
sees is known exactly. The end-to-end tests run a trained Mask R-CNN through predict.py --tile
and tiled evaluation.
"""

import itertools
import json
import math
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances

from conftest import ROOT, SHARED, TINY_OVERRIDES, run_train_net
from segkit.data.coco_masks import mask_to_rle
from segkit.modeling.tiling import (CroppedMasks, TiledModel, detections_to_instances, merge_detections,
                                    paste_detections, tile_windows)


class BlobDetector(torch.nn.Module):
    """Each 8-connected bright component (channel mean > 128) of an input is one object of class
    0; its score grows with its visible area (a piece cut by a tile edge scores below the whole),
    and pieces under 27 px score below 0.05 and are dropped. ``max_dets``: as Mask R-CNN's
    TEST.DETECTIONS_PER_IMAGE, only the best that many of an input are returned."""

    def __init__(self, max_dets=None):
        super().__init__()
        self.max_dets = max_dets

    def inference(self, batched_inputs, do_postprocess=True):
        assert not do_postprocess
        out = []
        for x in batched_inputs:
            image = x["image"]
            h, w = image.shape[-2:]
            fg = (image.float().mean(0) > 128).numpy().astype(np.uint8)
            n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
            boxes, scores, probs = [], [], []
            for k in range(1, n):
                bx, by, bw, bh, area = stats[k].tolist()
                if area / (area + 500.0) < 0.05:  # SCORE_THRESH_TEST 0.05, as Mask R-CNN's default
                    continue
                crop = (labels[by:by + bh, bx:bx + bw] == k).astype(np.float32)
                probs.append(cv2.resize(crop, (28, 28), interpolation=cv2.INTER_LINEAR))
                boxes.append([bx, by, bx + bw, by + bh])
                scores.append(area / (area + 500.0))
            inst = Instances((h, w))
            inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            inst.scores = torch.tensor(scores, dtype=torch.float32)
            inst.pred_classes = torch.zeros(len(boxes), dtype=torch.int64)
            inst.pred_masks = torch.from_numpy(np.stack(probs) if probs else np.zeros((0, 28, 28), np.float32))[:, None]
            if self.max_dets is not None:
                inst = inst[torch.argsort(inst.scores, descending=True)[:self.max_dets]]
            out.append(inst)
        return out


def disc_image(height, width, radius_range, seed, seams=(), count=None, spacing=8):
    """(CHW uint8 tensor, [HxW bool masks]): white discs on black, placed at random without
    touching; the first ones centred on the given ``seams`` [(x or None, y or None)]."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width), np.uint8)
    taken = np.zeros((height, width), np.uint8)
    masks = []
    wanted = list(seams) + [(None, None)] * (count or 0)
    for sx, sy in wanted:
        for _ in range(200):
            r = int(rng.integers(*radius_range))
            cx = sx if sx is not None else int(rng.integers(r + 1, width - r - 1))
            cy = sy if sy is not None else int(rng.integers(r + 1, height - r - 1))
            m = np.zeros((height, width), np.uint8)
            cv2.circle(m, (cx, cy), r, 1, -1)
            if not (m.astype(bool) & taken.astype(bool)).any():
                cv2.circle(taken, (cx, cy), r + spacing, 1, -1)
                image[m.astype(bool)] = 255
                masks.append(m.astype(bool))
                break
    rgb = np.repeat(image[None], 3, axis=0)
    return torch.from_numpy(rgb), masks


def iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def test_tiles_cover_the_image_overlap_and_end_flush():
    windows = tile_windows(700, 1000, 256, 0.25)
    covered = np.zeros((700, 1000), int)
    for x0, y0, x1, y1 in windows:
        assert (x1 - x0, y1 - y0) == (256, 256)  # full-size tiles, the last flush with the edge
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1
    xs = sorted({w[0] for w in windows})
    assert xs[-1] == 1000 - 256 and all(b - a <= 192 for a, b in zip(xs, xs[1:]))  # 64 px shared
    assert tile_windows(100, 150, 256, 0.2) == [(0, 0, 150, 100)]  # smaller than a tile: itself
    with pytest.raises(ValueError, match="overlap"):
        tile_windows(10, 10, 8, 1.0)


def test_rle_of_a_crop_equals_the_rle_of_its_full_mask():
    rng = np.random.default_rng(0)
    h, w = 37, 53
    crops = [(0, 0, rng.random((10, 12)) > 0.5), (41, 27, rng.random((10, 12)) > 0.3),  # corners
             (5, 0, np.ones((37, 4), bool)), (20, 15, np.zeros((6, 6), bool)), (3, 30, rng.random((7, 50)) > 0.5)]
    masks = CroppedMasks(crops, (h, w))
    for i in range(len(masks)):
        full = masks[i]
        assert full.shape == (h, w) and full.sum() == crops[i][2].sum()
        assert masks.rle(i) == mask_to_rle(full)
    assert masks.areas().tolist() == [int(c.sum()) for _, _, c in crops]
    picked = masks[torch.tensor([False, True, False, True, False])]
    assert len(picked) == 2 and np.array_equal(picked[0], masks[1])


def test_seams_give_one_instance_per_object():
    tile, overlap = 256, 0.25
    windows = tile_windows(700, 1000, tile, overlap)
    xs, ys = sorted({w[0] for w in windows}), sorted({w[1] for w in windows})
    # discs centred on tile edges, in the overlap bands, and on a four-tile corner
    seams = [(xs[1], None), (xs[2] + tile, None), (None, ys[1]), (None, ys[1] + tile - 20), (xs[1] + 30, ys[1] + 30)]
    image, truth = disc_image(700, 1000, (12, 30), seed=1, seams=seams, count=40)
    model = TiledModel(BlobDetector(), tile, overlap, batch_size=3)
    inst = model([{"image": image, "height": 700, "width": 1000}])[0]["instances"]

    raw = sum(len(paste_detections(o, (0, 0), (1, 1), (700, 1000), 0))
              for o in model.model.inference([{"image": image[:, y0:y1, x0:x1]} for x0, y0, x1, y1 in windows],
                                             do_postprocess=False))
    assert raw > len(truth) + 10  # the seams did cut and repeat objects
    assert len(inst) == len(truth)
    masks = inst.pred_masks
    for t in truth:
        best = max(iou(masks[i], t) for i in range(len(inst)))
        assert best > 0.9


def test_an_object_cut_by_tile_edges_comes_out_whole():
    h, w = 300, 900
    bar = np.zeros((h, w), bool)
    bar[130:170, 60:840] = True  # 780 px long: no tile (256 px) holds it, every seam cuts it
    image = torch.from_numpy(np.repeat((bar * 255).astype(np.uint8)[None], 3, axis=0))
    inst = TiledModel(BlobDetector(), 256, 0.25)([{"image": image, "height": h, "width": w}])[0]["instances"]
    assert len(inst) == 1
    assert iou(inst.pred_masks[0], bar) > 0.95
    x0, y0, x1, y1 = inst.pred_boxes.tensor[0].tolist()
    assert x0 <= 61 and x1 >= 839


def tile_detections(image, tile, overlap, detector=None):
    """The Detections a TiledModel collects before merging: ``detector`` (a BlobDetector) on each
    tile of ``image`` (CHW), pasted into the image."""
    h, w = image.shape[-2:]
    windows = tile_windows(h, w, tile, overlap)
    outputs = (detector or BlobDetector()).inference([{"image": image[:, y0:y1, x0:x1]} for x0, y0, x1, y1 in windows],
                                                     do_postprocess=False)
    return [d for k, (win, out) in enumerate(zip(windows, outputs))
            for d in paste_detections(out, win[:2], (1, 1), (h, w), k, window=win)], windows


def bars_image(height, width, bars):
    """(CHW uint8 tensor, [HxW bool masks]) of white bars ``[(x0, y0, x1, y1)]`` on black."""
    masks = []
    gray = np.zeros((height, width), np.uint8)
    for x0, y0, x1, y1 in bars:
        m = np.zeros((height, width), bool)
        m[y0:y1, x0:x1] = True
        gray[m] = 255
        masks.append(m)
    return torch.from_numpy(np.repeat(gray[None], 3, axis=0)), masks


def assert_one_instance_per_object(merged, truth, size):
    assert len(merged) == len(truth), f"{len(merged)} instances for {len(truth)} objects"
    inst = detections_to_instances(merged, size)
    for t in truth:
        assert max(iou(inst.pred_masks[i], t) for i in range(len(inst))) > 0.9


@pytest.mark.parametrize("length", [330, 520, 700, 900])
def test_a_bar_across_several_tiles_is_one_instance_whatever_its_pieces_score(length):
    # 256 px tiles sharing 64 px: a bar of these lengths is cut into 3, 4, 5 and 6 pieces. The
    # scores of the pieces come in every order (a real model scores the middle piece below the
    # ends as often as above), and every order must give one instance.
    h, w = 120, 1300
    image, truth = bars_image(h, w, [(70, 40, 70 + length, 80)])
    pieces, _ = tile_detections(image, 256, 0.25)
    assert len(pieces) == {330: 3, 520: 4, 700: 5, 900: 6}[length]
    for order in itertools.permutations(range(len(pieces))):
        scored = [p._replace(score=0.5 + 0.05 * rank) for p, rank in zip(pieces, order)]
        assert_one_instance_per_object(merge_detections(scored), truth, (h, w))


@pytest.mark.parametrize("seed", range(5))
def test_bars_in_two_directions_with_random_scores_are_one_instance_each(seed):
    # 2-D tiling: horizontal and vertical bars across 3-5 tiles, two parallel bars 6 px apart
    # through the same tiles, and two bars end to end 6 px apart: each stays one instance of its own.
    h, w = 900, 1100
    bars = [(40, 60, 1000, 90), (40, 96, 700, 126),  # parallel, 6 px apart
            (60, 300, 500, 330), (506, 300, 1060, 330),  # end to end, 6 px apart
            (150, 380, 185, 880), (420, 360, 450, 860), (900, 350, 940, 850), (600, 500, 1060, 540)]
    image, truth = bars_image(h, w, bars)
    # the crossing bars (vertical 900-940 and horizontal 600-1060 at y 500-540) touch: one blob
    truth = truth[:6] + [truth[6] | truth[7]]
    pieces, _ = tile_detections(image, 256, 0.25)
    rng = np.random.default_rng(seed)
    scored = [p._replace(score=float(s)) for p, s in zip(pieces, rng.uniform(0.3, 1.0, len(pieces)))]
    assert_one_instance_per_object(merge_detections(scored), truth, (h, w))


def test_overlapping_pairs_are_exactly_the_pairs_whose_crops_overlap():
    from segkit.modeling.tiling import Detection, overlapping_pairs

    rng = np.random.default_rng(0)
    dets = []
    for k in range(400):
        x, y = int(rng.integers(0, 3000)), int(rng.integers(0, 800))
        crop = np.ones((int(rng.integers(1, 60)), int(rng.integers(1, 200))), bool)
        box = np.array([x, y, x + crop.shape[1], y + crop.shape[0]], np.float32)
        dets.append(Detection(box, 0.5, int(rng.integers(0, 2)), x, y, crop, int(rng.integers(0, 4))))
    expected = set()
    for i in range(len(dets)):
        for j in range(i + 1, len(dets)):
            a, b = dets[i], dets[j]
            if (a.category == b.category and a.tile != b.tile and a.x0 < b.x0 + b.crop.shape[1]
                    and b.x0 < a.x0 + a.crop.shape[1] and a.y0 < b.y0 + b.crop.shape[0] and b.y0 < a.y0 + a.crop.shape[0]):
                expected.add((i, j))
    found = overlapping_pairs(dets)
    assert len(found) == len(set(found)) and set(found) == expected and expected
    tall = [d._replace(x0=d.y0, y0=d.x0, crop=d.crop.T) for d in dets]  # the sweep runs along y
    assert set(overlapping_pairs(tall)) == expected


def test_touching_objects_in_one_tile_stay_apart():
    # two pieces of one class whose masks overlap a lot, seen by the same tile: the model's own
    # decision stands; from two tiles they merge
    crop = np.ones((20, 20), bool)
    from segkit.modeling.tiling import Detection

    a = Detection(np.array([0, 0, 20, 20.0]), 0.9, 0, 0, 0, crop, tile=0, window=(0, 0, 30, 30))
    b = Detection(np.array([5, 0, 25, 20.0]), 0.8, 0, 5, 0, crop, tile=0, window=(0, 0, 30, 30))
    assert len(merge_detections([a, b])) == 2
    assert len(merge_detections([a, b._replace(tile=1)])) == 1
    assert len(merge_detections([a, b._replace(tile=1, category=1)])) == 2


def test_an_image_with_more_objects_than_a_tile_may_hold_is_evaluated_whole(tmp_path):
    # 170 discs, 256 px tiles holding about 20 each, TEST.DETECTIONS_PER_IMAGE 100 (per tile): every
    # disc is found, and COCO evaluation must count all of them, not the best 100.
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.evaluation import inference_on_dataset
    from PIL import Image

    from segkit.engine.trainer import Trainer
    from segkit.evaluation.coco import build_coco_evaluator
    from segkit.modeling.config import get_segkit_cfg

    h, w = 700, 1000
    image, truth = disc_image(h, w, (10, 18), seed=4, count=170, spacing=4)
    assert len(truth) >= 150
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / "dense.png")
    annotations = [{"id": k + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": mask_to_rle(m),
                    "area": int(m.sum()), "bbox": [float(v) for v in cv2.boundingRect(m.astype(np.uint8))]}
                   for k, m in enumerate(truth)]
    (tmp_path / "gt.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "dense.png", "height": h, "width": w}],
        "annotations": annotations, "categories": [{"id": 1, "name": "disc"}]}))
    name = f"tiling_dense_{tmp_path.name}"
    register_coco_instances(name, {}, str(tmp_path / "gt.json"), str(tmp_path))
    try:
        cfg = get_segkit_cfg()
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
        cfg.MODEL.MASK_ON = True
        cfg.DATALOADER.NUM_WORKERS = 0
        cfg.TEST.PR_CURVES = False
        cfg.TEST.TILE_SIZE = 256
        cfg.TEST.DETECTIONS_PER_IMAGE = 100
        model = TiledModel.from_config(BlobDetector(max_dets=100), cfg)
        assert max(sum(1 for t in truth if t[y0:y1, x0:x1].any()) for x0, y0, x1, y1 in tile_windows(h, w, 256)) < 100
        results = inference_on_dataset(model, Trainer.build_test_loader(cfg, name),
                                       build_coco_evaluator(cfg, name, str(tmp_path / "eval")))
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert results["bbox"]["AP50"] > 99 and results["segm"]["AP50"] > 99, results


def test_an_image_that_reaches_a_limit_is_named_in_one_warning(caplog):
    h, w = 700, 1000
    image, truth = disc_image(h, w, (10, 18), seed=4, count=170, spacing=4)
    model = TiledModel(BlobDetector(max_dets=8), 256, 0.25, max_per_tile=8, max_per_image=60)
    with caplog.at_level("WARNING", logger="segkit.modeling.tiling"):
        inst = model([{"image": image, "height": h, "width": w, "file_name": "dense.png"}])[0]["instances"]
    assert len(inst) == 60
    assert inst.scores.tolist() == sorted(inst.scores.tolist(), reverse=True)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert lines[0].startswith("dense.png: ")
    assert "tiles reached TEST.DETECTIONS_PER_IMAGE (8 " in lines[0] and "TEST.TILE_DETECTIONS_PER_IMAGE 60" in lines[0]

    caplog.clear()
    with caplog.at_level("WARNING", logger="segkit.modeling.tiling"):
        inst = TiledModel(BlobDetector(max_dets=100), 256, 0.25, max_per_tile=100, max_per_image=1000)(
            [{"image": image, "height": h, "width": w, "file_name": "dense.png"}])[0]["instances"]
    assert len(inst) == len(truth) and not caplog.records


MEMORY_SCRIPT = r"""
import resource, sys
sys.path.insert(0, sys.argv[1])
import cv2, numpy as np, torch
torch.set_num_threads(1)
from test_tiling import BlobDetector
from segkit.modeling.tiling import TiledModel

h, w = 4000, 12000
gray = np.zeros((h, w), np.uint8)
rng = np.random.default_rng(2)
centres = [(x, y) for x in range(150, w - 100, 1000) for y in range(150, h - 100, 400)]
for x, y in centres:  # one disc per 1000 x 400 cell, jittered across the tile seams
    cv2.circle(gray, (x + int(rng.integers(0, 700)), y + int(rng.integers(0, 150))), int(rng.integers(20, 40)), 255, -1)
image = torch.from_numpy(np.repeat(gray[None], 3, axis=0))
del gray
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
inst = TiledModel(BlobDetector(), 1024, 0.1, batch_size=2)([{"image": image, "height": h, "width": w}])[0]["instances"]
rles = [inst.pred_masks.rle(i) for i in range(len(inst))]
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(centres), len(inst), (after - before) // 1024)
"""


def test_a_12000px_image_runs_within_a_memory_bound(tmp_path):
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(ROOT / "tests")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    objects, found, growth_mb = map(int, proc.stdout.split())
    assert found == objects > 100
    # 120 full 12,000 x 4,000 masks would be 5.8 GB, one of them 48 MB; the image itself is 144 MB
    assert growth_mb < 100, growth_mb


# ----------------------------------------------------------------------------- with a trained model


@pytest.fixture(scope="module")
def large_image(sample_data, tmp_path_factory):
    """The sample's images in a 3 x 2 mosaic (576 x 288 px) and its ground truth (COCO file)."""
    from PIL import Image

    coco = json.loads((sample_data / "trainval.json").read_text())
    images = sorted(coco["images"], key=lambda im: im["id"])[:6]
    out = tmp_path_factory.mktemp("large")
    mosaic = np.zeros((288, 576, 3), np.uint8)
    annotations = []
    for k, im in enumerate(images):
        ox, oy = (k % 3) * 192, (k // 3) * 144
        mosaic[oy:oy + 144, ox:ox + 192] = np.asarray(Image.open(sample_data / "images" / im["file_name"]).convert("RGB"))
        for a in coco["annotations"]:
            if a["image_id"] == im["id"]:
                seg = [[v + (ox if j % 2 == 0 else oy) for j, v in enumerate(p)] for p in a["segmentation"]]
                x, y, bw, bh = a["bbox"]
                annotations.append({**a, "id": len(annotations) + 1, "image_id": 1, "segmentation": seg,
                                    "bbox": [x + ox, y + oy, bw, bh]})
    Image.fromarray(mosaic).save(out / "mosaic.png")
    gt = {"images": [{"id": 1, "file_name": "mosaic.png", "height": 288, "width": 576}],
          "annotations": annotations, "categories": coco["categories"]}
    (out / "gt.json").write_text(json.dumps(gt))
    return out


def test_one_tile_as_large_as_the_image_predicts_as_the_whole_image(trained_mini_checkpoint, sample_data):
    from segkit.inference.predictor import Predictor

    ckpt = str(trained_mini_checkpoint)
    image = next((sample_data / "images").rglob("*.jpg"))
    whole = Predictor.from_checkpoint(ckpt, device="cpu", confidence_threshold=0.3, opts=TINY_OVERRIDES)(image)
    tiled = Predictor.from_checkpoint(ckpt, device="cpu", confidence_threshold=0.3,
                                      opts=TINY_OVERRIDES + ["TEST.TILE_SIZE", "256"])(image)
    assert isinstance(tiled.instances.pred_masks, CroppedMasks)
    assert len(whole) == len(tiled) > 0
    assert torch.allclose(whole.instances.scores, tiled.instances.scores, atol=1e-5)
    for i in range(len(whole)):
        assert iou(whole.instances.pred_masks[i].numpy(), tiled.instances.pred_masks[i]) > 0.99


def test_predict_cli_tile_writes_every_output(trained_mini_checkpoint, large_image, tmp_path):
    import shutil

    from pycocotools.coco import COCO
    from segkit.inference.predict_cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(large_image / "mosaic.png", folder / "mosaic.png")
    out = tmp_path / "out"
    code = main(["--input", str(folder), "--output", str(out), "--weights", str(trained_mini_checkpoint),
                 "--tile", "160", "--tile-overlap", "0.25", "--labelme", "--confidence-threshold", "0.3",
                 "--label-map", "--masked", "--gt-json", str(large_image / "gt.json"), "--quiet",
                 "--opts", *TINY_OVERRIDES])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results and all(r["segmentation"]["size"] == [288, 576] for r in results)
    coco = COCO(str(out / "images.json"))
    coco.loadRes(str(out / "results.json"))
    for sub in ("overlays", "label_maps", "masked", "side_by_side"):
        assert (out / sub / "mosaic.png").is_file()
    assert len(list((out / "masks" / "mosaic").glob("*.png"))) == len(results)
    labelme = json.loads((folder / "mosaic.json").read_text())
    assert labelme["imageWidth"] == 576 and labelme["shapes"]
    assert max(x for s in labelme["shapes"] for x, _ in s["points"]) > 300  # points in image pixels


def test_tiled_evaluation_measures_what_tiled_prediction_gives(trained_mini_checkpoint, sample_data, tmp_path):
    """Evaluation with TEST.TILE_SIZE 96 on the sample's 192 x 144 images (6 tiles each: seams are
    cut and merged) gives the AP that pycocotools gives the tiled Predictor's results on the same
    images."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from segkit.inference.coco_results import coco_results
    from segkit.inference.predictor import Predictor

    tile = ["TEST.TILE_SIZE", "96", "TEST.TILE_OVERLAP", "0.25"]
    gt_file = sample_data / "trainval.json"
    coco = json.loads(gt_file.read_text())
    assert all(len(tile_windows(im["height"], im["width"], 96, 0.25)) > 1 for im in coco["images"])
    out = tmp_path / "eval_run"
    proc = run_train_net(
        "--config-file", ROOT / "configs/mask_rcnn_R_18_FPN_mini.yaml", "--eval-only",
        "MODEL.WEIGHTS", trained_mini_checkpoint, "DATASETS.DATA_DIR", sample_data, "OUTPUT_DIR", out,
        "DATASETS.TRAIN", "('mydata_trainval',)", "DATASETS.TEST", "('mydata_trainval',)", *tile, *TINY_OVERRIDES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads(next((out / "eval").glob("metrics_*.json")).read_text())["segm"]["AP"]

    predictor = Predictor.from_checkpoint(str(trained_mini_checkpoint), device="cpu", confidence_threshold=0.05,
                                          opts=TINY_OVERRIDES + tile)  # 0.05: SCORE_THRESH_TEST of the evaluation
    results = []
    for im in coco["images"]:
        results += coco_results(predictor(sample_data / "images" / im["file_name"]), im["id"])
    gt = COCO(str(gt_file))
    e = COCOeval(gt, gt.loadRes(results), "segm")
    e.params.maxDets = [1, 10, 10000]  # TEST.TILE_DETECTIONS_PER_IMAGE: all of an image's instances count
    e.evaluate()
    e.accumulate()
    precision = e.eval["precision"][:, :, :, 0, -1]
    predicted = 100 * float(precision[precision > -1].mean())
    assert evaluated > 5
    assert abs(evaluated - predicted) < 0.5, (evaluated, predicted)


def test_the_validation_loss_scores_the_tiles_tiled_evaluation_sees(sample_data, caplog):
    """With TEST.TILE_SIZE the validation loss is the model's loss on tiles of the val images at
    native resolution, their annotations clipped to the tile, not on whole images at the test size."""
    from types import SimpleNamespace

    from detectron2.data.detection_utils import read_image
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from segkit.data.catalog import register_data_dir
    from segkit.engine.hooks import ValidationLoss
    from segkit.modeling.config import get_segkit_cfg

    register_data_dir(str(sample_data), prefix="valtiles")
    cfg = get_segkit_cfg()
    cfg.merge_from_file(str(ROOT / "configs" / "mask_rcnn_R_18_FPN_mini.yaml"))
    cfg.merge_from_list(TINY_OVERRIDES + ["MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.DEVICE", "cpu",
                                          "TEST.TILE_SIZE", "96", "TEST.TILE_OVERLAP", "0.25"])
    torch.manual_seed(0)
    model = build_model(cfg)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.extend(args[0]))
    with caplog.at_level("INFO", logger="segkit.engine.hooks"):
        hook = ValidationLoss(cfg, 1, ("valtiles_trainval",), max_images=10)
    hook.trainer = SimpleNamespace(model=model)  # what detectron2's trainer gives a hook
    with EventStorage():
        losses = hook._compute()
    assert set(losses) >= {"loss_cls", "loss_mask"} and all(np.isfinite(v) for v in losses.values())

    assert len(seen) == 10
    assert len({x["file_name"] for x in seen}) > 2  # spread over the split, not one image's tiles
    with_objects = 0
    for x in seen:
        image = x["image"].numpy()
        h, w = image.shape[1:]
        original = read_image(x["file_name"], format=cfg.INPUT.FORMAT).transpose(2, 0, 1)
        windows = tile_windows(original.shape[1], original.shape[2], 96, 0.25)
        assert any(np.array_equal(image, original[:, y0:y1, x0:x1]) for x0, y0, x1, y1 in windows)
        boxes = x["instances"].gt_boxes.tensor
        assert ((boxes[:, 0::2] <= w + 0.5).all() and (boxes[:, 1::2] <= h + 0.5).all() and (boxes >= -0.5).all())
        if len(boxes):
            with_objects += 1
            fitted = x["instances"].gt_masks.get_bounding_boxes().tensor  # boxes of the clipped masks, not of the whole objects
            assert torch.allclose(boxes, fitted, atol=1)
    assert with_objects >= 5
    assert any("valtiles_trainval: 10 tiles of 96 px" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------- long objects, a trained model

CONTROLLERS = SHARED / "datasets" / "controllers"
BAR_TILE = 128


def bar_strips(root, split, count, size, lengths, seed):
    """``count`` images of ``size`` (w, h) into ``root``/images with a COCO file ``root``/SPLIT.json:
    2-3 horizontal bars each (one class), 18-26 px thick, ``lengths`` px long, in shaded saturated
    colours with noise, 12+ px apart, on crops of the real controllers photos."""
    from PIL import Image

    frames = sorted((CONTROLLERS / "train").glob("*.png"))
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    w, h = size
    images, annotations = [], []
    for k in range(count):
        photo = np.asarray(Image.open(frames[int(rng.integers(len(frames)))]).convert("RGB"))
        photo = np.tile(photo, (math.ceil(h / photo.shape[0]), math.ceil(w / photo.shape[1]), 1))
        y0, x0 = int(rng.integers(0, photo.shape[0] - h + 1)), int(rng.integers(0, photo.shape[1] - w + 1))
        image = photo[y0:y0 + h, x0:x0 + w].astype(np.float32)
        y = int(rng.integers(8, 16))
        for _ in range(3):
            thick = int(rng.integers(18, 26))
            if y + thick > h - 8:
                break
            length = min(int(rng.integers(*lengths)), w - 8)
            x = int(rng.integers(4, w - length - 3))
            hue = np.uint8([[[rng.integers(0, 180), 200, 230]]])
            colour = cv2.cvtColor(hue, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
            shade = 0.6 + 0.4 * np.sin(np.linspace(0.2, np.pi - 0.2, thick))[:, None, None]
            image[y:y + thick, x:x + length] = colour * shade + rng.normal(0, 8, (thick, length, 3))
            annotations.append({"id": len(annotations) + 1, "image_id": k + 1, "category_id": 1, "iscrowd": 0,
                                "bbox": [x, y, length, thick], "area": length * thick,
                                "segmentation": [[x, y, x + length - 1, y, x + length - 1, y + thick - 1, x, y + thick - 1]]})
            y += thick + int(rng.integers(12, 37))
        name = f"{split}_{k:03d}.png"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "images" / name)
        images.append({"id": k + 1, "file_name": name, "height": h, "width": w})
    doc = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "bar"}]}
    (root / f"{split}.json").write_text(json.dumps(doc))
    return doc


@pytest.fixture(scope="module")
def bar_model(tmp_path_factory):
    """(model_final.pth, test COCO doc, test image folder): Lite0 (ImageNet weights) trained briefly
    on 128 px crops of 128 x 512 strips of bars at native resolution (INPUT.CROP, as
    docs/large-images.md trains for tiles); the test strips are 128 x 640 with bars of 300-600 px,
    each cut by the 128 px tiles into 3 to 7 pieces."""
    if not CONTROLLERS.is_dir():
        pytest.skip("../shared/datasets/controllers is not present")
    data = tmp_path_factory.mktemp("bars")
    bar_strips(data / "train_set", "train", 16, (512, 128), (60, 480), seed=0)
    test = bar_strips(data / "test_set", "val", 12, (640, 128), (300, 600), seed=1)
    out = data / "run"
    proc = run_train_net(
        "--config-file", ROOT / "configs/mask_rcnn_lite0_FPN.yaml", "DATASETS.DATA_DIR", data / "train_set",
        "OUTPUT_DIR", out, "DATASETS.TRAIN", "('mydata_train',)", "DATASETS.TEST", "()",
        # 200 iterations at a high LR, light ROI sampling: one bar in 29 came out split at 150, none at 200
        "SOLVER.MAX_ITER", "200", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "20", "SOLVER.BASE_LR", "0.04",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "200",
        "SOLVER.CHECKPOINT_PERIOD", "10000", "SEED", "0", "SOLVER.IMS_PER_BATCH", "4",
        "INPUT.AUG.PREVIEW_BATCHES", "0", "DATALOADER.NUM_WORKERS", "0", "INPUT.RANDOM_FLIP", "horizontal",
        "INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE", "absolute", "INPUT.CROP.SIZE", f"({BAR_TILE}, {BAR_TILE})",
        "INPUT.MIN_SIZE_TRAIN", f"({BAR_TILE},)", "INPUT.MAX_SIZE_TRAIN", "100000",
        # long thin boxes: anchors down to 1:8 (height over width)
        "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[[0.125, 0.25, 0.5, 1.0]]", "TEST.PR_CURVES", "False")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "model_final.pth", test, data / "test_set" / "images"


@pytest.mark.slow
def test_a_trained_model_gives_one_instance_per_bar_across_several_tiles(bar_model):
    from segkit.inference.predictor import Predictor

    checkpoint, test, folder = bar_model
    predictor = Predictor.from_checkpoint(str(checkpoint), device="cpu", confidence_threshold=0.5, opts=[
        "TEST.TILE_SIZE", str(BAR_TILE), "TEST.TILE_OVERLAP", "0.25",
        # the bars never overlap, so a tighter NMS costs nothing here and removes the duplicates a
        # briefly trained model makes inside a tile
        "MODEL.ROI_HEADS.NMS_THRESH_TEST", "0.3"])
    whole, pieces = 0, []
    for im in test["images"]:
        h, w = im["height"], im["width"]
        windows = tile_windows(h, w, BAR_TILE, 0.25)
        inst = predictor(folder / im["file_name"]).instances
        masks = [inst.pred_masks[i] for i in range(len(inst))]
        for a in (a for a in test["annotations"] if a["image_id"] == im["id"]):
            x, y, bw, bh = a["bbox"]
            bar = np.zeros((h, w), bool)
            bar[y:y + bh, x:x + bw] = True
            pieces.append(sum(1 for x0, _, x1, _ in windows if x0 < x + bw and x1 > x))
            # instances mostly on this bar: there must be one, and it must be the bar
            on = [iou(m, bar) for m in masks if (m & bar).sum() > 0.5 * max(1, m.sum())]
            whole += len(on) == 1 and on[0] > 0.7
    assert min(pieces) >= 3 and max(pieces) >= 5
    assert whole >= 0.95 * len(pieces), f"{whole} of {len(pieces)} bars came out as one instance"


@pytest.mark.slow
def test_tiled_evaluation_keeps_to_its_share_of_the_training_time(sample_data, tmp_path):
    """A tiled run whose evaluation (36 tiles) costs more than the training between two periods (2
    iterations): the periodic evaluations and validation losses are skipped
    (TEST.TILE_EVAL_MAX_SHARE), the final one runs, model_best.pth comes from it, and the log says
    what evaluation cost. Before, every period evaluated: 8 evaluations for 16 iterations."""
    from segkit.engine.hooks import read_metrics

    out = tmp_path / "run"
    proc = run_train_net(
        "--config-file", ROOT / "configs/mask_rcnn_R_18_FPN_mini.yaml", "DATASETS.DATA_DIR", sample_data,
        "OUTPUT_DIR", out, "DATASETS.TRAIN", "('mydata_trainval',)", "DATASETS.TEST", "('mydata_trainval',)",
        "SOLVER.MAX_ITER", "16", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "2", "TEST.EVAL_PERIOD", "2",
        "SOLVER.CHECKPOINT_PERIOD", "1000", "INPUT.AUG.PREVIEW_BATCHES", "0", "TEST.PR_CURVES", "False",
        "TEST.TILE_SIZE", "96", "TEST.TILE_OVERLAP", "0.25", *TINY_OVERRIDES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert log.count("Start inference on") == 1  # detectron2's line at each evaluation
    assert log.count("Validation loss: ") == 1
    rows = read_metrics(out / "metrics.json")
    assert [r["iteration"] for r in rows if "segm/AP" in r][-1] >= 15  # the final one (stored at 16)
    assert (out / "model_best.pth").is_file()
    summary = next(line for line in log.splitlines() if "Evaluation took" in line)
    assert "evaluation 1 run(s), 7 skipped" in summary and "TEST.TILE_EVAL_MAX_SHARE 0.2" in summary, summary
