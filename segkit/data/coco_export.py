"""The way back: a data folder (or any COCO instances file) -> a LabelMe folder or an Ultralytics
YOLO-seg dataset, so an existing COCO set can be corrected in LabelMe and converted back with
``labelme2coco.py``, or trained elsewhere.

``python export_data.py SRC --to labelme|yolo --output DIR`` runs :func:`main`.

LabelMe folder (``export_labelme``)::

    DIR/labels.txt          __ignore__, _background_, then the classes in category-id order
    DIR/<file_name>         the image (copy, or symlink with --symlink), sub-folders kept
    DIR/<file_name stem>.json
                            LabelMe 5.x document next to it

- Polygon annotations are written as they are: one ``polygon`` shape per polygon, the polygons of
  one annotation sharing a ``group_id`` (LabelMe's rule: same label + group_id = one instance).
- RLE annotations become polygons when the polygons give the mask back (IoU >= 0.995 after
  pycocotools fills them), else one LabelMe ``mask`` shape holding the exact mask (holes, thin
  parts): ``labelme2coco.py`` reads both back.
- Crowd annotations become ``__ignore__`` regions (labelme2coco turns those into crowd regions of
  every class); copies of one region in several classes are written once.
- An existing JSON is never overwritten (corrections already made are kept) unless ``--overwrite``.

YOLO-seg (``export_yolo``)::

    DIR/data.yaml           train/val image folders, nc, names (class index = category-id order)
    DIR/images/{train,val}/<name>
    DIR/labels/{train,val}/<stem>.txt
                            one line per instance: class x1 y1 x2 y2 ... (normalised to 0..1)

Holes are filled (YOLO polygons cannot hold them). A data folder's ``train.json``/``val.json`` give
the splits; a single COCO file goes to ``train``
(and ``data.yaml`` names it as val too). YOLO has no crowd regions: they are skipped and counted.
An instance in several pieces is written as one polygon joining the pieces by zero-width bridges
(what Ultralytics' own COCO converter does), so the traced area stays the same.

Bad input is reported as one line ``FILE: reason`` and the run goes on; inputs are never modified.
"""

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import PureWindowsPath

import numpy as np

from segkit.data.atomic import add_place_mode_options, place_file, write_text
from segkit.data.coco_masks import segmentation_to_mask
from segkit.data.file_names import unique_name
from segkit.data.labelme import (
    BACKGROUND_LABEL,
    IGNORE_LABEL,
    ConversionLog,
    labelme_document,
    labelme_mask_shape,
    labelme_shape,
    mask_to_polygons,
    read_json_file,
    write_labelme_json,
)

POLYGON_MIN_IOU = 0.995  # an RLE mask is written as polygons only when they give it back this well
SPLIT_FILES = ("train", "val")


class ExportResult:
    def __init__(self, log):
        self.log = log
        self.images = 0
        self.shapes = Counter()  # shape kind -> count
        self.kept_json = 0  # existing LabelMe files left alone
        self.output_files = []

    @property
    def problems(self):
        return self.log.problems


def _read_coco(path, log):
    readable, coco = read_json_file(path, log, path, "COCO file")
    if not readable:
        return None
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list) for k in ("images", "categories")):
        log.problem(path, "not a COCO instances file", "not a COCO instances file (no 'images'/'categories' list)")
        return None
    coco.setdefault("annotations", [])
    return coco


def coco_sources(src, image_root=None):
    """[(split, COCO path)], image root for ``src``: a data folder (``train.json`` + ``val.json``,
    images in ``images/``) or one COCO file (split "train"; images in ``images/`` beside it when
    that folder exists, else beside the file)."""
    if os.path.isdir(src):
        files = [(split, os.path.join(src, f"{split}.json")) for split in SPLIT_FILES]
        files = [(s, p) for s, p in files if os.path.isfile(p)]
        if not files:
            raise FileNotFoundError(f"{src}: no train.json or val.json (is it a data folder?)")
        return files, image_root or os.path.join(src, "images")
    if not os.path.isfile(src):
        raise FileNotFoundError(f"{src}: no such file or folder")
    folder = os.path.dirname(os.path.abspath(src))
    default_root = os.path.join(folder, "images") if os.path.isdir(os.path.join(folder, "images")) else folder
    return [("train", src)], image_root or default_root


