"""COCO instance JSON as Label Studio, CVAT (COCO 1.0) and Roboflow export it.

Layouts found (see ../shared/detectron2-notes.md, "Annotation exports"):

- Label Studio: ``result.json`` beside ``images/``; ids from 0; ``file_name`` like
  ``images\\<hash>-<name>.jpg`` (Windows separator) or a server path / URL.
- CVAT COCO 1.0: ``annotations/instances_default.json`` + ``images/`` (newer: ``images/default/``);
  crowd masks as uncompressed RLE.
- Roboflow: ``train/ valid/ test/``, each with ``_annotations.coco.json`` beside its images;
  category 0 a super-category no annotation uses; bbox values as strings; ids restart per file.
- Plain COCO: ``annotations/instances_<split>.json`` + an image folder.

Rules: categories are the source's categories used by at least one annotation (unused ones, such as
Roboflow's super-category, are dropped), merged by name across files, in the order of their source
id; ``area``/``bbox`` are recomputed from the mask; ``iscrowd`` 1 stays crowd. An image file is
looked up from ``file_name`` (backslashes, folders, URLs and server paths allowed) beside the JSON,
in ``images/`` (``images/default/``) and in the split folder, then by its base name; one that is not
found is reported. The split of a file comes from its name or folder (``train``, ``val``, ``valid``,
``test``), none for ``result.json`` / ``instances_default.json``.
"""

import json
import os
import re
from urllib.parse import urlparse

from segkit.data.folder_writer import SOURCE_SPLITS, SourceImage
from segkit.data.formats import Detection, ReadResult, final_categories, keep_reported
from segkit.data.formats.annotation import coco_segmentation_annotation
from segkit.data.file_names import is_inside
from segkit.data.formats.images import is_hidden, placed_name, posix_rel, sized_image
from segkit.data.labelme import read_json_file

NAME = "coco"
_HEAD_BYTES = 1 << 16
_PARSE_LIMIT = 64 << 20  # detection parses JSON files up to this size
_COCO_NAMES = ("result.json", "_annotations.coco.json", "instances_default.json", "annotations.json")


def _json_files(src_dir, exclude):
    """JSON files at most two folders deep (COCO exports never nest deeper), hidden ones skipped."""
    found = []
    excluded = {os.path.abspath(e) for e in exclude}
    for dirpath, dirnames, filenames in os.walk(src_dir):
        depth = os.path.relpath(dirpath, src_dir).count(os.sep) + (dirpath != src_dir)
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d) and depth < 2
                             and os.path.abspath(os.path.join(dirpath, d)) not in excluded)
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(".json") and not is_hidden(f)]
    return sorted(found)


def _looks_like_coco(path):
    """A JSON object with images/annotations/categories lists (big files: judged by their first bytes)."""
    try:
        if os.path.getsize(path) > _PARSE_LIMIT:
            with open(path, "rb") as f:
                head = f.read(_HEAD_BYTES).decode("utf-8", "replace")
            return '"images"' in head and '"shapes"' not in head
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # unreadable: reported when COCO is read, a COCO name alone counts for detection
    return isinstance(data, dict) and all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories"))


def coco_files(src_dir, exclude=(), unreadable=False):
    """The COCO files of the folder; with ``unreadable`` also every JSON that cannot be parsed."""
    found = []
    for path in _json_files(src_dir, exclude):
        verdict = _looks_like_coco(path)
        if verdict or (verdict is None and (unreadable or path.lower().endswith(_COCO_NAMES))):
            found.append(path)
    return found


def detect(src_dir):
    files = coco_files(src_dir)
    if not files:
        return None
    rels = [posix_rel(p, src_dir) for p in files]
    return Detection(f"COCO JSON ({', '.join(rels[:3])}{', ...' if len(rels) > 3 else ''})")


def split_of(path, src_dir):
    """The split a COCO file holds, from its name (instances_val2017.json) or folder (valid/)."""
    rel = posix_rel(path, src_dir).lower()
    parts = rel.split("/")
    for part in [os.path.splitext(parts[-1])[0]] + parts[-2::-1]:
        for token in re.findall(r"[a-z]+", part):
            if token in SOURCE_SPLITS:
                return SOURCE_SPLITS[token]
    return None


