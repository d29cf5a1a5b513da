"""Per-image matching of predicted instances to ground truth, the building block of the confusion
matrix, the best-F1 score thresholds, the error review and the suspect-label finder.

Both sides are COCO-format dicts: ground truth as in a COCO file (``category_id``, ``bbox`` xywh,
``segmentation`` polygons or RLE, ``iscrowd``), predictions as in ``coco_instances_results.json``
(``category_id``, ``bbox``, ``segmentation`` RLE, ``score``). IoUs are pycocotools' own
(``mask.iou``), so a crowd region scores intersection over the prediction's area, as COCOeval does.

Matching, predictions taken greedily by descending score, each ground truth used at most once:

1. true positive: the unmatched ground truth of the same class with the highest IoU >= ``iou``
   (COCOeval's rule; without one, a prediction on a same-class crowd region is ignored);
2. class confusion: else the unmatched ground truth of another class with the highest IoU >= ``iou``;
3. poor mask (masks only): else the unmatched same-class ground truth whose *box* IoU >= ``iou``
   (its mask IoU is then necessarily below ``iou``);
4. otherwise a false positive, unless it lies on a crowd region of any class (ignored).

Unused non-crowd ground truth is missed. Pass 1 on its own is exactly COCOeval's matching at one
IoU threshold, so the true-positive flags of the predictions above any score stay the same when
lower-scored predictions are added or removed: that is what makes a precision/recall/F1 curve
over score thresholds from a single matching (:func:`f1_curve`).
"""

from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_util

from segkit.data.coco_masks import segmentation_to_rle

__all__ = [
    "ImageMatch",
    "best_f1",
    "confusion_matrix",
    "f1_curve",
    "match_image",
    "score_threshold_of",
]


@dataclass
class ImageMatch:
    """The outcome for one image. Indices refer to the ``gts`` / ``preds`` lists given to
    :func:`match_image`; IoUs are those of the matched pair (mask IoU for ``segm``)."""

    tp: list = field(default_factory=list)  # (pred, gt, iou)
    confusions: list = field(default_factory=list)  # (pred, gt, iou)
    poor_masks: list = field(default_factory=list)  # (pred, gt, mask iou, box iou)
    fp: list = field(default_factory=list)  # pred
    missed: list = field(default_factory=list)  # gt
    ignored: list = field(default_factory=list)  # pred on a crowd region
    below_threshold: list = field(default_factory=list)  # pred dropped by the score threshold

    def counts(self):
        return {
            "tp": len(self.tp),
            "fp": len(self.fp),
            "missed": len(self.missed),
            "confusions": len(self.confusions),
            "poor_masks": len(self.poor_masks),
        }

    @property
    def errors(self):
        """Everything that is not a true positive: what ranks an image in the error review."""
        return len(self.fp) + len(self.missed) + len(self.confusions) + len(self.poor_masks)


def score_threshold_of(score_thresholds, category_id):
    """The threshold for one class from None (keep all), a number, or ``{category_id: t}``
    (a class missing from the dict, or mapped to None, uses key ``None`` or else keeps all)."""
    if score_thresholds is None:
        return 0.0
    if isinstance(score_thresholds, dict):
        t = score_thresholds.get(category_id)
        if t is None:
            t = score_thresholds.get(None)
        return 0.0 if t is None else float(t)
    return float(score_thresholds)


def _iou(dts, gts, crowd):
    if not dts or not gts:
        return np.zeros((len(dts), len(gts)))
    return np.asarray(mask_util.iou(dts, gts, crowd), dtype=float).reshape(len(dts), len(gts))