def _safe_relative(file_name):
    """``file_name`` as a clean relative POSIX path, or None when it leaves its folder / is a URL."""
    if not isinstance(file_name, str) or not file_name or "://" in file_name:
        return None
    rel = os.path.normpath(PureWindowsPath(file_name).as_posix()).replace(os.sep, "/")
    if os.path.isabs(rel) or rel == ".." or rel.startswith("../") or PureWindowsPath(file_name).drive:
        return None
    return rel


def _category_names(coco, where, log):
    cats = sorted((c for c in coco["categories"] if isinstance(c, dict) and "id" in c), key=lambda c: c["id"])
    names = {}
    for c in cats:
        name = str(c.get("name", c["id"]))
        if name in names.values() or name in (IGNORE_LABEL, BACKGROUND_LABEL):
            log.problem(where, "unusable category name", f"category {c['id']} name {name!r} is reserved or repeated")
            continue
        names[c["id"]] = name
    return names


def _polygons_of(segmentation):
    """Valid polygons of a polygon segmentation, as [[x, y], ...] point lists; None for RLE."""
    if not isinstance(segmentation, list):
        return None
    polys = [p for p in segmentation if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
    return [[[float(p[i]), float(p[i + 1])] for i in range(0, len(p), 2)] for p in polys]


def _mask_iou(a, b):
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def polygons_of_mask(mask, min_iou=POLYGON_MIN_IOU):
    """Pixel-edge polygons that give ``mask`` back with IoU >= ``min_iou`` when pycocotools fills
    them, or None (holes, one-pixel threads)."""
    polygons = mask_to_polygons(mask, epsilon=0.5, min_area=0)
    if not polygons:
        return None
    filled = segmentation_to_mask([[c for pt in p for c in pt] for p in polygons], *mask.shape)
    return polygons if _mask_iou(filled, mask) >= min_iou else None


def _image_annotations(coco):
    by_image = {}
    for ann in coco["annotations"]:
        if isinstance(ann, dict):
            by_image.setdefault(ann.get("image_id"), []).append(ann)
    return by_image


def _progress(items, desc, enabled):
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="image", disable=not enabled or len(items) < 100, file=sys.stderr)


def _images_of(sources, log):
    """[(split, coco_path, image entry, its annotations, category names)] over all sources, the
    first listing of an image (same file_name) winning."""
    entries, seen = [], set()
    for split, path in sources:
        coco = _read_coco(path, log)
        if coco is None:
            continue
        names = _category_names(coco, path, log)
        anns = _image_annotations(coco)
        for image in coco["images"]:
            if not isinstance(image, dict) or "file_name" not in image or "id" not in image:
                log.problem(path, "malformed image entry", f"image entry without id/file_name: {str(image)[:80]}")
                continue
            if image["file_name"] in seen:
                continue
            seen.add(image["file_name"])
            entries.append((split, path, image, anns.get(image["id"], []), names))
    return entries


def _locate(image, coco_path, image_root, log):
    """(source image path, relative output name) or None after reporting why."""
    where = f"{coco_path}: image {image['id']} ({image['file_name']!r})"
    rel = _safe_relative(image["file_name"])
    if rel is None:
        log.problem(where, "unusable file_name", "file_name is a URL or leaves the image folder")
        return None
    src = os.path.join(image_root, rel)
    if not os.path.isfile(src):
        log.problem(where, "missing image", f"image not found under {image_root}")
        return None
    return src, rel


def _size(image, where, log):
    try:
        h, w = int(image["height"]), int(image["width"])
    except (KeyError, TypeError, ValueError):
        log.problem(where, "image without width/height", "no usable width/height")
        return None
    return h, w


def _class_names(entries):
    """Class names of all sources, in first-seen order."""
    classes = []
    for *_, names in entries:
        classes += [n for n in names.values() if n not in classes]
    return classes


