"""Predictions in COCO results format (what pycocotools' ``COCO.loadRes`` and COCOeval read).

One dict per instance: ``image_id``, ``category_id`` (class index + 1: our COCO files number
categories 1..K in class order), ``bbox`` [x, y, w, h], ``score`` and ``segmentation`` as
compressed RLE (``counts`` a string) - detectron2's ``instances_to_coco_json`` with 1-based
categories. U-Net results give one RLE per class present (COCO-stuff results: no bbox/score).
We add ``file_name`` to each entry (pycocotools ignores unknown keys) so a results file can be
read without its image list; :func:`coco_images` is that list, as a minimal COCO file to load
the results against.
"""

import os

import numpy as np

from segkit.data.coco_masks import mask_to_rle
from segkit.modeling.tiling import CroppedMasks


def coco_results(prediction, image_id, file_name=None):
    """COCO results entries for one image's :class:`~segkit.inference.predictor.Prediction`.
    ``file_name`` (default: the base name of the prediction's file) is stored in each entry."""
    if file_name is None and prediction.file_name:
        file_name = os.path.basename(prediction.file_name)
    extra = {"file_name": str(file_name)} if file_name else {}
    if prediction.is_semantic:
        cmap = prediction.class_map()
        return [{"image_id": int(image_id), "category_id": int(c) + 1,
                 "segmentation": mask_to_rle(cmap == c), **extra}
                for c in np.unique(cmap).tolist()]
    inst = prediction.instances
    out = []
    boxes = inst.pred_boxes.tensor.numpy() if inst.has("pred_boxes") else None
    masks = inst.pred_masks.numpy() if inst.has("pred_masks") else None
    for i, (c, s) in enumerate(zip(inst.pred_classes.tolist(), inst.scores.tolist())):
        entry = {"image_id": int(image_id), "category_id": int(c) + 1, "score": round(float(s), 6)}
        if boxes is not None:
            x0, y0, x1, y1 = (float(v) for v in boxes[i])
            entry["bbox"] = [round(x0, 3), round(y0, 3), round(x1 - x0, 3), round(y1 - y0, 3)]
        if isinstance(masks, CroppedMasks):
            entry["segmentation"] = masks.rle(i)  # tiled predictions: no full-image mask needed
        elif masks is not None:
            entry["segmentation"] = mask_to_rle(masks[i])
        entry.update(extra)
        out.append(entry)
    return out


def coco_categories(class_names):
    return [{"id": i + 1, "name": str(n), "supercategory": ""} for i, n in enumerate(class_names)]


def coco_images(images, class_names):
    """A COCO file without annotations: ``images`` is [(image_id, file_name, height, width)]."""
    return {
        "images": [{"id": int(i), "file_name": str(f), "height": int(h), "width": int(w)}
                   for i, f, h, w in images],
        "annotations": [],
        "categories": coco_categories(class_names),
    }