def match_image(gts, preds, height, width, *, iou=0.5, iou_type="segm", score_thresholds=None):
    """Match one image's predictions to its ground truth (see the module docstring).

    ``score_thresholds`` (see :func:`score_threshold_of`) drops predictions below it before
    matching; they are listed in ``below_threshold``.
    """
    result = ImageMatch()
    keep = []
    for i, p in enumerate(preds):
        if p["score"] >= score_threshold_of(score_thresholds, p["category_id"]):
            keep.append(i)
        else:
            result.below_threshold.append(i)
    keep.sort(key=lambda i: -preds[i]["score"])  # stable: ties keep their input order, as COCOeval

    crowd = [int(bool(g.get("iscrowd", 0))) for g in gts]
    gt_boxes = [list(map(float, g["bbox"])) for g in gts]
    dt_boxes = [list(map(float, preds[i]["bbox"])) for i in keep]
    box_iou = _iou(dt_boxes, gt_boxes, crowd)
    if iou_type == "segm":
        gt_rles = [segmentation_to_rle(g["segmentation"], height, width, raise_errors=True) for g in gts]
        dt_rles = [segmentation_to_rle(preds[i]["segmentation"], height, width, raise_errors=True) for i in keep]
        main_iou = _iou(dt_rles, gt_rles, crowd)
    else:
        main_iou = box_iou

    gt_cls = np.array([g["category_id"] for g in gts])
    is_crowd = np.array(crowd, dtype=bool)
    used = np.zeros(len(gts), dtype=bool)
    pending = []  # rows (into keep) not matched by pass 1

    def best(row, candidates, ious):
        ok = candidates & (ious[row] >= iou)
        if not ok.any():
            return None
        return int(np.argmax(np.where(ok, ious[row], -1.0)))

    for row, i in enumerate(keep):
        cls = preds[i]["category_id"]
        same = gt_cls == cls if len(gts) else np.zeros(0, bool)
        g = best(row, same & ~is_crowd & ~used, main_iou)
        if g is not None:
            used[g] = True
            result.tp.append((i, g, float(main_iou[row, g])))
        elif best(row, same & is_crowd, main_iou) is not None:
            result.ignored.append(i)
        else:
            pending.append(row)

    still = []
    for row in pending:  # pass 2 after every true positive: a right class beats a confusion
        i = keep[row]
        other = gt_cls != preds[i]["category_id"] if len(gts) else np.zeros(0, bool)
        g = best(row, other & ~is_crowd & ~used, main_iou)
        if g is not None:
            used[g] = True
            result.confusions.append((i, g, float(main_iou[row, g])))
        else:
            still.append(row)

    for row in still:
        i = keep[row]
        if iou_type == "segm":
            same = gt_cls == preds[i]["category_id"] if len(gts) else np.zeros(0, bool)
            g = best(row, same & ~is_crowd & ~used, box_iou)
            if g is not None:
                used[g] = True
                result.poor_masks.append((i, g, float(main_iou[row, g]), float(box_iou[row, g])))
                continue
        if len(gts) and (is_crowd & (main_iou[row] >= iou)).any():
            result.ignored.append(i)
        else:
            result.fp.append(i)

    result.missed = [int(g) for g in np.flatnonzero(~used & ~is_crowd)]
    return result


def confusion_matrix(matched, category_ids):
    """(K+1) x (K+1) counts, rows = ground-truth class, columns = predicted class, index K =
    background: misses land in the background column, false detections in the background row,
    and a poor mask counts as both (it does not reach the IoU of a match).

    ``matched``: iterable of (ImageMatch, gts, preds) of the images to count.
    """
    index = {c: k for k, c in enumerate(category_ids)}
    bg = len(category_ids)
    m = np.zeros((bg + 1, bg + 1), dtype=np.int64)
    for match, gts, preds in matched:
        for p, g, _ in match.tp + match.confusions:
            m[index[gts[g]["category_id"]], index[preds[p]["category_id"]]] += 1
        for p, g, *_ in match.poor_masks:
            m[index[gts[g]["category_id"]], bg] += 1
            m[bg, index[preds[p]["category_id"]]] += 1
        for g in match.missed:
            m[index[gts[g]["category_id"]], bg] += 1
        for p in match.fp:
            m[bg, index[preds[p]["category_id"]]] += 1
    return m


def f1_curve(scores, is_tp, num_gt, thresholds):
    """Precision, recall and F1 (arrays over ``thresholds``) of the predictions scoring >= each
    threshold; ``scores``/``is_tp`` from the pass-1 (same-class) matching without a threshold."""
    scores = np.asarray(scores, dtype=float)
    is_tp = np.asarray(is_tp, dtype=bool)
    thresholds = np.asarray(thresholds, dtype=float)
    kept = scores[None, :] >= thresholds[:, None]
    n = kept.sum(1)
    tp = (kept & is_tp[None, :]).sum(1)
    precision = np.where(n > 0, tp / np.maximum(n, 1), 1.0)
    recall = tp / num_gt if num_gt else np.zeros(len(thresholds))
    f1 = np.where(tp > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return precision, recall, f1


def best_f1(scores, is_tp, num_gt):
    """The score threshold that maximises F1, with its precision, recall and F1, or None when the
    class has no ground truth or no true positive at any threshold.

    The threshold lies halfway between the lowest kept score and the next lower one, so a
    predictor's ``score > threshold`` test keeps exactly the counted predictions; on a tie in F1
    the higher threshold (fewer detections) wins.
    """
    if not num_gt:
        return None
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    s = np.asarray(scores, dtype=float)[order]
    tp = np.cumsum(np.asarray(is_tp, dtype=bool)[order])
    if len(s) == 0 or tp[-1] == 0:
        return None
    # Only the last of equal scores is a possible cut: a threshold keeps all of them or none.
    cuts = np.flatnonzero(np.append(s[1:] != s[:-1], True))
    n = cuts + 1
    precision = tp[cuts] / n
    recall = tp[cuts] / num_gt
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    k = int(np.argmax(f1))  # first maximum = highest threshold
    last = cuts[k]
    lower = s[last + 1] if last + 1 < len(s) else 0.0
    return {
        "threshold": float((s[last] + lower) / 2),
        "precision": float(precision[k]),
        "recall": float(recall[k]),
        "f1": float(f1[k]),
    }