def _found_images(entries, image_root, log, progress):
    """``(split, coco_path, image source path, image path relative to the root, (h, w), anns, names)``
    of each image that is found and has a size; the others are reported."""
    for split, coco_path, image, anns, names in _progress(entries, "export", progress):
        located = _locate(image, coco_path, image_root, log)
        size = located and _size(image, f"{coco_path}: image {image['id']}", log)
        if size:
            yield split, coco_path, *located, size, anns, names


def _named_annotations(anns, names, coco_path, log):
    """``(where, class name, annotation)`` of each annotation whose category is declared; the others are reported."""
    for ann in anns:
        where = f"{coco_path}: annotation {ann.get('id')}"
        label = names.get(ann.get("category_id"))
        if label is None:
            log.problem(where, "unknown category", f"category_id {ann.get('category_id')!r} not in categories")
            continue
        yield where, label, ann


def export_labelme(sources, image_root, output_dir, mode="copy", overwrite=False, progress=True, echo=None):
    """COCO files -> LabelMe folder (see the module docstring); returns an :class:`ExportResult`."""
    log = ConversionLog(echo=echo)
    result = ExportResult(log)
    entries = _images_of(sources, log)
    classes = _class_names(entries)
    write_text(os.path.join(output_dir, "labels.txt"), "\n".join([IGNORE_LABEL, BACKGROUND_LABEL, *classes]) + "\n")
    used = set()
    for _, coco_path, src, rel, (h, w), anns, names in _found_images(entries, image_root, log, progress):
        stem, ext = os.path.splitext(rel)
        rel = unique_name(stem, used, ext)  # two images may share a stem: their JSONs must not
        image_dest = os.path.join(output_dir, rel)
        json_path = os.path.splitext(image_dest)[0] + ".json"
        shapes, crowd_seen, next_group = [], set(), 1
        for where, label, ann in _named_annotations(anns, names, coco_path, log):
            segmentation = ann.get("segmentation")
            if ann.get("iscrowd"):
                key = json.dumps(segmentation, sort_keys=True)
                if key in crowd_seen:
                    continue
                crowd_seen.add(key)
                label = IGNORE_LABEL
            polygons = _polygons_of(segmentation)
            mask = None
            if polygons is None:
                mask = segmentation_to_mask(segmentation, h, w)
                if mask is None or not mask.any():
                    log.problem(where, "unusable segmentation", "segmentation is neither polygons nor an RLE of the image size")
                    continue
                polygons = polygons_of_mask(mask)
            if not polygons and mask is None:
                log.problem(where, "unusable segmentation", "no polygon with 3 or more points")
                continue
            if polygons:
                group_id = None
                if len(polygons) > 1:
                    group_id, next_group = next_group, next_group + 1
                shapes += [labelme_shape(label, points, group_id) for points in polygons]
                result.shapes["polygon"] += len(polygons)
            else:
                shapes.append(labelme_mask_shape(label, mask))
                result.shapes["mask"] += 1
        place_file(src, image_dest, mode)
        if write_labelme_json(json_path, labelme_document(shapes, image_dest, json_path, w, h), overwrite):
            result.output_files.append(json_path)
        else:
            result.kept_json += 1
        result.images += 1
    return result


def merge_pieces(pieces):
    """One polygon through every piece: each next piece hangs on the polygon by a zero-width bridge
    between their closest vertices (as Ultralytics' converter does), so the filled area is the
    same apart from the bridge line."""
    merged = [list(p) for p in pieces[0]]
    for piece in pieces[1:]:
        a = np.asarray(merged)
        b = np.asarray(piece)
        d = ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2)
        i, j = np.unravel_index(int(np.argmin(d)), d.shape)
        loop = [list(p) for p in piece[j:]] + [list(p) for p in piece[: j + 1]]
        merged = merged[: i + 1] + loop + merged[i:]
    return merged


