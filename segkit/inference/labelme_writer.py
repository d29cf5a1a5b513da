"""Predictions as LabelMe annotations, for model-assisted labelling.

A user runs ``predict.py --labelme`` over a folder of new images and then opens it in LabelMe,
correcting polygons instead of drawing them from nothing. The JSON follows LabelMe 5.x (what
LabelMe 5 and 6 open, and what ``labelme2coco.py`` reads):

- one ``polygon`` shape per connected piece of a predicted mask (outer contour from
  ``cv2.findContours``, simplified with ``cv2.approxPolyDP``); an instance in several pieces has
  its pieces share one ``group_id`` (LabelMe's rule: same label + group_id = one instance), a
  one-piece instance has ``group_id`` null; holes are not representable and are filled;
- the polygon follows the pixel edges of the mask (see :func:`segkit.data.labelme.mask_to_polygons`), in the
  EXIF-rotated frame LabelMe shows, so labelme2coco.py gives back the predicted mask;
- ``imagePath`` relative to the JSON file, ``imageData`` null (LabelMe 6's default),
  ``imageHeight``/``imageWidth`` of the rotated image; the score goes into ``description``.

U-Net results: one shape per connected region of each class, except classes named like a
background.
"""

import os

import numpy as np

from segkit.data.labelme import labelme_document, labelme_shape, mask_to_polygons, write_labelme_json
from segkit.modeling.tiling import CroppedMasks

BACKGROUND_NAMES = {"background", "_background_", "__background__", "bg"}


def prediction_to_labelme(prediction, image_path, json_path=None, epsilon=0.5, min_area=10):
    """LabelMe dict for ``prediction`` of the image at ``image_path``; ``imagePath`` is relative
    to ``json_path`` (default: the JSON next to the image)."""
    json_path = json_path or os.path.splitext(image_path)[0] + ".json"
    h, w = prediction.image_size
    shapes = []
    next_group = 1
    if prediction.is_semantic:
        cmap = prediction.class_map()
        for c in np.unique(cmap).tolist():
            name = prediction.class_names[c] if c < len(prediction.class_names) else str(c)
            if name.lower() in BACKGROUND_NAMES:
                continue
            for points in mask_to_polygons(cmap == c, epsilon, min_area):
                shapes.append(labelme_shape(name, points))
    else:
        inst = prediction.instances
        if inst.has("pred_masks"):
            masks = inst.pred_masks.numpy()
            for i, (c, s) in enumerate(zip(inst.pred_classes.tolist(), inst.scores.tolist())):
                polygons = _polygons(masks, i, epsilon, min_area)
                group_id = None
                if len(polygons) > 1:
                    group_id, next_group = next_group, next_group + 1
                for points in polygons:
                    shapes.append(labelme_shape(prediction.class_names[c], points, group_id,
                                                description=f"score {s:.3f} (predicted)"))
    return labelme_document(shapes, image_path, json_path, w, h)


def _polygons(masks, i, epsilon, min_area):
    """Polygons of mask ``i``; a tiled prediction's crop is traced alone and shifted into place."""
    if isinstance(masks, CroppedMasks):
        x0, y0, crop = masks.crops[i]
        return [[[round(x + x0, 3), round(y + y0, 3)] for x, y in points]
                for points in mask_to_polygons(crop, epsilon, min_area)]
    return mask_to_polygons(masks[i], epsilon, min_area)


def write_labelme(prediction, image_path, overwrite=False, **kwargs):
    """Write ``<image stem>.json`` next to ``image_path``. Returns (json_path, written): an
    existing file is kept (written False) unless ``overwrite``."""
    json_path = os.path.splitext(os.fspath(image_path))[0] + ".json"
    if os.path.exists(json_path) and not overwrite:
        return json_path, False  # checked first: no prediction is converted for nothing
    data = prediction_to_labelme(prediction, os.fspath(image_path), json_path, **kwargs)
    return json_path, write_labelme_json(json_path, data, overwrite)
