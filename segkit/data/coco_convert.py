"""LabelMe folder -> COCO instance annotations (``trainval.json``, ``train.json``, ``val.json``, ``images/``).

``python labelme2coco.py INPUT_DIR [--output data]`` runs :func:`main`; other code calls
:func:`convert`. Reading the LabelMe files is :mod:`segkit.data.labelme`.

Rules of the output:

- Category ids are 1..K: the ``--labels`` order, else the label names sorted (exactly as written,
  case-sensitive). Image ids follow the sorted relative JSON paths; image and annotation ids start
  at 1 and are the same in ``trainval.json`` and in the split it belongs to. All three files
  declare the same categories. No timestamps: the same input gives byte-identical JSON.
- Segmentation: an instance made only of polygon-like shapes (polygon, rectangle, circle,
  oriented_rectangle) is written as a list of polygons, one per shape (a ``group_id`` instance with
  several polygons is one annotation). An instance with any ``mask`` shape is written as ONE
  compressed RLE (pycocotools) of the union of all its shapes; training on such a dataset needs
  ``INPUT.MASK_FORMAT bitmask`` (printed with the config lines when it applies).
- ``area`` is the pixel area of the instance mask as pycocotools rasterises it (what detectron2
  and COCOeval see), ``bbox`` is ``pycocotools.mask.toBbox`` of that mask. A shape whose mask
  covers no pixel is reported and dropped.
- ``__ignore__`` regions become ``iscrowd: 1`` RLE annotations, one copy per category, so that
  COCO evaluation ignores detections of ANY class there (COCOeval matches crowd regions per
  category); detectron2's ``DatasetMapper`` drops crowd annotations from training targets.
  Counts of instances per class never include them.
- Images: copied byte for byte (EXIF kept; ``--copy``, default) or symlinked (``--symlink``) to
  ``images/<path relative to INPUT_DIR>``, so equal names in different subfolders stay apart;
  images taken from ``imageData`` are written next to where their JSON lies. A remaining name
  clash (case-insensitive) gets ``_2``, ``_3``... in processing order. Images without shapes are
  kept as negatives.
- Split: seeded shuffle; then, rarest class first, an image holding a class that val lacks goes to
  val when the class is in at least two images and train keeps every class it had; then val is
  filled up to ``--val-fraction`` (at least one image), first with images whose classes train
  still has elsewhere. So val may be a little larger than asked, to hold every class.
- Exit status: 0; 1 when nothing usable remains (no image, or no instance at all) or with
  ``--strict`` on any reported problem -- in both cases nothing is written. 2: bad arguments.
"""

import argparse
import json
import os
import random
import shutil
import sys
from collections import Counter

import numpy as np
import pycocotools.mask as mask_util

from segkit.data.atomic import atomic_path, write_bytes, write_text
from segkit.data.labelme import IGNORE_LABEL, ConversionLog, find_labelme_files, read_labelme_file, read_labels_file
from segkit.data.layout import WRITE_ORDER, config_lines, has_rle_instances, image_root, split_json


def _progress(iterable, total, desc, enabled):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="file", disable=not enabled or total < 100, file=sys.stderr)


def instance_annotation(instance, width, height, log, json_rel):
    """An :class:`~segkit.data.labelme.Instance` -> dict with segmentation, area, bbox, iscrowd
    and ``label`` (no ids yet); None when it covers no pixel (reported)."""
    polygons, rles = [], []
    for shape in instance.shapes:
        if shape.polygon is not None:
            rle = mask_util.frPyObjects([shape.polygon], height, width)[0]
            if mask_util.area(rle) == 0:
                where = f"shape {shape.index} ({shape.label!r}, {shape.shape_type})"
                log.problem(json_rel, "zero-area shape", f"{where}: covers no pixel")
                continue
            polygons.append(shape.polygon)
        else:
            full = np.zeros((height, width), dtype=np.uint8, order="F")
            mh, mw = shape.mask.shape
            full[shape.mask_y : shape.mask_y + mh, shape.mask_x : shape.mask_x + mw] = shape.mask
            rle = mask_util.encode(full)
        rles.append(rle)
    if not rles:
        return None
    merged = mask_util.merge(rles) if len(rles) > 1 else rles[0]
    if instance.iscrowd or len(polygons) < len(rles):
        segmentation = {"size": [height, width], "counts": merged["counts"].decode("ascii")}
    else:
        segmentation = polygons
    return {
        "label": instance.label,
        "iscrowd": int(instance.iscrowd),
        "segmentation": segmentation,
        "area": float(mask_util.area(merged)),
        "bbox": [float(v) for v in mask_util.toBbox(merged)],
    }