def export_yolo(sources, image_root, output_dir, mode="copy", progress=True, echo=None):
    """COCO files -> Ultralytics YOLO-seg dataset (see the module docstring); returns an :class:`ExportResult`."""
    import yaml

    log = ConversionLog(echo=echo)
    result = ExportResult(log)
    entries = _images_of(sources, log)
    classes = _class_names(entries)
    index = {name: k for k, name in enumerate(classes)}
    used = {split: set() for split in SPLIT_FILES}
    splits = set()
    for split, coco_path, src, rel, (h, w), anns, names in _found_images(entries, image_root, log, progress):
        stem, ext = os.path.splitext(os.path.basename(rel))
        stem = unique_name(stem, used[split])  # label files go by stem: stems must differ
        lines = []
        for where, label, ann in _named_annotations(anns, names, coco_path, log):
            if ann.get("iscrowd"):
                log.skip("crowd regions (YOLO has none)")
                continue
            pieces = _polygons_of(ann.get("segmentation"))
            if pieces is None:
                mask = segmentation_to_mask(ann.get("segmentation"), h, w)
                pieces = mask_to_polygons(mask, epsilon=0.5, min_area=0) if mask is not None else []
            if not pieces:
                log.problem(where, "unusable segmentation", "no polygon with 3 or more points")
                continue
            points = merge_pieces(pieces) if len(pieces) > 1 else pieces[0]
            coords = " ".join(f"{min(max(x / w, 0.0), 1.0):.6f} {min(max(y / h, 0.0), 1.0):.6f}" for x, y in points)
            lines.append(f"{index[label]} {coords}")
        place_file(src, os.path.join(output_dir, "images", split, stem + ext), mode)
        label_path = os.path.join(output_dir, "labels", split, stem + ".txt")
        write_text(label_path, "".join(line + "\n" for line in lines))
        result.output_files.append(label_path)
        result.shapes["polygon"] += len(lines)
        result.images += 1
        splits.add(split)
    data = {"train": "images/train", "val": "images/val" if "val" in splits else "images/train",
            "nc": len(classes), "names": classes}
    write_text(os.path.join(output_dir, "data.yaml"), yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return result


def build_parser():
    p = argparse.ArgumentParser(
        prog="export_data.py",
        description="Export a data folder (train.json/val.json + images/) or any COCO instances file to a "
                    "LabelMe folder (edit in LabelMe, convert back with labelme2coco.py) or to Ultralytics YOLO-seg.")
    p.add_argument("src", metavar="SRC", help="data folder, or a COCO instances JSON file")
    p.add_argument("--to", choices=("labelme", "yolo"), required=True, help="output format")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--image-root", help="folder the COCO file_names are relative to "
                                        "(default: SRC/images, or images/ beside the COCO file, or its folder)")
    add_place_mode_options(p)
    p.add_argument("--overwrite", action="store_true", help="LabelMe: replace existing JSON files (default: keep them)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        sources, image_root = coco_sources(args.src, args.image_root)
    except FileNotFoundError as e:
        parser.error(str(e))
    if os.path.abspath(args.output) in {os.path.abspath(args.src), os.path.abspath(image_root)}:
        parser.error("--output must be a new folder, not SRC or its images (inputs are never modified)")
    from tqdm import tqdm

    echo = lambda line: tqdm.write(line, file=sys.stderr)  # noqa: E731
    if args.to == "labelme":
        result = export_labelme(sources, image_root, args.output, args.mode, args.overwrite, not args.quiet, echo)
    else:
        result = export_yolo(sources, image_root, args.output, args.mode, not args.quiet, echo)
    shapes = ", ".join(f"{n} {kind}" for kind, n in sorted(result.shapes.items())) or "no shapes"
    print(f"exported {result.images} image(s) ({shapes}) to {args.output} as {args.to}")
    if result.kept_json:
        print(f"kept {result.kept_json} existing LabelMe file(s) (--overwrite replaces them)")
    for key, n in sorted(result.log.skipped.items()):
        print(f"  {key}: {n}")
    if result.problems:
        print(f"{len(result.problems)} problem(s), one line each above (FILE: reason)")
    return 0 if result.images else 1
