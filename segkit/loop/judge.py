"""Judging: one image's labels against a model's predictions, and the predictions and labels judged.

:func:`judge_image` finds the four kinds of suspect, :func:`calibrate` the per-class confidence
thresholds they are judged at; what each kind means and how it is scored is told in
:mod:`segkit.loop.suspects_cli`, the command that runs them.
"""

import json
import logging
import os

import numpy as np
from pycocotools import mask as mask_util

from segkit.data.coco_masks import decode_segmentation
from segkit.data.layout import image_root, split_json
from segkit.data.run_layout import KEY_SCORE_THRESHOLD

logger = logging.getLogger(__name__)

KINDS = ("missing_label", "wrong_class", "uncovered", "outline")
KIND_TEXT = {
    "missing_label": "missing label?",
    "wrong_class": "wrong class?",
    "uncovered": "no prediction covers it (spurious or very hard?)",
    "outline": "sloppy outline?",
}
MATCH_IOU = 0.5  # as COCO AP50 and the error review
OUTLINE_IOU = 0.75
LOW_SCORE = 0.05  # predictions down to this score are kept: a weak "yes" still covers a label
MIN_SUSPECT_SCORE = 0.1
DEFAULT_CONFIDENCE = 0.5


# ---- judging one image ----------------------------------------------------------------------------

def _rle(mask):
    return mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))


def mask_box(mask):
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def _xywh(box):
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def _rle_of(item):
    """The compressed COCO RLE of a label's or prediction's mask: its ``rle``, else encoded from ``mask``."""
    return item["rle"] if "rle" in item else _rle(item["mask"])


def _size_of(item):
    return tuple(item["rle"]["size"]) if "rle" in item else item["mask"].shape


def _label_box(label):
    return label["box"] if "box" in label else mask_box(label["mask"])


def without_masks(labels):
    """The labels with each full-size mask replaced by its compressed RLE (``rle``) and box (``box``,
    XYXY): what judging and calibration read, a few KB where the mask of a 12 MP photo is 12 MB."""
    return [{**{k: v for k, v in g.items() if k != "mask"}, "rle": _rle(g["mask"]), "box": mask_box(g["mask"])}
            for g in labels]


def mask_of(item):
    """The full-size bool mask of a label or prediction: its ``mask``, else decoded from its ``rle``
    (the outputs decode each where they draw it: one full-size mask at a time)."""
    return item["mask"] if "mask" in item else mask_util.decode(item["rle"]).astype(bool)


def _as_coco(labels, preds):
    """The image's labels and predictions as match_image takes them, their RLEs, and (h, w).
    Labels and predictions carry a full-size ``mask`` or its compressed ``rle``."""
    if labels:
        h, w = _size_of(labels[0])
    elif preds:
        h, w = _size_of(preds[0])
    else:
        h, w = 0, 0
    gt_rles = [_rle_of(g) for g in labels]
    p_rles = [_rle_of(p) for p in preds]
    gts = [{"category_id": g["class"], "bbox": _xywh(_label_box(g)), "segmentation": r,
            "iscrowd": int(bool(g.get("iscrowd")))} for g, r in zip(labels, gt_rles)]
    dts = [{"category_id": p["class"], "bbox": _xywh(p["box"]), "segmentation": r, "score": float(p["score"])}
           for p, r in zip(preds, p_rles)]
    return gts, dts, gt_rles, p_rles, (h, w)


def calibrate(images):
    """Per-class confidence thresholds and recalls of one model from the images it judges
    (``[(labels, predictions)]``): each class's best-F1 threshold against these labels (errors
    included; most labels are right), and the share of the class's labels it then finds."""
    from segkit.evaluation.matching import best_f1, match_image

    scores, is_tp, num_gt = {}, {}, {}
    for labels, preds in images:
        preds = [p for p in preds if p["score"] >= LOW_SCORE]
        gts, dts, _, _, (h, w) = _as_coco(labels, preds)
        if not h:
            continue
        match = match_image(gts, dts, h, w, iou=MATCH_IOU, iou_type="segm")
        tp = {j for j, _, _ in match.tp}
        for g in labels:
            if not g.get("iscrowd"):
                num_gt[g["class"]] = num_gt.get(g["class"], 0) + 1
        for j, p in enumerate(preds):
            scores.setdefault(p["class"], []).append(p["score"])
            is_tp.setdefault(p["class"], []).append(j in tp)
    thresholds, recall = {}, {}
    for cls, n in num_gt.items():
        best = best_f1(scores.get(cls, []), is_tp.get(cls, []), n)
        thresholds[cls] = best["threshold"] if best else DEFAULT_CONFIDENCE
        recall[cls] = best["recall"] if best else 0.0
    return thresholds, recall