def split_train_val(image_classes, val_fraction, seed):
    """Indices of the val images. ``image_classes``: one set of class names per image."""
    n = len(image_classes)
    if n < 2 or val_fraction <= 0:
        return set()
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    images_per_class = Counter(c for classes in image_classes for c in classes)
    in_train = Counter(images_per_class)
    val = set()

    def movable(i):  # train keeps at least one image of every class it has
        return i not in val and all(in_train[c] > 1 for c in image_classes[i])

    def move(i):
        val.add(i)
        in_train.subtract(image_classes[i])

    for cls in sorted(images_per_class, key=lambda c: (images_per_class[c], c)):
        if images_per_class[cls] < 2 or any(cls in image_classes[i] for i in val):
            continue
        missing = set(images_per_class) - {c for i in val for c in image_classes[i]}
        candidates = [i for i in order if cls in image_classes[i] and movable(i)]
        if candidates:  # the one covering most missing classes; ties: shuffled order
            move(max(candidates, key=lambda i: len(image_classes[i] & missing)))
    for pick in (movable, lambda i: i not in val):  # keep train's classes if the size allows
        for i in order:
            if len(val) >= n_val:
                return val
            if pick(i):
                move(i)
    return val


def _unique_name(name, used):
    stem, ext = os.path.splitext(name)
    candidate, k = name, 1
    while candidate.lower() in used:
        k += 1
        candidate = f"{stem}_{k}{ext}"
    used.add(candidate.lower())
    return candidate


def _dumps_coco(coco):
    """JSON with one line per image / annotation / category: readable, diffable, deterministic."""
    parts = []
    for key, value in coco.items():
        if isinstance(value, list) and value:
            items = ",\n".join("    " + json.dumps(v, ensure_ascii=False) for v in value)
            parts.append(f"  {json.dumps(key)}: [\n{items}\n  ]")
        else:
            parts.append(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def _place_image(image, dest, mode):
    """Copy/symlink/write one image to ``dest`` atomically; skipped when already up to date."""
    if image.image_file is None:
        write_bytes(dest, image.image_bytes)
        return
    src = os.path.realpath(image.image_file)
    if mode == "symlink":
        if os.path.islink(dest) and os.readlink(dest) == src:
            return
        with atomic_path(dest) as tmp:
            os.remove(tmp)
            os.symlink(src, tmp)
        return
    s = os.stat(src)
    if os.path.isfile(dest) and not os.path.islink(dest):
        d = os.stat(dest)
        if s.st_size == d.st_size and s.st_mtime_ns == d.st_mtime_ns:
            return
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)  # not the source's mode (often read-only) nor mkstemp's 0600
        os.utime(tmp, ns=(s.st_atime_ns, s.st_mtime_ns))  # lets a re-run skip unchanged images


class ConversionResult:
    """What :func:`convert` found and did: COCO dicts, counts, problems, exit status."""

    def __init__(self, log, num_json):
        self.log = log
        self.num_json = num_json
        self.coco = {}  # {"trainval": ..., "train": ..., "val": ...}
        self.val_ids = set()
        self.instances = {}  # class name -> [train, val]
        self.crowd_regions = [0, 0]  # __ignore__ regions in [train, val]
        self.images = [0, 0]  # [train, val]
        self.negatives = [0, 0]
        self.written = False
        self.exit_code = 0
        self.reason = ""

    @property
    def problems(self):
        return self.log.problems

    @property
    def needs_bitmask(self):
        """True when non-crowd annotations are RLE (mask shapes): set INPUT.MASK_FORMAT bitmask."""
        return has_rle_instances(self.coco.get("trainval", {}).get("annotations", []))


