"""Predictions as LabelMe annotations, for model-assisted labelling.

A user runs ``predict.py --labelme`` over a folder of new images and then opens it in LabelMe,
correcting polygons instead of drawing them from nothing. The JSON follows LabelMe 5.x (what
LabelMe 5 and 6 open, and what ``labelme2coco.py`` reads):

- one ``polygon`` shape per connected piece of a predicted mask (outer contour from
  ``cv2.findContours``, simplified with ``cv2.approxPolyDP``); an instance in several pieces has
  its pieces share one ``group_id`` (LabelMe's rule: same label + group_id = one instance), a
  one-piece instance has ``group_id`` null; holes are not representable and are filled;
- the polygon follows the pixel edges of the mask (see :func:`mask_to_polygons`), in the
  EXIF-rotated frame LabelMe shows, so labelme2coco.py gives back the predicted mask;
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


UPSCALE = 4  # contours are traced on the mask enlarged this many times: outlines within 1/8 px


def mask_to_polygons(mask, epsilon=0.5, min_area=10):
    """Outlines of a binary mask as LabelMe point lists ([[x, y], ...], >= 3 points), one per
    connected piece (holes filled), largest first; pieces under ``min_area`` pixels dropped.

    The outline runs along the pixel edges, pixel (x, y) covering [x, x+1) x [y, y+1) - how
    LabelMe displays images and how pycocotools (labelme2coco.py, detectron2) fills polygons - so
    the polygon converted back to a mask gives the same pixels. (A polygon through the centres of
    the boundary pixels, ``cv2.findContours`` on the mask itself, loses a half-pixel rim when
    filled: a 10 px wide object comes back at IoU ~0.8.) ``epsilon``: cv2.approxPolyDP tolerance
    in pixels."""
    m = np.asarray(mask, dtype=bool)
    ys, xs = np.nonzero(m)
    if len(xs) == 0:
        return []
    x0, y0 = int(xs.min()), int(ys.min())
    crop = np.pad(m[y0:ys.max() + 1, x0:xs.max() + 1], 1).astype(np.uint8)
    big = cv2.resize(crop, None, fx=UPSCALE, fy=UPSCALE, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    pieces = []
    for contour in contours:
        area = cv2.contourArea(contour) / UPSCALE ** 2
        if area < min_area:
            continue
        approx = cv2.approxPolyDP(contour, epsilon * UPSCALE, True) if epsilon > 0 else contour
        if len(approx) < 3:
            approx = contour
        pts = (approx.reshape(-1, 2).astype(np.float64) + 0.5) / UPSCALE + (x0 - 1, y0 - 1)
        pieces.append((area, [[round(float(x), 3), round(float(y), 3)] for x, y in pts]))
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


def prediction_to_labelme(prediction, image_path, json_path=None, epsilon=0.5, min_area=10):
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
