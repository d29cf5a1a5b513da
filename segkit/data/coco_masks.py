"""COCO ``segmentation`` values (polygons, compressed RLE, uncompressed RLE) -> RLE, mask, geometry.

The one place that knows the three spellings of a COCO mask; every reader (dataset report, semantic
conversion, ground-truth display, export) goes through it. pycocotools does the rasterising, so
results are what detectron2 and COCOeval see.
"""

import numpy as np
from pycocotools import mask as mask_util


def segmentation_to_rle(segmentation, height, width, raise_errors=False):
    """Compressed RLE dict (``counts`` bytes) of a COCO segmentation, or None if unusable.

    Polygons with fewer than 3 points (or an odd number of coordinates) are dropped, as
    detectron2's ``load_coco_json`` drops them. ``raise_errors``: pycocotools' exception on bad
    input comes through (for a reason to report) instead of None. Compressed counts are not
    decoded here, so bad ones only fail when the RLE is used."""
    try:
        if isinstance(segmentation, list):
            polys = [p for p in segmentation if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
            if not polys:
                return None
            return mask_util.merge(mask_util.frPyObjects(polys, height, width))
        if isinstance(segmentation, dict) and "counts" in segmentation:
            if isinstance(segmentation["counts"], list):  # uncompressed RLE (CVAT crowd masks)
                return mask_util.frPyObjects(segmentation, height, width)
            counts = segmentation["counts"]
            return {"size": list(segmentation["size"]),
                    "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    except Exception:  # pycocotools raises bare Exception / TypeError / ValueError on bad input
        if raise_errors:
            raise
        return None
    return None


def _dropped_polygons(segmentation):
    """In words, each polygon of a polygon segmentation that :func:`segmentation_to_rle` drops."""
    if not isinstance(segmentation, list):
        return []
    n = len(segmentation)
    dropped = []
    for k, p in enumerate(segmentation, 1):
        if not isinstance(p, list):
            dropped.append(f"polygon {k} of {n} is not a list of coordinates")
        elif len(p) % 2:  # pycocotools would quietly read floor(len / 2) points of it
            dropped.append(f"polygon {k} of {n} has an odd number of coordinates ({len(p)})")
        elif len(p) < 6:
            dropped.append(f"polygon {k} of {n} has fewer than 3 points ({len(p) // 2})")
    return dropped


def decode_segmentation(segmentation, height, width):
    """``(mask, problems)``: the HxW bool mask of a COCO segmentation (None if unusable or of
    another size) and, in words, what was left out of it or why there is none. For readers that
    must say what they did with a user's label rather than drop part of it unseen."""
    problems = _dropped_polygons(segmentation)
    rle = segmentation_to_rle(segmentation, height, width)
    if rle is None:
        if isinstance(segmentation, list):
            problems.append("no polygon with 3 or more points" if segmentation else "no polygon")
        elif isinstance(segmentation, dict) and "counts" in segmentation:
            problems.append("unreadable RLE")
        else:
            problems.append("no segmentation (a box only)")
        return None, problems
    try:
        mask = mask_util.decode(rle).astype(bool)
    except Exception as e:  # compressed counts are only checked when decoded
        return None, problems + [f"unreadable RLE ({e})"]
    if mask.shape != (height, width):
        return None, problems + [f"RLE size {mask.shape[1]}x{mask.shape[0]} differs from the image's {width}x{height}"]
    return mask, problems


def segmentation_to_mask(segmentation, height, width):
    """HxW bool mask of a COCO segmentation; None if unusable or of another size."""
    return decode_segmentation(segmentation, height, width)[0]


def mask_geometry(segmentation, height, width):
    """(area in px, [x, y, w, h]) of a COCO segmentation (polygons or RLE), or None if unusable."""
    rle = segmentation_to_rle(segmentation, height, width)
    if rle is None:
        return None
    try:
        return float(mask_util.area(rle)), [float(v) for v in mask_util.toBbox(rle)]
    except Exception:
        return None


def rle_to_json(rle):
    """A pycocotools RLE as COCO JSON holds it (``counts`` a str, ``size`` ints)."""
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def mask_to_rle(mask):
    """HxW bool mask -> compressed RLE as written in COCO JSON (``counts`` a str)."""
    return rle_to_json(mask_util.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8))))
