"""Semantic label folders: images plus one PNG per image whose pixel values are class ids.

- The Oxford-IIIT Pets layout is recognised as such: ``images/*.jpg`` + ``annotations/trimaps/*.png``
  (1 = pet, 2 = background, 3 = border) + ``annotations/trainval.txt`` / ``test.txt`` (lines
  ``Image CLASS-ID SPECIES BREED-ID``, species 1 = cat, 2 = dog). The pet becomes the class ``cat`` or
  ``dog``; the border an ignored (crowd) region; images in neither list are left out (counted);
  trainval -> train, test -> val.
- Otherwise: ``images/`` + ``labels/`` (or ``masks/``) PNGs with the image's stem, and ``classes.json``
  mapping pixel values to names (``{"1": "road", "2": "car", "255": "__ignore__"}``, the format of
  :func:`segkit.data.semantic.read_class_mapping`); ``background`` is no class, ``__ignore__`` an
  ignored region, value 0 is background unless the mapping names it. A value the mapping does not
  list is reported and ignored.

Each class present in an image becomes one annotation (an RLE mask of all its pixels), so the folder
trains the U-Net (``python train_net.py --config-file configs/unet_R18_mini.yaml DATASETS.DATA_DIR
DIR``) and Mask R-CNN (with ``INPUT.MASK_FORMAT bitmask``) alike.
"""

import json
import os

import numpy as np
from PIL import Image

from segkit.data.folder_writer import SourceImage
from segkit.data.formats import Detection, ReadResult, final_categories, keep_class
from segkit.data.formats.annotation import mask_annotation
from segkit.data.formats.images import is_hidden, list_images, placed_name, posix_rel, sized_image

NAME = "semantic"
IGNORE = "__ignore__"
BACKGROUND_NAMES = ("background", "_background_")
PETS_SPECIES = {"1": "cat", "2": "dog"}
_LABEL_DIRS = ("labels", "masks", "annotations")


def _pets_dirs(src_dir):
    trimaps = os.path.join(src_dir, "annotations", "trimaps")
    images = os.path.join(src_dir, "images")
    return (trimaps, images) if os.path.isdir(trimaps) and os.path.isdir(images) else None


def _generic_dirs(src_dir):
    images = os.path.join(src_dir, "images")
    mapping = os.path.join(src_dir, "classes.json")
    if not (os.path.isdir(images) and os.path.isfile(mapping)):
        return None
    stems = {os.path.splitext(posix_rel(p, images))[0] for p in list_images(images)}
    for name in _LABEL_DIRS:  # label PNGs carry the image's own stem (per-object masks add _<k>)
        labels = os.path.join(src_dir, name)
        if os.path.isdir(labels) and any(os.path.splitext(posix_rel(p, labels))[0] in stems
                                         for p in list_images(labels) if p.lower().endswith(".png")):
            return labels, images, mapping
    return None


def detect(src_dir):
    if _pets_dirs(src_dir):
        return Detection("Oxford-IIIT Pets layout (images/ + annotations/trimaps/)")
    found = _generic_dirs(src_dir)
    if found:
        return Detection(f"semantic label folder ({os.path.basename(found[0])}/ + classes.json)", marker=False)
    return None


def _read_mapping(path, log, rel):
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        mapping = {int(k): str(v) for k, v in raw.items()}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, ValueError) as e:
        log.problem(rel, "unreadable mapping", f"unreadable class mapping ({e}); expected {{\"<pixel value>\": \"<name>\"}}")
        return None
    mapping.setdefault(0, "background")
    return mapping


def _read_pets_lists(src_dir, log):
    """image stem -> (split, class name) from annotations/trainval.txt and test.txt; None without lists."""
    listed = {}
    found_any = False
    for file_name, split in (("trainval.txt", "train"), ("test.txt", "test")):
        path = os.path.join(src_dir, "annotations", file_name)
        if not os.path.isfile(path):
            continue
        found_any = True
        with open(path, encoding="utf-8") as f:
            for k, line in enumerate(f, start=1):
                fields = line.split()
                if not fields or fields[0].startswith("#"):
                    continue
                if len(fields) < 3 or fields[2] not in PETS_SPECIES:
                    log.problem(f"annotations/{file_name}", "malformed list line", f"line {k}: expected 'Image CLASS-ID SPECIES BREED-ID'")
                    continue
                listed[fields[0]] = (split, PETS_SPECIES[fields[2]])
    return listed if found_any else None