def convert(input_dir, output_dir="data", labels=None, val_fraction=0.2, seed=0, mode="copy",
            strict=False, progress=True, echo=None):
    """Convert every LabelMe JSON under ``input_dir`` into ``output_dir``; returns a
    :class:`ConversionResult`. Nothing is written when nothing usable remains, or with ``strict``
    when a problem was found. ``labels``: class names in category-id order (other labels are
    reported and skipped), or None for all labels, sorted. ``mode``: "copy" or "symlink".
    ``echo(line)`` gets each problem line as it is found."""
    if mode not in ("copy", "symlink"):
        raise ValueError(f"mode must be 'copy' or 'symlink', not {mode!r}")
    input_dir = os.path.abspath(input_dir)
    log = ConversionLog(echo=echo)
    files = find_labelme_files(input_dir, exclude=[output_dir])
    result = ConversionResult(log, len(files))
    label_set = set(labels) if labels is not None else None

    images, records = [], []  # LabelMeImage, its annotation dicts (no ids yet)
    seen_sources = {}
    for path in _progress(files, len(files), "reading", progress):
        image = read_labelme_file(path, input_dir, log, labels=label_set)
        if image is None:
            continue
        if image.image_file is not None:
            source = os.path.realpath(image.image_file)
            if source in seen_sources:
                log.problem(image.json_rel, "image used by another JSON",
                            f"image {image.image_name!r} is already annotated by {seen_sources[source]}, skipped")
                continue
            seen_sources[source] = image.json_rel
        anns = [instance_annotation(inst, image.width, image.height, log, image.json_rel) for inst in image.instances]
        images.append(image)
        records.append([a for a in anns if a is not None])

    categories = list(labels) if labels is not None else sorted(
        {a["label"] for anns in records for a in anns if not a["iscrowd"]})
    cat_id = {name: i + 1 for i, name in enumerate(categories)}
    image_classes = [{a["label"] for a in anns if not a["iscrowd"]} for anns in records]
    val_idx = split_train_val(image_classes, val_fraction, seed)
    result.val_ids = {i + 1 for i in val_idx}
    result.instances = {name: [0, 0] for name in categories}
    for i, anns in enumerate(records):
        in_val = int(i in val_idx)
        result.images[in_val] += 1
        result.negatives[in_val] += not image_classes[i]
        for a in anns:
            if a["iscrowd"]:
                result.crowd_regions[in_val] += 1
            else:
                result.instances[a["label"]][in_val] += 1

    if not images:
        result.reason = "no usable image"
    elif not any(image_classes):
        result.reason = "no instance in any image"
    elif strict and log.problems:
        result.reason = f"--strict and {len(log.problems)} problem(s)"
    if result.reason:
        result.exit_code = 1
        return result

    used_names = set()
    coco_images, coco_anns = [], []
    for image_id, (image, anns) in enumerate(zip(images, records), start=1):
        image.image_name = _unique_name(image.image_name, used_names)
        coco_images.append({"id": image_id, "file_name": image.image_name, "width": image.width,
                            "height": image.height, "labelme_file": image.json_rel})
        for a in anns:
            for name in (categories if a["iscrowd"] else [a["label"]]):
                coco_anns.append({"id": len(coco_anns) + 1, "image_id": image_id, "category_id": cat_id[name],
                                  "segmentation": a["segmentation"], "area": a["area"], "bbox": a["bbox"],
                                  "iscrowd": a["iscrowd"]})

    info = {"description": "LabelMe annotations converted by segkit labelme2coco", "version": "1.0"}
    cats = [{"id": cat_id[n], "name": n, "supercategory": ""} for n in categories]

    def subset(keep):
        return {"info": info, "licenses": [],
                "images": [im for im in coco_images if keep(im["id"])],
                "annotations": [a for a in coco_anns if keep(a["image_id"])],
                "categories": cats}

    val_ids = result.val_ids
    result.coco = {"trainval": subset(lambda i: True), "train": subset(lambda i: i not in val_ids),
                   "val": subset(lambda i: i in val_ids)}
    for image in _progress(images, len(images), mode, progress):
        _place_image(image, os.path.join(image_root(output_dir), image.image_name), mode)
    for split in WRITE_ORDER:  # after the images: a JSON never names a missing image
        write_text(split_json(output_dir, split), _dumps_coco(result.coco[split]))
    result.written = True
    return result


