"""What to label next: images ranked by how unsure the model is about them.

``predict.py --input unlabelled/ --rank uncertainty --top K [--labelme]`` uses it. Each image is
predicted twice, as it is and mirrored left-right (the mirrored result flipped back), keeping
instances down to score 0.05. The two views' instances are paired greedily by mask IoU (same
class, IoU >= 0.1, highest score first). Each instance (a pair, or one seen in one view only)
gets an uncertainty in [0, 1], the mean of

- flip disagreement: 1 - mask IoU x (lower score / higher score) of the pair; 1 when the other
  view does not see it (a model that is sure draws the same object in both views);
- score margin: how close its score (the mean of the pair) is to the class's confidence
  threshold, 1 - |score - t| / max(t, 1 - t): an object the threshold could keep or drop.

The image's uncertainty is the sum over its instances, each weighted by its higher score (a likely
object counts more than a faint one): roughly the number of objects the model would get wrong, so
an image with several doubtful objects ranks above one with a single doubtful object. Images where
the model sees nothing at all rank last; they are the cheapest to label but teach the model little
beyond "background", which random picks already give.
"""

import numpy as np
import torch
from detectron2.structures import Boxes
from pycocotools import mask as mask_util

LOW_SCORE = 0.05
PAIR_IOU = 0.1


def _rles(masks):
    return [mask_util.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]


def flipped(prediction):
    """A prediction of the mirrored image, mapped back onto the original (masks and boxes)."""
    inst = prediction.instances
    w = prediction.image_size[1]
    out = inst[torch.arange(len(inst))]
    out.pred_masks = inst.pred_masks.flip(-1)
    boxes = inst.pred_boxes.tensor.clone()
    boxes[:, 0], boxes[:, 2] = w - inst.pred_boxes.tensor[:, 2], w - inst.pred_boxes.tensor[:, 0]
    out.pred_boxes = Boxes(boxes)
    return out


def instance_uncertainties(view, mirror, thresholds):
    """[(uncertainty, weight, class, score)] for the instances of two views of one image.

    ``view`` / ``mirror``: detectron2 Instances (mirror already flipped back) with pred_masks,
    scores and pred_classes; ``thresholds``: the confidence threshold per class index."""
    sa, ca = view.scores.numpy(), view.pred_classes.numpy()
    sb, cb = mirror.scores.numpy(), mirror.pred_classes.numpy()
    iou = np.zeros((len(sa), len(sb)))
    if len(sa) and len(sb):
        iou = np.asarray(mask_util.iou(_rles(view.pred_masks.numpy()), _rles(mirror.pred_masks.numpy()),
                                       [0] * len(sb))).reshape(len(sa), len(sb))
        iou[ca[:, None] != cb[None, :]] = 0.0
    used_a, used_b, pairs = set(), set(), []
    for i, j in sorted(np.argwhere(iou >= PAIR_IOU).tolist(), key=lambda ij: -max(sa[ij[0]], sb[ij[1]])):
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            pairs.append((i, j))

    def margin(score, cls):
        t = float(thresholds[cls])
        return 1.0 - abs(score - t) / max(t, 1.0 - t)

    out = []
    for i, j in pairs:
        hi, lo = max(sa[i], sb[j]), min(sa[i], sb[j])
        disagreement = 1.0 - iou[i, j] * lo / hi
        score = (sa[i] + sb[j]) / 2
        out.append((0.5 * disagreement + 0.5 * margin(score, ca[i]), float(hi), int(ca[i]), float(score)))
    for scores, classes, used in ((sa, ca, used_a), (sb, cb, used_b)):
        for k in range(len(scores)):
            if k not in used:
                out.append((0.5 + 0.5 * margin(scores[k], classes[k]), float(scores[k]), int(classes[k]),
                            float(scores[k])))
    return out


def image_uncertainty(predictor, image, thresholds):
    """(uncertainty, details) of one image; ``predictor`` keeps instances down to LOW_SCORE."""
    from segkit.inference.image_io import to_rgb_uint8

    rgb = to_rgb_uint8(image)
    view, mirror = predictor.predict_batch([rgb, np.ascontiguousarray(rgb[:, ::-1])], rgb=True, keep_image=False)
    items = instance_uncertainties(view.instances, flipped(mirror), thresholds)
    total = float(sum(u * w for u, w, _, _ in items))
    confident = sum(s >= thresholds[c] for _, _, c, s in items)
    return total, {"instances": len(items), "confident_instances": int(confident),
                   "max_instance_uncertainty": round(max((u for u, *_ in items), default=0.0), 4)}