def judge_image(labels, predictions, confidence=DEFAULT_CONFIDENCE, recall=None, losses=None):
    """Suspects of one image, from :func:`segkit.evaluation.matching.match_image` at the
    confidence threshold (mask IoU 0.5) plus the predictions below it.

    ``labels``: dicts with ``id``, ``class``, ``mask`` (bool HxW) and ``iscrowd`` (or, instead of
    ``mask``, its ``rle`` and ``box``: :func:`without_masks`);
    ``predictions``: dicts with ``class``, ``score``, ``mask`` (bool HxW) or ``rle``, ``box`` (XYXY);
    ``losses``: :func:`label_losses` of the labels, or None. With them, a label suspect's score is
    multiplied by sqrt(1 - p(its class | its box)).
    Returns suspect dicts (``kind``, ``score``, ``annotation_id`` or None, ``label_class``,
    ``predicted_class``, ``prediction_score``, ``iou``, ``label_probability`` (p(label class | box),
    None without losses), ``prediction_index``, ``box`` XYXY of the label, else of the
    prediction), unsorted.
    """
    from segkit.evaluation.matching import match_image, score_threshold_of

    preds = [p for p in predictions if p["score"] >= LOW_SCORE]
    gts, dts, gt_rles, p_rles, (h, w) = _as_coco(labels, preds)
    if not h:
        return []
    if isinstance(confidence, dict):
        confidence = dict(confidence)
        confidence.setdefault(None, DEFAULT_CONFIDENCE)
    match = match_image(gts, dts, h, w, iou=MATCH_IOU, iou_type="segm", score_thresholds=confidence)
    objects = np.array([not g["iscrowd"] for g in gts], dtype=bool)
    iou = np.zeros((len(preds), len(labels)))
    if preds and labels:
        iou = np.asarray(mask_util.iou(p_rles, gt_rles, [0] * len(labels))).reshape(len(preds), len(labels))
        iou[:, ~objects] = 0.0
    scores = np.array([p["score"] for p in preds])
    out = []

    def suspect(kind, score, g=None, j=None, pair_iou=None):
        label = None if g is None else labels[g]
        own = losses[g] if losses is not None and g is not None else None
        if own is not None:
            # Where the model, given the label's own box, names the label's class, the disagreement
            # that made the label a suspect is more likely the model's mistake than the label's.
            score *= np.sqrt(max(0.0, 1.0 - own["p_label"]))
        out.append({
            "kind": kind, "score": round(float(min(max(score, 0.0), 1.0)), 4),
            "annotation_id": None if label is None else label["id"],
            "label_class": None if label is None else label["class"],
            "predicted_class": None if j is None else preds[j]["class"],
            "prediction_score": None if j is None else round(float(scores[j]), 4),
            "iou": None if pair_iou is None else round(float(pair_iou), 4),
            "label_probability": None if own is None else round(float(own["p_label"]), 4),
            "prediction_index": j,
            "box": [round(v, 1) for v in (_label_box(label) if label is not None else map(float, preds[j]["box"]))],
        })

    # Unmatched predictions under the confidence threshold count too, scaled by score/threshold: the
    # threshold is calibrated against the labels, errors included, so the unlabelled objects
    # themselves (confident "false positives") push it up, to 0.98 on 7 real photos.
    t_pred = np.array([score_threshold_of(confidence, p["class"]) for p in preds])
    crowd = np.zeros(len(preds), dtype=bool)
    if preds and (~objects).any():
        crowd_iou = np.asarray(mask_util.iou(p_rles, [r for r, o in zip(gt_rles, objects) if not o],
                                             [1] * int((~objects).sum()))).reshape(len(preds), -1)
        crowd = crowd_iou.max(axis=1) >= MATCH_IOU
    weak = [j for j in match.below_threshold
            if not crowd[j] and (float(iou[j].max()) if labels else 0.0) < MATCH_IOU]
    candidates = list(match.fp) + weak
    soft = {j: scores[j] * min(1.0, scores[j] / max(t_pred[j], 1e-6)) for j in candidates}
    # One object, one suspect: an unlabelled object the model draws twice (two classes, or two
    # overlapping boxes) would otherwise take two places in the reviewer's list.
    fp = sorted(candidates, key=lambda j: -soft[j])
    overlap = (np.asarray(mask_util.iou([p_rles[j] for j in fp], [p_rles[j] for j in fp], [0] * len(fp)))
               .reshape(len(fp), len(fp)) if fp else np.zeros((0, 0)))
    kept = []
    for a, j in enumerate(fp):
        if any(overlap[a, b] >= MATCH_IOU for b in kept):
            continue
        kept.append(a)
        best = float(iou[j].max()) if labels else 0.0
        suspect("missing_label", soft[j] * (1 - best), j=j, pair_iou=best)
    for j, g, pair_iou in match.confusions:
        own = [scores[k] for k in range(len(preds))
               if preds[k]["class"] == labels[g]["class"] and iou[k, g] >= MATCH_IOU]
        suspect("wrong_class", scores[j] - max(own, default=0.0), g=g, j=j, pair_iou=pair_iou)
    outlines = [(j, g, m) for j, g, m, _ in match.poor_masks] + [t for t in match.tp if t[2] < OUTLINE_IOU]
    for j, g, pair_iou in outlines:
        suspect("outline", scores[j] * min(1.0, (1 - pair_iou) / 0.5), g=g, j=j, pair_iou=pair_iou)
    for g in match.missed:
        coverage = iou[:, g] * np.minimum(1.0, scores / np.maximum(t_pred, 1e-6)) if preds else np.zeros(1)
        # a miss says little about a label when the model misses most labels of its class
        weight = 1.0 if recall is None else recall.get(labels[g]["class"], 0.0)
        suspect("uncovered", (1 - float(coverage.max())) * weight, g=g,
                pair_iou=float(iou[:, g].max()) if preds else 0.0)
    return [s for s in out if s["score"] >= MIN_SUSPECT_SCORE]


