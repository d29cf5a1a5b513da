"""Matching of predictions to ground truth on hand-built rectangles whose IoUs are known."""

import numpy as np
from pycocotools import mask as mask_util

from segkit.evaluation.matching import best_f1, confusion_matrix, f1_curve, match_image

H, W = 100, 100


def rect(x0, y0, x1, y1, cls, score=None, crowd=0, box=None):
    """An instance whose mask is the rectangle [x0, x1) x [y0, y1); ``box`` overrides its bbox."""
    m = np.zeros((H, W), np.uint8, order="F")
    m[y0:y1, x0:x1] = 1
    rle = mask_util.encode(m)
    d = {"category_id": cls, "segmentation": rle, "bbox": box or [x0, y0, x1 - x0, y1 - y0], "iscrowd": crowd}
    if score is not None:
        d["score"] = score
    return d


def test_exact_match_duplicate_miss_and_background_detection():
    gts = [rect(0, 0, 20, 20, 1), rect(50, 50, 70, 70, 1)]
    preds = [
        rect(0, 0, 20, 20, 1, score=0.9),  # tp on gt 0
        rect(1, 0, 20, 20, 1, score=0.8),  # duplicate of gt 0: fp
        rect(80, 0, 95, 15, 1, score=0.7),  # nothing there: fp
    ]
    m = match_image(gts, preds, H, W)
    assert [(p, g) for p, g, _ in m.tp] == [(0, 0)]
    assert m.tp[0][2] == 1.0
    assert sorted(m.fp) == [1, 2]
    assert m.missed == [1]
    assert m.counts() == {"tp": 1, "fp": 2, "missed": 1, "confusions": 0, "poor_masks": 0}
    assert m.errors == 3


def test_greedy_by_score_not_by_input_order():
    gts = [rect(0, 0, 20, 20, 1)]
    preds = [rect(0, 0, 18, 20, 1, score=0.3), rect(0, 0, 20, 20, 1, score=0.95)]
    m = match_image(gts, preds, H, W)
    assert [p for p, _, _ in m.tp] == [1]  # the higher score takes the object
    assert m.fp == [0]


def test_class_confusion_and_confusion_matrix():
    gts = [rect(0, 0, 20, 20, 1), rect(40, 40, 60, 60, 2)]
    preds = [rect(0, 0, 20, 20, 2, score=0.9), rect(40, 40, 60, 60, 2, score=0.8)]
    m = match_image(gts, preds, H, W)
    assert [(p, g) for p, g, _ in m.confusions] == [(0, 0)]
    assert [(p, g) for p, g, _ in m.tp] == [(1, 1)]
    assert not m.fp and not m.missed
    cm = confusion_matrix([(m, gts, preds)], [1, 2])
    # rows: true class 1, 2, background; columns: predicted 1, 2, background
    assert cm.tolist() == [[0, 1, 0], [0, 1, 0], [0, 0, 0]]


def test_right_class_wins_over_confusion_even_at_lower_score():
    gts = [rect(0, 0, 20, 20, 1)]
    preds = [rect(0, 0, 20, 20, 2, score=0.9), rect(0, 0, 20, 20, 1, score=0.5)]
    m = match_image(gts, preds, H, W)
    assert [p for p, _, _ in m.tp] == [1]
    assert m.fp == [0] and not m.confusions


def test_poor_mask_right_box_wrong_outline():
    gts = [rect(0, 0, 40, 40, 1)]
    # mask covers a quarter of the object (IoU 0.25) but the predicted box is the object's box
    preds = [rect(0, 0, 20, 20, 1, score=0.9, box=[0, 0, 40, 40])]
    m = match_image(gts, preds, H, W)
    assert not m.tp and not m.fp and not m.missed
    (p, g, mask_iou, box_iou), = m.poor_masks
    assert (p, g) == (0, 0)
    assert abs(mask_iou - 0.25) < 1e-6 and box_iou == 1.0
    cm = confusion_matrix([(m, gts, preds)], [1])
    assert cm.tolist() == [[0, 1], [1, 0]]  # a miss and a false detection at mask IoU 0.5
    # judged on boxes, the same prediction is a true positive
    assert len(match_image(gts, preds, H, W, iou_type="bbox").tp) == 1


def test_crowd_region_ignores_detections_and_is_never_missed():
    gts = [rect(0, 0, 60, 60, 1, crowd=1)]
    preds = [rect(10, 10, 30, 30, 1, score=0.9), rect(10, 10, 30, 30, 2, score=0.8)]
    m = match_image(gts, preds, H, W)
    assert sorted(m.ignored) == [0, 1]  # inside the crowd: IoU = intersection / prediction area = 1
    assert not m.fp and not m.missed and not m.tp


def test_score_threshold_per_class():
    gts = [rect(0, 0, 20, 20, 1), rect(50, 50, 70, 70, 2)]
    preds = [rect(0, 0, 20, 20, 1, score=0.4), rect(50, 50, 70, 70, 2, score=0.4)]
    m = match_image(gts, preds, H, W, score_thresholds={1: 0.5, 2: 0.3})
    assert m.below_threshold == [0]
    assert [p for p, _, _ in m.tp] == [1]
    assert m.missed == [0]
    m = match_image(gts, preds, H, W, score_thresholds={None: 0.5})
    assert sorted(m.below_threshold) == [0, 1] and sorted(m.missed) == [0, 1]


def test_empty_sides():
    assert match_image([], [], H, W).errors == 0
    m = match_image([rect(0, 0, 10, 10, 1)], [], H, W)
    assert m.missed == [0]
    m = match_image([], [rect(0, 0, 10, 10, 1, score=0.5)], H, W)
    assert m.fp == [0]


def test_polygon_ground_truth():
    gt = {"category_id": 1, "segmentation": [[0, 0, 20, 0, 20, 20, 0, 20]], "bbox": [0, 0, 20, 20], "iscrowd": 0}
    m = match_image([gt], [rect(0, 0, 20, 20, 1, score=0.9)], H, W)
    assert len(m.tp) == 1 and m.tp[0][2] > 0.9


def test_best_f1_threshold_between_scores():
    # 4 objects; scores 0.9 (tp) 0.8 (tp) 0.7 (fp) 0.6 (tp) 0.2 (fp)
    scores = [0.9, 0.8, 0.7, 0.6, 0.2]
    is_tp = [1, 1, 0, 1, 0]
    best = best_f1(scores, is_tp, num_gt=4)
    # cut after 0.8: P 1, R 0.5, F1 .667; after 0.6: P .75, R .75, F1 .75 (best); after 0.2: P .6 R .75
    assert abs(best["f1"] - 0.75) < 1e-9
    assert abs(best["threshold"] - 0.4) < 1e-9
    assert best["precision"] == 0.75 and best["recall"] == 0.75
    p, r, f1 = f1_curve(scores, is_tp, 4, [best["threshold"], 0.85, 0.95])
    assert np.allclose(f1, [0.75, 2 * 0.25 / 1.25, 0.0])
    assert best_f1([], [], 3) is None
    assert best_f1([0.5], [0], 3) is None
    assert best_f1([0.5], [1], 0) is None


def test_best_f1_keeps_or_drops_equal_scores_together():
    best = best_f1([0.5, 0.5, 0.5], [1, 0, 0], num_gt=1)
    assert abs(best["precision"] - 1 / 3) < 1e-9 and best["threshold"] == 0.25
