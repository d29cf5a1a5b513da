"""COCO evaluation on a tiny dataset, with "predictions" made from the ground truth itself (no model)."""

import json

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances
from detectron2.utils import comm
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from segkit.data.catalog import register_coco_dataset
from segkit.engine.checkpoint import take_score_thresholds
from segkit.evaluation.coco import (
    SegkitCOCOEvaluator,
    build_coco_evaluator,
    format_results_table,
    print_results_table,
)
from segkit.modeling.config import get_segkit_cfg

H, W = 80, 100
CLASSES = ["apple", "banana", "cherry"]  # cherry has no ground truth in this split
# image id -> [(category id, polygon x, y)]
OBJECTS = {
    1: [(1, [10, 10, 50, 12, 45, 50, 12, 45]), (2, [60, 20, 95, 20, 95, 70, 60, 70])],
    2: [(1, [5, 5, 20, 5, 20, 20, 5, 20]), (1, [30, 30, 90, 35, 85, 75, 35, 70])],
    3: [(2, [20, 10, 70, 15, 60, 60, 25, 55])],
    4: [],  # an image without objects
}


def _write_coco(folder, classes=CLASSES, objects=OBJECTS):
    images, annotations = [], []
    for image_id, objs in objects.items():
        images.append({"id": image_id, "file_name": f"img{image_id}.png", "height": H, "width": W})
        for cat_id, poly in objs:
            rle = mask_util.merge(mask_util.frPyObjects([poly], H, W))
            x, y = poly[0::2], poly[1::2]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat_id,
                    "segmentation": [poly],
                    "area": float(mask_util.area(rle)),
                    "bbox": [min(x), min(y), max(x) - min(x), max(y) - min(y)],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(classes)]
    path = folder / "val.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@pytest.fixture
def dataset(tmp_path):
    json_file = _write_coco(tmp_path)
    name = "segkit_test_coco_eval"
    register_coco_dataset(name, str(json_file), str(tmp_path / "images"))
    return name, json_file, tmp_path / "eval"


def _gt_predictions(json_file, shift=0, drop_classes=(), extra=None):
    """One (inputs, outputs) pair per image: GT boxes/masks as predictions, optionally shifted
    right by ``shift`` pixels or without some classes; ``extra``: (class, box) false positives."""
    coco = COCO(str(json_file))
    pairs = []
    for image_id in sorted(coco.getImgIds()):
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id)) if a["category_id"] - 1 not in drop_classes]
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        classes = [a["category_id"] - 1 for a in anns]
        if extra and image_id == 1:
            for cls, box in extra:
                boxes.append(box)
                m = np.zeros((H, W), bool)
                m[box[1] : box[3], box[0] : box[2]] = True
                masks.append(m)
                classes.append(cls)
        inst = Instances((H, W))
        boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        boxes[:, 0::2] += shift
        inst.pred_boxes = Boxes(boxes)
        inst.scores = torch.linspace(0.9, 0.8, len(classes)) if classes else torch.zeros(0)
        inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
        inst.pred_masks = torch.from_numpy(np.roll(np.array(masks).reshape(-1, H, W), shift, axis=2))
        pairs.append(([{"image_id": image_id, "height": H, "width": W}], [{"instances": inst}]))
    return pairs


def _evaluate(evaluator, pairs):
    evaluator.reset()
    for inputs, outputs in pairs:
        evaluator.process(inputs, outputs)
    return evaluator.evaluate()


def _cfg(pr_curves=True):
    cfg = get_segkit_cfg()
    cfg.MODEL.MASK_ON = True
    cfg.TEST.PR_CURVES = pr_curves
    return cfg


