"""COCO annotation dicts (class name, segmentation, area, bbox, iscrowd) built from masks, polygons or
COCO segmentations, with pycocotools: ``area`` and ``bbox`` always come from the rasterised mask,
as detectron2 and COCOeval see it (a source's own values are often missing or wrong)."""

import pycocotools.mask as mask_util

from segkit.data.coco_masks import mask_to_rle, rle_to_json, segmentation_to_rle


def _from_rle(label, rle, segmentation, iscrowd):
    area = float(mask_util.area(rle))
    if area == 0:
        return None
    return {"label": label, "iscrowd": int(bool(iscrowd)), "segmentation": segmentation, "area": area,
            "bbox": [float(v) for v in mask_util.toBbox(rle)]}


def mask_annotation(label, mask, iscrowd=0):
    """Annotation of a boolean HxW mask as one compressed RLE; None when it covers no pixel."""
    segmentation = mask_to_rle(mask)
    height, width = segmentation["size"]
    return _from_rle(label, segmentation_to_rle(segmentation, height, width), segmentation, iscrowd)


def polygon_annotation(label, polygons, width, height, iscrowd=0):
    """Annotation of flat polygons ``[[x0, y0, x1, y1, ...], ...]`` (each >= 3 points) in pixels."""
    polygons = [[float(v) for v in p] for p in polygons]
    rle = segmentation_to_rle(polygons, height, width, raise_errors=True)
    return _from_rle(label, rle, polygons, iscrowd)


def coco_segmentation_annotation(label, segmentation, width, height, iscrowd=0):
    """Annotation from a COCO ``segmentation`` (polygons, compressed or uncompressed RLE).
    Returns ``(annotation or None, reason when None)``."""
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
        if len(polygons) < len(segmentation):
            if not polygons:
                return None, "polygon with fewer than 3 points"
            ann = polygon_annotation(label, polygons, width, height, iscrowd)
            return ann, None if ann else "covers no pixel"  # the short ring alone is dropped
        if not polygons:
            return None, "no segmentation (a box only)"
        try:
            ann = polygon_annotation(label, polygons, width, height, iscrowd)
        except (TypeError, ValueError) as e:
            return None, f"unreadable polygon ({e})"
        return ann, None if ann else "covers no pixel"
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = [int(v) for v in segmentation["size"]]
        if size != [height, width]:
            return None, f"RLE size {size[1]}x{size[0]} differs from the image's {width}x{height}"
        try:
            rle = segmentation_to_rle(dict(segmentation, size=size), height, width, raise_errors=True)
            mask_util.area(rle)  # compressed counts are only checked when decoded
        except Exception as e:  # pycocotools raises bare Exception / TypeError on bad counts
            return None, f"unreadable RLE ({e})"
        ann = _from_rle(label, rle, rle_to_json(rle), iscrowd)
        return ann, None if ann else "covers no pixel"
    return None, "no segmentation (a box only)"
