"""Binary masks: a folder of images plus mask PNGs, in one of two shapes.

- One PNG per object: ``masks/<class>/<image stem>_<k>.png`` (class from the sub-folder), or flat
  ``masks/<image stem>_<k>.png`` with ``classes.json`` mapping each mask file (relative to
  ``masks/``) to its class; flat masks without a mapping are all the class ``object``.
- Instance-id PNGs: ``instances/<image stem>.png`` whose pixel value is an instance id (0 = none),
  with the class of each id in ``instances/<image stem>.json`` (``{"1": "cat", "2": "dog"}``).

Images are ``images/<stem>.<any image extension>`` (sub-folders allowed, matched by relative stem).
A mask pixel is set when it is above half of its range (0/255 masks) or non-zero (0/1 masks).
"""

import json
import os
import re

import numpy as np
from PIL import Image

from segkit.data.folder_writer import SourceImage
from segkit.data.formats import Detection, ReadResult, final_categories, keep_class
from segkit.data.formats.annotation import mask_annotation
from segkit.data.formats.images import is_hidden, list_images, placed_name, posix_rel, sized_image

NAME = "masks"
DEFAULT_CLASS = "object"
_OBJECT_NAME = re.compile(r"^(?P<stem>.+)_(?P<k>\d+)$")


def _pngs(folder):
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(".png") and not is_hidden(f)]
    return sorted(found)


def _object_stem(rel):
    """The image stem a mask path (relative to masks/) names: ``<class>/<stem>_<k>.png`` or
    ``<stem>_<k>.png``; None when the name has no ``_<k>``."""
    folder, base = os.path.split(rel)
    match = _OBJECT_NAME.match(os.path.splitext(base)[0])
    if match is None:
        return None
    return "/".join(folder.split("/")[1:] + [match["stem"]]) if folder else match["stem"]


def detect(src_dir):
    # images/ + masks/ (or instances/) are generic names (Open Images unzips its masks into masks/):
    # evidence of this format only when the PNGs name the images beside them.
    images_dir = os.path.join(src_dir, "images")
    if not os.path.isdir(images_dir):
        return None
    stems = {os.path.splitext(posix_rel(p, images_dir))[0] for p in list_images(images_dir)}
    instances = os.path.join(src_dir, "instances")
    if os.path.isdir(instances) and any(os.path.splitext(posix_rel(p, instances))[0] in stems for p in _pngs(instances)):
        return Detection("binary masks (images/ + instance-id PNGs in instances/)", marker=False)
    masks = os.path.join(src_dir, "masks")
    if os.path.isdir(masks):
        named = next((p for p in _pngs(masks) if _object_stem(posix_rel(p, masks)) in stems), None)
        if named:
            return Detection(f"binary masks (images/ + one PNG per object in masks/, e.g. {posix_rel(named, src_dir)})",
                             marker=False)
    return None


