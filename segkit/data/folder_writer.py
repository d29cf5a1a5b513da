"""Writes a data folder (``trainval.json``, ``train.json``, ``val.json``, ``images/``; ``test.json``
when the source has a test split) from images any reader found: the part every importer shares
(LabelMe, COCO, YOLO, VOC, masks, ...).

A reader hands over :class:`SourceImage` objects (an image, where it came from, its annotations with a
class *name*, no ids); :func:`write_data_folder` decides categories, the split, ids and image names,
places the images and writes the COCO files. Rules of the output:

- Category ids are 1..K: the ``categories`` given (the ``--labels`` order, or a format's own class
  list), else the label names sorted. Image ids follow the order of the images handed over (test
  images last); image and annotation ids start at 1 and are the same in ``trainval.json`` and in
  the split file. All files declare the same categories. No timestamps: the same input gives
  byte-identical JSON.
- Crowd annotations (``iscrowd`` 1, e.g. LabelMe's ``__ignore__``) with the label None are written
  once per category, so COCO evaluation ignores detections of any class there.
- Provenance: every image records ``source_file`` (the annotation file it came from, relative to the
  source folder, POSIX slashes) and ``info["source"]`` is the source as the user gave it (absolute
  when local).
- Images: copied byte for byte (``copy``) or symlinked (``symlink``) to ``images/<name>``; a name
  clash (case-insensitive) gets ``_2``, ``_3``... in processing order.
- Split, unless ``resplit`` (which folds every image into our split): the source's ``test`` split
  is kept as ``test.json``, outside ``trainval.json``: the images the user held back to measure the
  final model, never trained on nor used to pick a checkpoint (registered as ``<prefix>_test``).
  The other images keep the source's ``train`` and ``val``/``valid``/``validation`` when each has
  one of them and both occur; otherwise :func:`split_train_val` splits them, over groups of exact
  duplicate images (same bytes), so the copies of a photo saved twice land in the same split.
- Nothing is written when nothing usable remains, or with ``strict`` when a problem was reported.
"""

import hashlib
import json
import os
import random
import sys
from collections import Counter
from dataclasses import dataclass, field

from segkit.data.atomic import place_file, write_bytes, write_text
from segkit.data.file_names import unique_name
from segkit.data.layout import TEST_SPLIT, WRITE_ORDER, config_lines, eval_test_lines, has_rle_instances, image_root, split_json
from segkit.data.report import file_sha1, report_data_dir

SOURCE_SPLITS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}


@dataclass
class SourceImage:
    source_file: str  # the annotation file, relative to the source folder (POSIX)
    image_name: str  # wanted path under images/ (before collision handling)
    width: int
    height: int
    image_file: str = None  # absolute path to copy or link
    image_bytes: bytes = None  # or the image itself (e.g. LabelMe imageData)
    annotations: list = field(default_factory=list)  # dicts: label, iscrowd, segmentation, area, bbox
    split: str = None  # the source's split name, None when it has none
    extra: dict = field(default_factory=dict)  # more image fields (e.g. labelme_file)


def _content_key(image):
    if image.image_file is None:
        return hashlib.sha1(image.image_bytes).hexdigest()
    try:
        return file_sha1(image.image_file)
    except OSError:
        return "file:" + os.path.realpath(image.image_file)


def duplicate_groups(images):
    """Indices of ``images`` grouped by identical bytes; groups in order of their first image."""
    groups = {}
    for i, image in enumerate(images):
        groups.setdefault(_content_key(image), []).append(i)
    return list(groups.values())


def split_train_val(image_classes, val_fraction, seed, sizes=None):
    """Indices of the val items. ``image_classes``: one set of class names per item (an image, or a
    group of duplicate images of ``sizes[i]`` images). val gets about ``val_fraction`` of the images."""
    n = len(image_classes)
    sizes = sizes or [1] * n
    total = sum(sizes)
    if n < 2 or val_fraction <= 0:
        return set()
    n_val = min(total - 1, max(1, round(total * val_fraction)))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    images_per_class = Counter(c for classes in image_classes for c in classes)
    in_train = Counter(images_per_class)
    val = set()
    val_images = 0

    def movable(i):  # train keeps at least one image of every class it has
        return i not in val and all(in_train[c] > 1 for c in image_classes[i])

    def move(i):
        nonlocal val_images
        val.add(i)
        val_images += sizes[i]
        in_train.subtract(image_classes[i])

    for cls in sorted(images_per_class, key=lambda c: (images_per_class[c], c)):
        if images_per_class[cls] < 2 or any(cls in image_classes[i] for i in val):
            continue
        missing = set(images_per_class) - {c for i in val for c in image_classes[i]}
        candidates = [i for i in order if cls in image_classes[i] and movable(i) and len(val) < n - 1]
        if candidates:  # the one covering most missing classes; ties: shuffled order
            move(max(candidates, key=lambda i: len(image_classes[i] & missing)))
    for pick in (movable, lambda i: i not in val):  # keep train's classes if the size allows
        for i in order:
            if val_images >= n_val or len(val) >= n - 1:
                return val
            if pick(i):
                move(i)
    return val