def test_perfect_predictions_give_ap_100(dataset, capsys):
    name, json_file, out = dataset
    evaluator = build_coco_evaluator(_cfg(), name, str(out))
    assert isinstance(evaluator, SegkitCOCOEvaluator)
    results = _evaluate(evaluator, _gt_predictions(json_file))
    for task in ("bbox", "segm"):
        assert results[task]["AP"] == pytest.approx(100.0)
        assert results[task]["AP50"] == pytest.approx(100.0)
        assert results[task]["AP-apple"] == pytest.approx(100.0)
        assert results[task]["AP-banana"] == pytest.approx(100.0)
        assert np.isnan(results[task]["AP-cherry"])  # returned results stay COCOEvaluator's floats

    metrics = json.loads((out / f"metrics_{name}.json").read_text())
    assert metrics["dataset"] == name and metrics["num_images"] == 4
    for task in ("bbox", "segm"):
        m = metrics[task]
        assert set(m) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class"}
        assert m["AP"] == pytest.approx(100.0) and m["AP75"] == pytest.approx(100.0)
        assert m["APl"] is None  # no large objects: null, not NaN (which is not JSON)
        assert m["per_class"]["apple"] == {"AP": pytest.approx(100.0), "AP50": pytest.approx(100.0), "num_gt": 3}
        assert m["per_class"]["cherry"] == {"AP": None, "AP50": None, "num_gt": 0}
        for cls in ("apple", "banana"):
            assert (out / f"pr_{task}_{cls}.png").stat().st_size > 5000
        assert not (out / f"pr_{task}_cherry.png").exists()  # no ground truth, no curve
        assert (out / f"pr_{task}.png").stat().st_size > 5000
    assert (out / "coco_instances_results.json").exists()  # detectron2's own dump is kept

    printed = capsys.readouterr().out
    lines = printed.splitlines()
    cherry = next(line for line in lines if line.startswith("cherry"))
    assert cherry.split()[1:] == ["n/a"] * 6
    apple = next(line for line in lines if line.startswith("apple"))
    # bbox AP, segm AP, best threshold (halfway below the lowest score, 0.8), P, R, F1
    assert apple.split()[1:] == ["100.0", "100.0", "0.40", "100.0", "100.0", "100.0"]
    header = next(line for line in lines if line.startswith("class"))
    assert "bbox AP" in header and "segm AP" in header and "best thr" in header and "F1" in header
    assert "One threshold for all classes: score > 0.40" in printed

    # every object found at mask IoU >= 0.5: the confusion matrix is diagonal
    assert metrics["confusion_matrix"]["labels"] == CLASSES + ["background"]
    assert metrics["confusion_matrix"]["matrix"] == [[3, 0, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert json.loads((out / f"confusion_matrix_{name}.json").read_text())["matrix"] == metrics["confusion_matrix"]["matrix"]
    assert (out / f"confusion_matrix_{name}.png").stat().st_size > 5000
    assert (out / f"f1_{name}.png").stat().st_size > 5000
    best = metrics["thresholds"]["per_class"]
    assert best["apple"]["threshold"] == pytest.approx(0.4) and best["apple"]["f1"] == pytest.approx(1.0)
    assert best["cherry"]["threshold"] is None and best["cherry"]["num_gt"] == 0
    assert results["score_thresholds"] == {"apple": pytest.approx(0.4), "banana": pytest.approx(0.4)}
    assert results["score_threshold"] == pytest.approx(0.4)

    # what the trainer does with them: out of the metrics EvalHook stores, into the checkpoint keys
    taken = take_score_thresholds({name: results})
    assert taken == {"score_thresholds": {"apple": pytest.approx(0.4), "banana": pytest.approx(0.4)},
                     "score_threshold": pytest.approx(0.4)}
    assert set(results) == {"bbox", "segm"}
    # Aligned: every row of the per-class table is as wide as its header.
    table = lines[lines.index(header) :]
    assert len({len(line.rstrip()) for line in table[:1] + table[2:5]}) == 1


def test_worse_predictions_give_lower_ap(dataset):
    name, json_file, out = dataset
    evaluator = build_coco_evaluator(_cfg(pr_curves=False), name, str(out))
    perfect = _evaluate(evaluator, _gt_predictions(json_file))
    shifted = _evaluate(evaluator, _gt_predictions(json_file, shift=6))
    dropped = _evaluate(evaluator, _gt_predictions(json_file, drop_classes=(1,)))
    for task in ("bbox", "segm"):
        assert shifted[task]["AP"] < perfect[task]["AP"] - 10
        assert dropped[task]["AP"] < perfect[task]["AP"] - 10
        assert dropped[task]["AP-banana"] == pytest.approx(0.0)
        assert dropped[task]["AP-apple"] == pytest.approx(100.0)
    metrics = json.loads((out / f"metrics_{name}.json").read_text())  # the latest run's
    assert metrics["segm"]["per_class"]["banana"]["AP"] == pytest.approx(0.0)
    assert not list(out.glob("pr_*.png"))  # TEST.PR_CURVES False


def test_no_predictions_at_all(dataset, capsys):
    name, json_file, out = dataset
    evaluator = build_coco_evaluator(_cfg(), name, str(out))
    pairs = _gt_predictions(json_file, drop_classes=(0, 1, 2))  # every image, zero instances
    results = _evaluate(evaluator, pairs)
    for task in ("bbox", "segm"):
        assert all(np.isnan(v) for v in results[task].values())
    metrics = json.loads((out / f"metrics_{name}.json").read_text())
    for task in ("bbox", "segm"):
        assert metrics[task]["AP"] is None
        assert metrics[task]["per_class"]["apple"] == {"AP": None, "AP50": None, "num_gt": 3}
    assert not list(out.glob("pr_*.png"))
    assert "n/a" in capsys.readouterr().out

    # Not even one image processed: COCOEvaluator returns {}; we still report nulls.
    evaluator.reset()
    assert evaluator.evaluate() == {}
    metrics = json.loads((out / f"metrics_{name}.json").read_text())
    assert metrics["bbox"]["AP"] is None and metrics["segm"]["per_class"]["banana"]["AP"] is None


def test_false_positive_of_class_without_gt(dataset):
    name, json_file, out = dataset
    evaluator = build_coco_evaluator(_cfg(), name, str(out))
    results = _evaluate(evaluator, _gt_predictions(json_file, extra=[(2, [0, 60, 20, 79])]))
    assert results["segm"]["AP-apple"] == pytest.approx(100.0)
    assert np.isnan(results["segm"]["AP-cherry"])
    metrics = json.loads((out / f"metrics_{name}.json").read_text())
    assert metrics["bbox"]["per_class"]["cherry"]["AP"] is None
    # cherry has no ground truth, hence no threshold of its own: the all-classes one (0.4) keeps
    # its detection (0.8), a false detection in the background row
    cm = metrics["confusion_matrix"]["matrix"]
    assert cm[3] == [0, 0, 1, 0] and cm[0][0] == 3 and cm[1][1] == 2
    assert metrics["thresholds"]["all_classes"]["precision"] == pytest.approx(5 / 6)


def test_shifted_masks_lower_recall_and_f1(dataset):
    name, json_file, out = dataset
    evaluator = build_coco_evaluator(_cfg(pr_curves=False), name, str(out))
    results = _evaluate(evaluator, _gt_predictions(json_file, shift=12))
    metrics = json.loads((out / f"metrics_{name}.json").read_text())
    per_class = metrics["thresholds"]["per_class"]
    # the small apple (15 px) shifted by 12 px no longer overlaps enough: not every object is found
    assert per_class["apple"]["recall"] < 1.0
    assert sum(map(sum, metrics["confusion_matrix"]["matrix"])) > 5  # misses and false detections


def test_box_only_and_single_class(tmp_path):
    objects = {1: [(1, [10, 10, 50, 12, 45, 50, 12, 45])], 2: [(1, [20, 10, 70, 15, 60, 60, 25, 55])]}
    json_file = _write_coco(tmp_path, classes=["thing"], objects=objects)
    name = "segkit_test_coco_eval_single"
    register_coco_dataset(name, str(json_file), str(tmp_path))
    cfg = _cfg()
    cfg.MODEL.MASK_ON = False
    evaluator = build_coco_evaluator(cfg, name, str(tmp_path / "eval"))
    results = _evaluate(evaluator, _gt_predictions(json_file))
    assert [k for k in results if k in ("bbox", "segm")] == ["bbox"]
    assert results["score_thresholds"] == {"thing": pytest.approx(0.45)}  # judged on boxes
    assert results["bbox"]["AP-thing"] == pytest.approx(100.0)  # detectron2 omits it for one class
    metrics = json.loads((tmp_path / "eval" / f"metrics_{name}.json").read_text())
    assert "segm" not in metrics and metrics["bbox"]["per_class"]["thing"]["AP"] == pytest.approx(100.0)
    assert (tmp_path / "eval" / "pr_bbox_thing.png").exists()


def test_only_main_process_writes(dataset, monkeypatch):
    name, json_file, out = dataset
    evaluator = build_coco_evaluator(_cfg(), name, str(out))
    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    assert _evaluate(evaluator, _gt_predictions(json_file)) == {}
    assert not out.exists() or not any(out.iterdir())


def test_print_results_table_for_eval_only(capsys):
    results = {
        "bbox": {"AP": 50.0, "AP50": 75.0, "AP75": 40.0, "APs": float("nan"), "APm": 1.0, "APl": 2.0, "AP-a": 3.0},
        "segm": {"AP": 45.5, "AP50": 70.0, "AP75": 30.0, "APs": 1.0, "APm": 2.0, "APl": 3.0, "AP-a": float("nan")},
    }
    text = print_results_table(results)
    assert capsys.readouterr().out.strip() == text.strip()
    row = next(line for line in text.splitlines() if line.startswith("APs"))
    assert row.split() == ["APs", "n/a", "1.0"]
    row = next(line for line in text.splitlines() if line.startswith("a "))
    assert row.split() == ["a", "3.0", "n/a"]
    # DefaultTrainer.test returns {dataset: results} for several test sets.
    several = format_results_table({"val_a": results, "val_b": {}})
    assert "val_a:" in several and "val_b:" in several
    assert "No COCO results" in format_results_table({})


def test_evaluator_is_chosen_by_the_datasets_evaluator_type(dataset, tmp_path):
    """As detectron2's tools/train_net.py: the dataset's metadata decides, not the architecture."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from segkit.evaluation.build import build_evaluator
    from segkit.evaluation.semantic import SemSegDiceEvaluator

    name, _, out = dataset
    cfg = _cfg()
    cfg.MODEL.META_ARCHITECTURE = "UNet"  # ignored: the COCO dataset gets the COCO evaluator
    assert isinstance(build_evaluator(cfg, name, str(out)), SegkitCOCOEvaluator)

    semantic = "segkit_test_evaluator_type_sem_seg"
    DatasetCatalog.register(semantic, lambda: [])
    MetadataCatalog.get(semantic).set(stuff_classes=["background", "thing"], ignore_label=255,
                                      evaluator_type="sem_seg")
    untyped = "segkit_test_evaluator_type_none"
    DatasetCatalog.register(untyped, lambda: [])
    try:
        assert isinstance(build_evaluator(_cfg(), semantic, str(tmp_path)), SemSegDiceEvaluator)
        with pytest.raises(NotImplementedError, match=untyped):
            build_evaluator(_cfg(), untyped, str(tmp_path))
    finally:
        for n in (semantic, untyped):
            DatasetCatalog.remove(n)
            MetadataCatalog.remove(n)