def _binary(path):
    with Image.open(path) as im:
        array = np.asarray(im.convert("L") if im.mode not in ("L", "1", "P", "I", "I;16") else im)
    return array > (0 if array.max() <= 1 else (255 if array.dtype == np.uint8 else array.max()) // 2)


def _load(path, log, rel, size):
    try:
        with Image.open(path) as im:
            array = np.asarray(im)
    except Exception as e:  # OSError, PIL.UnidentifiedImageError
        log.problem(rel, "unreadable mask", f"unreadable mask ({type(e).__name__}: {e})")
        return None
    if array.shape[:2] != (size[1], size[0]):
        log.problem(rel, "mask size differs from image",
                    f"mask is {array.shape[1]}x{array.shape[0]}, image is {size[0]}x{size[1]}, skipped")
        return None
    return array


def _read_json(path, log, rel):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        log.problem(rel, "unreadable JSON", f"unreadable JSON ({e})")
        return None
    if not isinstance(data, dict):
        log.problem(rel, "unreadable JSON", "expected an object {\"<key>\": \"<class>\"}")
        return None
    return {str(k): str(v) for k, v in data.items()}


def read(src_dir, log, options):
    src_dir = os.path.abspath(src_dir)
    images_dir = os.path.join(src_dir, "images")
    result = ReadResult()
    by_stem = {os.path.splitext(posix_rel(p, images_dir))[0]: p for p in list_images(images_dir)}
    per_image = {stem: [] for stem in by_stem}  # stem -> [(mask file, class or None for instance PNGs)]
    instances_dir = os.path.join(src_dir, "instances")
    masks_dir = os.path.join(src_dir, "masks")
    if os.path.isdir(instances_dir):
        for path in _pngs(instances_dir):
            stem = os.path.splitext(posix_rel(path, instances_dir))[0]
            if stem not in per_image:
                log.problem(posix_rel(path, src_dir), "missing image", f"no image images/{stem}.* for this mask, skipped")
                continue
            per_image[stem].append((path, None))
    else:
        mapping_file = os.path.join(src_dir, "classes.json")
        mapping = _read_json(mapping_file, log, "classes.json") if os.path.isfile(mapping_file) else None
        for path in _pngs(masks_dir):
            rel = posix_rel(path, masks_dir)
            folder = os.path.dirname(rel)
            stem = _object_stem(rel)
            if stem is None:
                log.problem(posix_rel(path, src_dir), "mask name", "not named <image stem>_<k>.png, skipped")
                continue
            if folder:
                name = folder.split("/")[0]
            elif mapping is not None:
                name = mapping.get(rel)
                if name is None:
                    log.problem(posix_rel(path, src_dir), "no class", "not listed in classes.json, skipped")
                    continue
            else:
                name = DEFAULT_CLASS
            if stem not in per_image:
                log.problem(posix_rel(path, src_dir), "missing image", f"no image images/{stem}.* for this mask, skipped")
                continue
            per_image[stem].append((path, name))
    used = []
    for stem, image_path in sorted(by_stem.items()):
        rel = posix_rel(image_path, src_dir)
        size = sized_image(image_path, log, rel)
        if size is None:
            continue
        annotations = []
        for mask_path, name in per_image[stem]:
            mask_rel = posix_rel(mask_path, src_dir)
            result.num_files += 1
            array = _load(mask_path, log, mask_rel, size)
            if array is None:
                continue
            if name is None:  # an instance-id PNG and its sidecar classes
                sidecar = os.path.splitext(mask_path)[0] + ".json"
                classes = _read_json(sidecar, log, posix_rel(sidecar, src_dir)) if os.path.isfile(sidecar) else None
                if classes is None:
                    log.problem(mask_rel, "no class", f"no {os.path.basename(sidecar)} with the class of each id, skipped")
                    continue
                pairs = []
                for value in (int(v) for v in np.unique(array) if v != 0):
                    if str(value) not in classes:
                        log.problem(mask_rel, "label value not in the mapping", f"instance id {value} has no class, skipped")
                        continue
                    pairs.append((classes[str(value)], array == value))
            else:
                pairs = [(name, _binary(mask_path))]
            for cls, mask in pairs:
                if not keep_class(cls, options):
                    if options.labels is not None and cls not in options.labels:
                        log.problem(mask_rel, "unknown label", f"label {cls!r} not in --labels, skipped")
                    continue
                ann = mask_annotation(cls, mask)
                if ann is None:
                    log.problem(mask_rel, "empty mask", "mask covers no pixel, skipped")
                    continue
                if cls not in used:
                    used.append(cls)
                annotations.append(ann)
        source = posix_rel(per_image[stem][0][0], src_dir) if per_image[stem] else rel
        result.images.append(SourceImage(source_file=source, image_name=placed_name(rel), width=size[0],
                                         height=size[1], image_file=image_path, annotations=annotations))
    result.categories = final_categories(None, options) if options.labels is not None else None
    return result
