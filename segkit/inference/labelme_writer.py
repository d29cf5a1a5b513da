"""Predictions as LabelMe annotations, for model-assisted labelling.

A user runs ``predict.py --labelme`` over a folder of new images and then opens it in LabelMe,
correcting polygons instead of drawing them from nothing. The JSON follows LabelMe 5.x (what
LabelMe 5 and 6 open, and what ``labelme2coco.py`` reads):

- one ``polygon`` shape per connected piece of a predicted mask (outer contour from
  ``cv2.findContours``, simplified with ``cv2.approxPolyDP``); an instance in several pieces has
  its pieces share one ``group_id`` (LabelMe's rule: same label + group_id = one instance), a
  one-piece instance has ``group_id`` null; holes are not representable and are filled;
- points use LabelMe's pixel convention ([x, y], pixel centres at integers), in the
  EXIF-rotated frame LabelMe shows;
- ``imagePath`` relative to the JSON file, ``imageData`` null (LabelMe 6's default),
  ``imageHeight``/``imageWidth`` of the rotated image; the score goes into ``description``.

U-Net results: one shape per connected region of each class, except classes named like a
background.
"""

import json
import os

import cv2
import numpy as np

LABELME_VERSION = "5.5.0"
BACKGROUND_NAMES = {"background", "_background_", "__background__", "bg"}


def mask_to_polygons(mask, epsilon=1.0, min_area=10):
    """Outer contours of a binary mask as LabelMe point lists ([[x, y], ...], >= 3 points),
    pieces under ``min_area`` pixels dropped, largest first."""
    m = np.ascontiguousarray(np.asarray(mask, dtype=np.uint8))
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    pieces = []
    for contour in contours:
        # polygon area + half its perimeter in pixels ~ the pixel count of the piece
        if cv2.contourArea(contour) + len(contour) / 2.0 < min_area:
            continue
        approx = cv2.approxPolyDP(contour, epsilon, True) if epsilon > 0 else contour
        approx = approx.reshape(-1, 2)
        if len(approx) < 3 or cv2.contourArea(approx.reshape(-1, 1, 2).astype(np.int32)) <= 0:
            approx = contour.reshape(-1, 2)  # tiny shapes: keep every contour point
            if len(approx) < 3:
                continue
        pieces.append((cv2.contourArea(contour), [[float(x), float(y)] for x, y in approx]))
    pieces.sort(key=lambda p: -p[0])
    return [p[1] for p in pieces]


def _shape(label, points, group_id, description=""):
    return {
        "label": label,
        "points": points,
        "group_id": group_id,
        "description": description,
        "shape_type": "polygon",
        "flags": {},
        "mask": None,
    }


def prediction_to_labelme(prediction, image_path, json_path=None, epsilon=1.0, min_area=10):
    """LabelMe dict for ``prediction`` of the image at ``image_path``; ``imagePath`` is relative
    to ``json_path`` (default: the JSON next to the image)."""
    json_path = json_path or os.path.splitext(image_path)[0] + ".json"
    rel = os.path.relpath(os.path.abspath(image_path), os.path.dirname(os.path.abspath(json_path)))
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
                shapes.append(_shape(name, points, None))
    else:
        inst = prediction.instances
        if inst.has("pred_masks"):
            masks = inst.pred_masks.numpy()
            for i, (c, s) in enumerate(zip(inst.pred_classes.tolist(), inst.scores.tolist())):
                polygons = mask_to_polygons(masks[i], epsilon, min_area)
                group_id = None
                if len(polygons) > 1:
                    group_id, next_group = next_group, next_group + 1
                for points in polygons:
                    shapes.append(_shape(prediction.class_names[c], points, group_id,
                                         f"score {s:.3f} (predicted)"))
    return {
        "version": LABELME_VERSION,
        "flags": {},
        "shapes": shapes,
        "imagePath": rel.replace(os.sep, "/"),
        "imageData": None,
        "imageHeight": int(h),
        "imageWidth": int(w),
    }


def write_labelme(prediction, image_path, overwrite=False, **kwargs):
    """Write ``<image stem>.json`` next to ``image_path``. Returns (json_path, written): an
    existing file is kept (written False) unless ``overwrite``."""
    from segkit.data.atomic import write_text

    json_path = os.path.splitext(os.fspath(image_path))[0] + ".json"
    if os.path.exists(json_path) and not overwrite:
        return json_path, False
    data = prediction_to_labelme(prediction, os.fspath(image_path), json_path, **kwargs)
    write_text(json_path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return json_path, True