# ---- the labels judged ---------------------------------------------------------------------------

def read_split(data_dir, split):
    """The split's COCO dict (``<data_dir>/<split>.json``)."""
    path = split_json(data_dir, split)
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: no such file; convert your data first (python labelme2coco.py INPUT_DIR).")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def coco_labels(coco, image):
    """Label dicts (id, class, mask, iscrowd) of one image of a COCO dict.

    Decoded as detectron2's loader reads them for training (polygons with an odd number of
    coordinates or fewer than 3 points left out); each such label is named in a one-line warning,
    and a label with no usable mask left is not judged rather than judged as an empty one."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    h, w = image["height"], image["width"]
    out = []
    for a in coco["annotations"]:
        if a["image_id"] != image["id"]:
            continue
        mask, problems = decode_segmentation(a.get("segmentation"), h, w)
        where = f"{image['file_name']}: annotation {a['id']} ({names[a['category_id']]})"
        if mask is None:
            logger.warning(f"{where}: {'; '.join(problems)}; not judged")
            continue
        if problems:
            logger.warning(f"{where}: {'; '.join(problems)}; judged without {'it' if len(problems) == 1 else 'them'}")
        out.append({"id": a["id"], "class": names[a["category_id"]], "mask": mask,
                    "iscrowd": int(a.get("iscrowd", 0))})
    return out


def image_path(data_dir, image):
    return os.path.join(image_root(data_dir), image["file_name"])


# ---- predictions ----------------------------------------------------------------------------------

def load_predictor(weights, opts=()):
    """The judging predictor of a checkpoint: every prediction down to LOW_SCORE."""
    from segkit.inference.predictor import Predictor

    return Predictor.from_checkpoint(weights, confidence_threshold=LOW_SCORE, opts=list(opts))


def predict_image(predictor, path):
    """Prediction dicts (class, score, box XYXY, rle: the mask's compressed COCO RLE) of one image,
    down to LOW_SCORE, from a predictor of :func:`load_predictor`.

    detectron2's post-processing pastes every mask into a full-size image (N x H x W: 100 masks of
    a 12 MP photo are 1.2 GB); here each mask is pasted into its own box only, as tiled prediction
    does (segkit/modeling/tiling.py: the same boxes, scaled and clipped, and the same pasted pixels),
    and kept as its RLE."""
    import torch

    from segkit.modeling.tiling import detections_to_instances, paste_detections

    if predictor.tiled is not None:  # tiles give box-sized masks already
        inst = predictor(path, keep_image=False).instances
    else:
        inputs, image_rgb = predictor.preprocess(path)
        h, w = image_rgb.shape[:2]
        del image_rgb
        with torch.inference_mode():
            out = predictor.model.inference([inputs], do_postprocess=False)[0]
        rh, rw = out.image_size
        inst = detections_to_instances(paste_detections(out, (0, 0), (w / rw, h / rh), (h, w), -1), (h, w))
    masks = inst.pred_masks
    return [{"class": predictor.class_names[c], "score": float(s), "box": b, "rle": masks.rle(i)}
            for i, (c, s, b) in enumerate(zip(inst.pred_classes.tolist(), inst.scores.tolist(),
                                              inst.pred_boxes.tensor.tolist()))]


def checkpoint_confidence(predictor):
    """The best-F1 threshold stored in the predictor's checkpoint (``score_threshold``), else None."""
    value = predictor.stored_thresholds.get(KEY_SCORE_THRESHOLD)
    return float(value) if value is not None else None