def _candidates(file_name, json_dir, src_dir, split):
    name = file_name.replace("\\", "/")
    if "://" in name:
        name = urlparse(name).path
    name = name.lstrip("/") if name.startswith("/") else name
    base = os.path.basename(name)
    dirs = [json_dir, os.path.dirname(json_dir), src_dir, os.path.join(src_dir, "images"),
            os.path.join(src_dir, "images", "default"), os.path.join(json_dir, "images")]
    if split:
        dirs += [os.path.join(src_dir, split), os.path.join(src_dir, "images", split)]
    seen = []
    for d in dirs:
        for n in (name, base):
            p = os.path.normpath(os.path.join(d, n))
            if p not in seen:
                seen.append(p)
    return seen


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def read(src_dir, log, options):
    src_dir = os.path.abspath(src_dir)
    files = coco_files(src_dir, options.exclude, unreadable=True)
    result = ReadResult(num_files=len(files))
    category_order = {}  # name -> (source id of first occurrence, file index)
    used = set()
    images, seen_files = [], {}
    for file_index, path in enumerate(files):
        rel_json = posix_rel(path, src_dir)
        readable, data = read_json_file(path, log, rel_json)
        if not readable:
            continue
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
            log.problem(rel_json, "not a COCO file", "not a COCO instances file (needs images, annotations, categories lists)")
            continue
        cats = {}
        for c in data["categories"]:
            if isinstance(c, dict) and "id" in c and isinstance(c.get("name"), str):
                cats[c["id"]] = c["name"]
                category_order.setdefault(c["name"], (_number(c["id"]) or 0, file_index))
        anns_by_image = {}
        for k, a in enumerate(data["annotations"]):
            if not isinstance(a, dict) or "image_id" not in a:
                log.problem(rel_json, "malformed annotation", f"annotations[{k}]: not an object with an image_id")
                continue
            anns_by_image.setdefault(a["image_id"], []).append(a)
        listed = {im.get("id") for im in data["images"] if isinstance(im, dict)}
        for image_id in anns_by_image.keys() - listed:
            log.problem(rel_json, "annotation of an unlisted image",
                        f"{len(anns_by_image[image_id])} annotation(s) of image_id {image_id!r}, which images does not list, skipped")
        split = split_of(path, src_dir)
        json_dir = os.path.dirname(path)
        for k, im in enumerate(data["images"]):
            if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
                log.problem(rel_json, "malformed image entry", f"images[{k}]: no id or file_name")
                continue
            existing = [p for p in _candidates(im["file_name"], json_dir, src_dir, split) if os.path.isfile(p)]
            found = next((p for p in existing if is_inside(p, src_dir)), None)
            if found is None:
                if existing:
                    log.problem(rel_json, "path escapes the folder",
                                f"image {im['file_name']!r} lies outside the source folder, skipped")
                else:
                    log.problem(rel_json, "missing image", f"image {im['file_name']!r} not found")
                continue
            real = os.path.realpath(found)
            if real in seen_files:
                log.problem(rel_json, "image listed twice", f"image {im['file_name']!r} is already listed by {seen_files[real]}, skipped")
                continue
            seen_files[real] = rel_json
            size = sized_image(found, log, rel_json)
            if size is None:
                continue
            width, height = size
            if (im.get("width"), im.get("height")) not in ((None, None), (width, height)) and \
                    (_number(im.get("width")), _number(im.get("height"))) != (width, height):
                log.problem(rel_json, "image size differs from JSON",
                            f"image {im['file_name']!r}: JSON says {im.get('width')}x{im.get('height')}, "
                            f"image is {width}x{height} (after EXIF orientation), skipped")
                continue
            annotations = []
            for a in anns_by_image.get(im["id"], []):
                where = f"annotation {a.get('id')} of image {im['file_name']!r}"
                name = cats.get(a.get("category_id"))
                if name is None:
                    log.problem(rel_json, "unknown category id", f"{where}: category_id {a.get('category_id')!r} is not declared")
                    continue
                if not keep_reported(name, options, log, rel_json, where):
                    continue
                ann, reason = coco_segmentation_annotation(name, a.get("segmentation"), width, height, a.get("iscrowd", 0))
                if ann is None:
                    log.problem(rel_json, reason, f"{where}: {reason}, skipped")
                    continue
                if not ann["iscrowd"]:
                    used.add(name)
                annotations.append(ann)
            rel_image = posix_rel(found, src_dir)
            images.append(SourceImage(source_file=rel_json, image_name=placed_name(rel_image), width=width, height=height,
                                      image_file=found, annotations=annotations, split=split))
    unused = [n for n in category_order if n not in used]
    if unused and options.labels is None:
        log.skip("categories no annotation uses (dropped)", len(unused))
    ordered = sorted((n for n in category_order if n in used), key=lambda n: category_order[n][::-1])
    result.categories = final_categories(ordered, options)
    kept = set(result.categories)
    for image in images:  # crowd regions of a dropped category go with it
        image.annotations = [a for a in image.annotations if a["label"] in kept]
    result.images = images
    return result