def _image_annotations(label, mapping, log, rel, options, pet_class=None):
    annotations, unknown = [], sorted(int(v) for v in np.unique(label) if int(v) not in mapping)
    ignore = np.isin(label, [v for v, n in mapping.items() if n == IGNORE] + unknown)
    if unknown:
        log.problem(rel, "label value not in the mapping", f"label value(s) {unknown} not in the mapping, ignored")
    names = {}
    for value, name in sorted(mapping.items()):
        if name in BACKGROUND_NAMES or name == IGNORE:
            continue
        name = pet_class or name
        names.setdefault(name, []).append(value)
    for name, values in names.items():
        if not keep_class(name, options):
            continue
        ann = mask_annotation(name, np.isin(label, values))
        if ann is not None:
            annotations.append(ann)
    if ignore.any():
        annotations.append(mask_annotation(None, ignore, iscrowd=1))
    return annotations


def read(src_dir, log, options):
    src_dir = os.path.abspath(src_dir)
    pets = _pets_dirs(src_dir)
    result = ReadResult()
    if pets:
        labels_dir, images_dir = pets
        mapping = {1: "pet", 2: "background", 3: IGNORE}
        listed = _read_pets_lists(src_dir, log)
        class_order = ["cat", "dog"] if listed is not None else ["pet"]
    else:
        found = _generic_dirs(src_dir)
        if found is None:
            log.problem(".", "not a semantic label folder", "no images/ + labels/ (or masks/) + classes.json")
            return result
        labels_dir, images_dir, mapping_file = found
        mapping = _read_mapping(mapping_file, log, posix_rel(mapping_file, src_dir))
        if mapping is None:
            return result
        listed = None
        class_order = []
        for _, name in sorted(mapping.items()):
            if name not in BACKGROUND_NAMES and name != IGNORE and name not in class_order:
                class_order.append(name)
    used = set()
    for path in list_images(images_dir):
        rel = posix_rel(path, src_dir)
        stem_rel = os.path.splitext(posix_rel(path, images_dir))[0]
        split, pet_class = None, None
        if listed is not None:
            if os.path.basename(stem_rel) not in listed:
                log.skip("images in neither trainval.txt nor test.txt (left out)")
                continue
            split, pet_class = listed[os.path.basename(stem_rel)]
        label_file = os.path.join(labels_dir, *f"{stem_rel}.png".split("/"))
        if not os.path.isfile(label_file) or is_hidden(os.path.basename(label_file)):
            log.problem(rel, "no label PNG", f"no label PNG {posix_rel(label_file, src_dir)}, skipped")
            continue
        label_rel = posix_rel(label_file, src_dir)
        result.num_files += 1
        size = sized_image(path, log, rel)
        if size is None:
            continue
        try:
            with Image.open(label_file) as im:
                if im.mode not in ("L", "P", "I", "I;16", "1"):
                    log.problem(label_rel, "label PNG not single-channel", f"label PNG has mode {im.mode}, not class ids")
                    continue
                label = np.asarray(im)
        except Exception as e:  # OSError, PIL.UnidentifiedImageError
            log.problem(label_rel, "unreadable label PNG", f"unreadable label PNG ({type(e).__name__}: {e})")
            continue
        if label.shape != (size[1], size[0]):
            log.problem(label_rel, "mask size differs from image",
                        f"label PNG is {label.shape[1]}x{label.shape[0]}, image is {size[0]}x{size[1]}, skipped")
            continue
        annotations = _image_annotations(label, mapping, log, label_rel, options, pet_class)
        used.update(a["label"] for a in annotations if not a["iscrowd"])
        result.images.append(SourceImage(source_file=label_rel, image_name=placed_name(rel), width=size[0],
                                         height=size[1], image_file=path, annotations=annotations, split=split))
    stems = {os.path.splitext(posix_rel(p, images_dir))[0] for p in list_images(images_dir)}
    for path in list_images(labels_dir):
        if path.lower().endswith(".png") and os.path.splitext(posix_rel(path, labels_dir))[0] not in stems:
            log.problem(posix_rel(path, src_dir), "label PNG without an image",
                        f"no image {posix_rel(images_dir, src_dir)}/<same stem>.* for this label PNG, skipped")
    result.categories = final_categories([c for c in class_order if c in used], options)
    return result