def dumps_coco(coco):
    """JSON with one line per image / annotation / category: readable, diffable, deterministic."""
    parts = []
    for key, value in coco.items():
        if isinstance(value, list) and value:
            items = ",\n".join("    " + json.dumps(v, ensure_ascii=False) for v in value)
            parts.append(f"  {json.dumps(key)}: [\n{items}\n  ]")
        else:
            parts.append(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def place_image(image, dest, mode):
    """Copy/symlink/write one image to ``dest`` atomically; skipped when already up to date."""
    if image.image_file is None:
        write_bytes(dest, image.image_bytes)
    else:
        place_file(image.image_file, dest, mode)


def progress_bar(iterable, total, desc, enabled):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="file", disable=not enabled or total < 100, file=sys.stderr)


class ConversionResult:
    """What a conversion found and did: COCO dicts, counts, problems, exit status."""

    def __init__(self, log, num_files):
        self.log = log
        self.num_json = num_files  # annotation files looked at (the LabelMe converter's name for it)
        self.coco = {}  # {"trainval": ..., "train": ..., "val": ...} (+ "test")
        self.val_ids = set()
        self.test_ids = set()
        self.instances = {}  # class name -> [train, val, test]
        self.crowd_regions = [0, 0, 0]  # crowd regions in [train, val, test]
        self.images = [0, 0, 0]  # [train, val, test]
        self.negatives = [0, 0, 0]
        self.split_from_source = False  # train/val as the source split them
        self.test_from_source = False  # the source's test split kept as test.json
        self.crowd_name = "crowd regions"  # how the summary names crowd annotations
        self.advice = []  # lines the summary ends with, about the classes (e.g. labels numbered per instance)
        self.written = False
        self.exit_code = 0
        self.reason = ""

    @property
    def problems(self):
        return self.log.problems

    @property
    def needs_bitmask(self):
        """True when non-crowd annotations are RLE: set INPUT.MASK_FORMAT bitmask."""
        return has_rle_instances(self.coco.get("trainval", {}).get("annotations", []))


def source_splits(images, resplit=False):
    """'train', 'val' or 'test' per image as the source splits them; None for the images our seeded
    split places: all of them with ``resplit``, and all but the test images when the source's
    train/val split is incomplete (an image without a split, or no train or no val)."""
    names = [None if resplit else SOURCE_SPLITS.get((im.split or "").lower()) for im in images]
    if all(n == "test" for n in names):  # nothing else to train on: the labels are the data
        return [None] * len(names)
    rest = [n for n in names if n != "test"]
    if None in rest or "train" not in rest or "val" not in rest:
        return [n if n == "test" else None for n in names]
    return names