def summary_lines(result):
    """The summary table: images, instances per class (train/val/total), skipped items by reason."""
    def row(name, pair, note=""):
        return f"{name:<34}{pair[0]:>8}{pair[1]:>8}{pair[0] + pair[1]:>8}{note}"

    def head(title):
        return f"{title:<34}{'train':>8}{'val':>8}{'total':>8}"

    lines = [head("images"), row("  converted", result.images),
             row("  without instances (negatives)", result.negatives), head("instances per class")]
    for name, pair in result.instances.items():
        lines.append(row(f"  {name}", pair, "   (none in val)" if pair[0] + pair[1] and not pair[1] else ""))
    if any(result.crowd_regions):
        lines.append(row(f"  {IGNORE_LABEL} regions (crowd)", result.crowd_regions))
    for key, n in sorted(result.log.notes.items()):
        lines.append(f"{key}: {n}")
    lines.append(f"{'skipped / reported, by reason':<50}{'count':>8}" if result.log.skipped else "skipped: nothing")
    lines += [f"  {key:<48}{n:>8}" for key, n in sorted(result.log.skipped.items())]
    return lines


def build_parser():
    p = argparse.ArgumentParser(
        prog="labelme2coco.py",
        description="Convert a folder of LabelMe JSON files (searched recursively) into COCO instance "
                    "annotations: OUTPUT/trainval.json, train.json, val.json and OUTPUT/images/.")
    p.add_argument("input_dir", metavar="INPUT_DIR", help="folder with LabelMe .json files and their images")
    p.add_argument("--output", default="data", help="output folder (default: data)")
    p.add_argument("--labels", metavar="FILE",
                   help="class names, one per line, in category-id order (LabelMe's labels.txt: "
                        "__ignore__ and _background_ lines are skipped); other labels are reported and skipped")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of images in val.json (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val split (default 0)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--copy", dest="mode", action="store_const", const="copy", help="copy images (default)")
    g.add_argument("--symlink", dest="mode", action="store_const", const="symlink",
                   help="symlink images instead of copying")
    p.set_defaults(mode="copy")
    p.add_argument("--strict", action="store_true", help="any reported problem fails the conversion (nothing written)")
    p.add_argument("--no-report", action="store_true", help="skip the dataset report at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not os.path.isdir(args.input_dir):
        parser.error(f"INPUT_DIR {args.input_dir!r} is not a folder")
    if not 0 <= args.val_fraction < 1:
        parser.error("--val-fraction must be in [0, 1)")
    labels = None
    if args.labels:
        try:
            labels = read_labels_file(args.labels)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            parser.error(f"--labels: {e}")
        if not labels:
            parser.error(f"--labels: no class names in {args.labels}")

    from tqdm import tqdm

    result = convert(args.input_dir, args.output, labels=labels, val_fraction=args.val_fraction, seed=args.seed,
                     mode=args.mode, strict=args.strict, progress=not args.quiet,
                     echo=lambda line: tqdm.write(line, file=sys.stderr))
    print(f"LabelMe -> COCO: {result.num_json} JSON file(s) in {args.input_dir}")
    print("\n".join(summary_lines(result)))
    if result.problems:
        print(f"{len(result.problems)} problem(s), one line each above (FILE: reason)")
    if not result.written:
        print(f"error: {result.reason}; nothing written to {args.output}", file=sys.stderr)
        return result.exit_code
    written = [split_json(args.output, split) for split in WRITE_ORDER]
    print(f"wrote {', '.join(written)} and {image_root(args.output)}/")

    lines = config_lines(args.output)
    if result.needs_bitmask:
        lines.append('INPUT.MASK_FORMAT "bitmask"')
    print("config lines (or pass them as KEY VALUE overrides):")
    print("\n".join("  " + line for line in lines))
    if not args.no_report:
        from segkit.data.report import report_data_dir

        report_data_dir(args.output)
    return result.exit_code
