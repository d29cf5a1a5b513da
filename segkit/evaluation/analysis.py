"""What a set of predictions gets right and wrong, beyond AP: per-class precision / recall / F1 at
the score threshold that maximises F1, the instance confusion matrix, and the per-image matches
the error review ranks. Built on :mod:`segkit.evaluation.matching` (mask IoU >= 0.5, greedy by
score); the COCO evaluator and ``segkit.loop.review`` both use it.
"""

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from segkit.evaluation.matching import best_f1, confusion_matrix, f1_curve, match_image, score_threshold_of

__all__ = ["DetectionAnalysis", "analyse_detections", "group_by_image"]

CURVE_THRESHOLDS = np.round(np.linspace(0.0, 1.0, 101), 2)


def group_by_image(images, annotations, coco_results, image_ids=None):
    """[(image dict, gts, preds)] per image id (COCO ``images`` / ``annotations`` lists and
    COCO-format results); ``image_ids`` limits and orders them (default: every image)."""
    by_id = {im["id"]: im for im in images}
    gts, preds = {}, {}
    for a in annotations:
        gts.setdefault(a["image_id"], []).append(a)
    for r in coco_results:
        preds.setdefault(r["image_id"], []).append(r)
    ids = list(by_id) if image_ids is None else [i for i in image_ids if i in by_id]
    return [(by_id[i], gts.get(i, []), preds.get(i, [])) for i in ids]


@dataclass
class DetectionAnalysis:
    iou_type: str
    iou: float
    category_ids: list
    class_names: list
    per_class: OrderedDict  # class name -> num_gt, num_pred, threshold, precision, recall, f1
    overall: dict  # the same for all classes pooled: one threshold for every class
    curves: dict = field(default_factory=dict)  # class name -> (precision, recall, f1) over CURVE_THRESHOLDS
    confusion: np.ndarray = None  # at the applied thresholds, see confusion_matrix()
    applied_thresholds: dict = None  # category id -> threshold used for the confusion matrix / images
    images: list = field(default_factory=list)  # (image, gts, preds, ImageMatch) at those thresholds

    @property
    def score_threshold(self):
        return self.overall.get("threshold")

    def score_thresholds(self):
        """{class name: best-F1 threshold} of the classes that have one."""
        return OrderedDict((n, v["threshold"]) for n, v in self.per_class.items() if v.get("threshold") is not None)

    def confusion_json(self):
        return OrderedDict(
            iou_type=self.iou_type,
            iou=self.iou,
            rows="ground truth",
            columns="prediction",
            labels=list(self.class_names) + ["background"],
            score_thresholds={n: self.applied_thresholds.get(c) for n, c in zip(self.class_names, self.category_ids)},
            matrix=self.confusion.tolist(),
        )

    def thresholds_json(self):
        return OrderedDict(
            iou_type=self.iou_type,
            iou=self.iou,
            score_threshold=self.score_threshold,
            all_classes=self.overall,
            per_class=self.per_class,
        )


def _entry(scores, is_tp, num_gt):
    best = best_f1(scores, is_tp, num_gt)
    entry = OrderedDict(num_gt=int(num_gt), num_pred=len(scores), threshold=None, precision=None, recall=None, f1=None)
    if best is not None:
        entry.update(best)
    elif num_gt:
        entry.update(precision=0.0 if len(scores) else None, recall=0.0, f1=0.0)
    return entry


def analyse_detections(grouped, category_ids, class_names, *, iou_type="segm", iou=0.5, score_thresholds=None):
    """Best-F1 thresholds, F1 curves, confusion matrix and per-image matches.

    ``grouped``: :func:`group_by_image` output. The confusion matrix and the per-image matches use
    ``score_thresholds`` (see :func:`segkit.evaluation.matching.score_threshold_of`) when given,
    else each class's best-F1 threshold (the all-classes one for a class without its own).
    """
    scores = {c: [] for c in category_ids}
    hits = {c: [] for c in category_ids}
    num_gt = {c: 0 for c in category_ids}
    for image, gts, preds in grouped:
        for g in gts:
            if not g.get("iscrowd", 0) and g["category_id"] in num_gt:
                num_gt[g["category_id"]] += 1
        m = match_image(gts, preds, image["height"], image["width"], iou=iou, iou_type=iou_type)
        tp = {p for p, _, _ in m.tp}
        ignored = set(m.ignored)
        for i, p in enumerate(preds):
            if i not in ignored and p["category_id"] in scores:
                scores[p["category_id"]].append(float(p["score"]))
                hits[p["category_id"]].append(i in tp)

    per_class, curves = OrderedDict(), {}
    for c, name in zip(category_ids, class_names):
        per_class[name] = _entry(scores[c], hits[c], num_gt[c])
        if num_gt[c]:
            curves[name] = f1_curve(scores[c], hits[c], num_gt[c], CURVE_THRESHOLDS)
    overall = _entry(
        [s for c in category_ids for s in scores[c]], [h for c in category_ids for h in hits[c]], sum(num_gt.values())
    )

    if score_thresholds is None:
        applied = {c: per_class[n]["threshold"] for c, n in zip(category_ids, class_names)}
        applied = {c: (t if t is not None else overall["threshold"]) for c, t in applied.items()}
    else:
        applied = {c: score_threshold_of(score_thresholds, c) for c in category_ids}
    matched = []
    for image, gts, preds in grouped:
        m = match_image(gts, preds, image["height"], image["width"], iou=iou, iou_type=iou_type, score_thresholds=applied)
        matched.append((image, gts, preds, m))
    known = set(category_ids)
    confusion = confusion_matrix(
        ((m, gts, preds) for _, gts, preds, m in matched if _all_known(gts, preds, m, known)), category_ids
    )
    return DetectionAnalysis(
        iou_type=iou_type,
        iou=iou,
        category_ids=list(category_ids),
        class_names=list(class_names),
        per_class=per_class,
        overall=overall,
        curves=curves,
        confusion=confusion,
        applied_thresholds=applied,
        images=matched,
    )


def _all_known(gts, preds, m, known):
    # A class outside the category list (a foreign results file) cannot be placed in the matrix.
    return all(g["category_id"] in known for g in gts if not g.get("iscrowd", 0)) and all(
        p["category_id"] in known for p in preds
    )