def write_data_folder(images, output_dir, log, categories=None, source=None, description="",
                      val_fraction=0.2, seed=0, mode="copy", strict=False, resplit=False, progress=True,
                      num_files=None):
    """Write ``images`` (:class:`SourceImage`) as a data folder in ``output_dir``; returns a
    :class:`ConversionResult`. ``categories``: class names in category-id order (annotations of other
    labels must have been dropped by the reader), or None for the labels found, sorted."""
    if mode not in ("copy", "symlink"):
        raise ValueError(f"mode must be 'copy' or 'symlink', not {mode!r}")
    result = ConversionResult(log, len(images) if num_files is None else num_files)
    splits = source_splits(images, resplit)
    # Test images last: train and val keep the ids they would have without them.
    order = sorted(range(len(images)), key=lambda i: splits[i] == TEST_SPLIT)
    images, splits = [images[i] for i in order], [splits[i] for i in order]
    num_trainval = len(images) - splits.count(TEST_SPLIT)
    test_idx = set(range(num_trainval, len(images)))
    result.test_from_source = bool(test_idx)
    if categories is None:
        categories = sorted({a["label"] for im in images for a in im.annotations if not a["iscrowd"]})
    categories = list(categories)
    cat_id = {name: i + 1 for i, name in enumerate(categories)}
    image_classes = [{a["label"] for a in im.annotations if not a["iscrowd"]} for im in images]
    if num_trainval and None not in splits[:num_trainval]:
        val_idx = {i for i, s in enumerate(splits) if s == "val"}
        result.split_from_source = True
    else:
        trainval = images[:num_trainval]
        groups = duplicate_groups(trainval) if len(trainval) > 1 and val_fraction > 0 else [[i] for i in range(len(trainval))]
        group_classes = [set().union(*(image_classes[i] for i in g)) for g in groups]
        val_groups = split_train_val(group_classes, val_fraction, seed, sizes=[len(g) for g in groups])
        val_idx = {i for k in val_groups for i in groups[k]}
    result.val_ids = {i + 1 for i in val_idx}
    result.test_ids = {i + 1 for i in test_idx}
    result.instances = {name: [0, 0, 0] for name in categories}
    for i, image in enumerate(images):
        column = 2 if i in test_idx else int(i in val_idx)
        result.images[column] += 1
        result.negatives[column] += not image_classes[i]
        for a in image.annotations:
            if a["iscrowd"]:
                result.crowd_regions[column] += 1
            else:
                result.instances[a["label"]][column] += 1

    if not num_trainval:
        result.reason = "no usable image"
    elif not any(image_classes[:num_trainval]):
        result.reason = "no instance in any image"
    elif strict and log.problems:
        result.reason = f"--strict and {len(log.problems)} problem(s)"
    if result.reason:
        result.exit_code = 1
        return result

    used_names = set()
    coco_images, coco_anns = [], []
    for image_id, image in enumerate(images, start=1):
        stem, extension = os.path.splitext(image.image_name)
        image.image_name = unique_name(stem, used_names, extension)
        coco_images.append({"id": image_id, "file_name": image.image_name, "width": image.width,
                            "height": image.height, **image.extra, "source_file": image.source_file})
        for a in image.annotations:
            names = [a["label"]] if a["label"] is not None else categories
            for name in names:
                coco_anns.append({"id": len(coco_anns) + 1, "image_id": image_id, "category_id": cat_id[name],
                                  "segmentation": a["segmentation"], "area": a["area"], "bbox": a["bbox"],
                                  "iscrowd": a["iscrowd"]})

    info = {"description": description, "version": "1.0"}
    if source is not None:
        info["source"] = source if "://" in str(source) else os.path.abspath(source)
    cats = [{"id": cat_id[n], "name": n, "supercategory": ""} for n in categories]

    def subset(keep):
        return {"info": info, "licenses": [],
                "images": [im for im in coco_images if keep(im["id"])],
                "annotations": [a for a in coco_anns if keep(a["image_id"])],
                "categories": cats}

    val_ids, test_ids = result.val_ids, result.test_ids
    result.coco = {"trainval": subset(lambda i: i not in test_ids),
                   "train": subset(lambda i: i not in val_ids and i not in test_ids),
                   "val": subset(lambda i: i in val_ids)}
    if test_ids:
        result.coco[TEST_SPLIT] = subset(lambda i: i in test_ids)
    for image in progress_bar(images, len(images), mode, progress):
        place_image(image, os.path.join(image_root(output_dir), image.image_name), mode)
    for split in written_splits(result):  # after the images: a JSON never names a missing image
        write_text(split_json(output_dir, split), dumps_coco(result.coco[split]))
    stale_test = split_json(output_dir, TEST_SPLIT)
    if not test_ids and os.path.isfile(stale_test):
        # An earlier import's test.json names images of that import: evaluating on it now would be wrong.
        os.remove(stale_test)
    result.written = True
    return result


def written_splits(result):
    """The split files a conversion writes, in the order they are written and printed."""
    return WRITE_ORDER + ((TEST_SPLIT,) if result.test_ids else ())


def summary_lines(result):
    """The summary table: images, instances per class (train/val[/test]/total), skipped items by
    reason, then the reader's advice about the classes."""
    columns = 3 if result.test_ids else 2

    def row(name, counts, note=""):
        return f"{name:<34}" + "".join(f"{n:>8}" for n in counts[:columns]) + f"{sum(counts):>8}{note}"

    def head(title):
        return f"{title:<34}" + "".join(f"{c:>8}" for c in ("train", "val", "test")[:columns]) + f"{'total':>8}"

    lines = [head("images"), row("  converted", result.images),
             row("  without instances (negatives)", result.negatives), head("instances per class")]
    for name, counts in result.instances.items():
        lines.append(row(f"  {name}", counts, "   (none in val)" if counts[0] + counts[1] and not counts[1] else ""))
    if any(result.crowd_regions):
        lines.append(row(f"  {result.crowd_name}", result.crowd_regions))
    for key, n in sorted(result.log.notes.items()):
        lines.append(f"{key}: {n}")
    lines.append(f"{'skipped / reported, by reason':<50}{'count':>8}" if result.log.skipped else "skipped: nothing")
    lines += [f"  {key:<48}{n:>8}" for key, n in sorted(result.log.skipped.items())]
    return lines + result.advice


def print_outcome(result, output_dir, header, report=True):
    """What both CLIs print after a conversion: summary, files written, config lines, the report.
    Returns the exit status."""
    print(header)
    print("\n".join(summary_lines(result)))
    if result.problems:
        print(f"{len(result.problems)} problem(s), one line each above (FILE: reason)")
    if not result.written:
        print(f"error: {result.reason}; nothing written to {output_dir}", file=sys.stderr)
        return result.exit_code
    written = [split_json(output_dir, split) for split in written_splits(result)]
    print(f"wrote {', '.join(written)} and {image_root(output_dir)}/")
    lines = config_lines(output_dir)
    if result.needs_bitmask:
        lines.append('INPUT.MASK_FORMAT "bitmask"')
    print("config lines (or pass them as KEY VALUE overrides):")
    print("\n".join("  " + line for line in lines))
    if result.test_ids:
        print("\n".join(eval_test_lines(output_dir)))
    if report:
        report_data_dir(output_dir)
    return result.exit_code
