"""LabelMe folder -> COCO instance annotations (``trainval.json``, ``train.json``, ``val.json``, ``images/``).

``python labelme2coco.py INPUT_DIR [--output data]`` runs :func:`main`; other code calls
:func:`convert`. Reading the LabelMe files is :mod:`segkit.data.labelme`.

Rules of the output:

- Category ids are 1..K: the ``--labels`` order, else the class names sorted (exactly as written,
  case-sensitive). Image ids follow the sorted relative JSON paths; image and annotation ids start
  at 1 and are the same in ``trainval.json`` and in the split it belongs to. All three files
  declare the same categories. No timestamps: the same input gives byte-identical JSON.
- Class names: the labels as written, unless ``--label-map FILE`` (a JSON object ``{"old label":
  "new label"}``) or ``--merge-numbered`` (``yolk1``..``yolk21`` -> ``yolk``) renames them; several
  labels renamed to one name are one class. Renaming is decided once the whole folder is read (rules
  in :mod:`segkit.data.label_names`); ``--labels`` lists the names after renaming, and listing a
  renamed label there instead is an error (exit 2). Labels outside ``--labels`` are reported and
  skipped once renamed, so their shapes are checked like the others. The summary says which labels
  look numbered per instance, whether or not they are merged. The LabelMe files are only read.
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
  still has elsewhere. So val may be a little larger than asked, to hold every class. Exact
  duplicate images (same bytes) are split as one item: all copies land in the same split.
- Provenance: each image records ``labelme_file`` and ``source_file`` (its JSON, relative to
  INPUT_DIR) and ``info["source"]`` is INPUT_DIR made absolute. The shared writer is
  :mod:`segkit.data.folder_writer`.
- Exit status: 0; 1 when nothing usable remains (no image, or no instance at all) or with
  ``--strict`` on any reported problem -- in both cases nothing is written. 2: bad arguments (a
  bad ``--label-map`` file, a ``--labels`` file that lists renamed labels).
"""

import argparse
import os
import sys
from collections import Counter

import numpy as np
import pycocotools.mask as mask_util

from segkit.data.atomic import add_place_mode_options
from segkit.data.folder_writer import SourceImage, print_outcome, progress_bar, split_train_val, summary_lines, write_data_folder
from segkit.data.label_names import ClassNaming, LabelNamesError, quoted_names, read_label_map
from segkit.data.labelme import IGNORE_LABEL, ConversionLog, find_labelme_files, read_labelme_file, read_labels_file
from segkit.data.remote import RemoteSourceError, is_remote, materialise, redact

__all__ = ["convert", "instance_annotation", "main", "split_train_val", "summary_lines"]

DESCRIPTION = "LabelMe annotations converted by segkit labelme2coco"


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


def read_labelme_folder(input_dir, log, labels=None, exclude=(), progress=True, label_map=None, merge_numbered=False):
    """Every LabelMe JSON under ``input_dir`` -> (list of SourceImage, number of JSON files,
    :class:`~segkit.data.label_names.ClassNaming`). ``labels``: the class names to keep, as they are
    after ``label_map`` and ``merge_numbered`` rename (others are reported and skipped), or None for
    all; :class:`~segkit.data.label_names.LabelNamesError` when ``labels`` lists labels that the
    renaming turns into other classes."""
    input_dir = os.path.abspath(input_dir)
    files = find_labelme_files(input_dir, exclude=exclude)
    images = []
    shape_counts = []  # per image, the number of shapes of each annotation (for the unknown-label lines)
    seen_sources = {}
    for path in progress_bar(files, len(files), "reading", progress):
        image = read_labelme_file(path, input_dir, log)
        if image is None:
            continue
        if image.image_file is not None:
            real = os.path.realpath(image.image_file)
            if real in seen_sources:
                log.problem(image.json_rel, "image used by another JSON",
                            f"image {image.image_name!r} is already annotated by {seen_sources[real]}, skipped")
                continue
            seen_sources[real] = image.json_rel
        # Masks become RLE right away (a folder's worth of mask arrays would not fit in memory);
        # the labels stay as written until every label of the folder is known.
        anns = [(instance_annotation(inst, image.width, image.height, log, image.json_rel), len(inst.shapes))
                for inst in image.instances]
        anns = [(a, n) for a, n in anns if a is not None]
        shape_counts.append([n for _, n in anns])
        images.append(SourceImage(source_file=image.json_rel, image_name=image.image_name, width=image.width,
                                  height=image.height, image_file=image.image_file, image_bytes=image.image_bytes,
                                  annotations=[a for a, _ in anns], extra={"labelme_file": image.json_rel}))

    naming = ClassNaming([Counter(a["label"] for a in im.annotations if not a["iscrowd"]) for im in images],
                         label_map=label_map, merge_numbered=merge_numbered)
    if labels is not None:
        naming.check_labels(labels)
    label_set = set(labels) if labels is not None else None
    for image, counts in zip(images, shape_counts):
        kept, unknown = [], Counter()
        for a, num_shapes in zip(image.annotations, counts):
            if a["iscrowd"]:
                a["label"] = None  # an ignored region: every category ignores detections there
            else:
                name = naming.class_of(a["label"])
                if label_set is not None and name not in label_set:
                    unknown[name, a["label"]] += num_shapes
                    continue
                a["label"] = name
            kept.append(a)
        image.annotations = kept
        for (name, written), n in sorted(unknown.items()):
            renamed = f"renamed from {written!r}, " if name != written else ""
            log.problem(image.source_file, "unknown label",
                        f"unknown label {name!r} ({renamed}not in --labels): {n} shape(s) skipped", count=n)
    return images, len(files), naming


def convert(input_dir, output_dir="data", labels=None, val_fraction=0.2, seed=0, mode="copy",
            strict=False, progress=True, echo=None, source=None, label_map=None, merge_numbered=False):
    """Convert every LabelMe JSON under ``input_dir`` into ``output_dir``; returns a
    :class:`~segkit.data.folder_writer.ConversionResult` (``class_naming`` added: the
    :class:`~segkit.data.label_names.ClassNaming` used). Nothing is written when nothing usable
    remains, or with ``strict`` when a problem was found. ``labels``: class names in category-id
    order, as they are after renaming (other labels are reported and skipped), or None for all
    labels, sorted. ``label_map``: ``{"old label": "new label"}``; ``merge_numbered``: labels
    numbered per instance become their stem's class (rules in :mod:`segkit.data.label_names`).
    Raises :class:`~segkit.data.label_names.LabelNamesError` when ``labels`` lists labels that the
    renaming turns into other classes. ``mode``: "copy" or "symlink". ``echo(line)`` gets each
    problem line as it is found. ``source``: what ``info["source"]`` records (default
    ``input_dir``; the URL of a remote source). The LabelMe files are only read."""
    if mode not in ("copy", "symlink"):
        raise ValueError(f"mode must be 'copy' or 'symlink', not {mode!r}")
    log = ConversionLog(echo=echo)
    images, num_files, naming = read_labelme_folder(input_dir, log, labels, exclude=[output_dir], progress=progress,
                                                    label_map=label_map, merge_numbered=merge_numbered)
    result = write_data_folder(images, output_dir, log, categories=labels, source=source or input_dir, description=DESCRIPTION,
                               val_fraction=val_fraction, seed=seed, mode=mode, strict=strict, resplit=True,
                               progress=progress, num_files=num_files)
    result.crowd_name = f"{IGNORE_LABEL} regions (crowd)"
    result.class_naming = naming
    result.advice = naming.summary_lines()
    return result


def build_parser():
    p = argparse.ArgumentParser(
        prog="labelme2coco.py",
        description="Convert a folder of LabelMe JSON files (searched recursively) into COCO instance "
                    "annotations: OUTPUT/trainval.json, train.json, val.json and OUTPUT/images/.")
    p.add_argument("input_dir", metavar="INPUT_DIR",
                   help="folder with LabelMe .json files and their images; or s3://, gs://, https:// "
                        "(downloaded into OUTPUT/.remote-source first)")
    p.add_argument("--output", default="data", help="output folder (default: data)")
    p.add_argument("--labels", metavar="FILE",
                   help="class names, one per line, in category-id order (LabelMe's labels.txt: "
                        "__ignore__ and _background_ lines are skipped); other labels are reported and skipped. "
                        "With --label-map or --merge-numbered it lists the class names after renaming")
    p.add_argument("--merge-numbered", action="store_true",
                   help="labels numbered per instance become one class: yolk1, yolk_2 ... yolk21 -> yolk (the "
                        "summary names the labels that look numbered, with or without this option)")
    p.add_argument("--label-map", metavar="FILE",
                   help='rename labels: a JSON object {"old label": "new label", ...}; old labels mapped to one '
                        "new label become one class; applied before --merge-numbered, which leaves the labels "
                        "it names alone. The LabelMe files themselves are never changed")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of images in val.json (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val split (default 0)")
    add_place_mode_options(p)
    p.add_argument("--strict", action="store_true", help="any reported problem fails the conversion (nothing written)")
    p.add_argument("--no-report", action="store_true", help="skip the dataset report at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def source_and_labels(parser, args, dest, metavar):
    """The argument checks ``labelme2coco.py`` and ``import_data.py`` share: a remote ``args.<dest>``
    is downloaded into OUTPUT/.remote-source and ``args.<dest>`` becomes that local folder; the folder,
    ``--val-fraction`` and ``--labels`` are checked (``parser.error`` on bad ones). Returns
    ``(source as given, labels or None)``, or None after one ``error:`` line when the download failed."""
    source = getattr(args, dest)
    if is_remote(source):
        try:
            setattr(args, dest, materialise(source, args.output, progress=not args.quiet))
        except RemoteSourceError as e:
            print(f"error: {e}", file=sys.stderr)
            return None
    if not os.path.isdir(getattr(args, dest)):
        parser.error(f"{metavar} {redact(source)!r} is not a folder")
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
    return source, labels


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    label_map = None
    if args.label_map:  # before a remote source is downloaded: a bad file fails at once
        try:
            label_map = read_label_map(args.label_map)
        except LabelNamesError as e:
            print(f"error: --label-map {e}", file=sys.stderr)
            return 2
    checked = source_and_labels(parser, args, "input_dir", "INPUT_DIR")
    if checked is None:
        return 1
    source, labels = checked

    from tqdm import tqdm

    try:
        result = convert(args.input_dir, args.output, labels=labels, val_fraction=args.val_fraction, seed=args.seed,
                         mode=args.mode, strict=args.strict, progress=not args.quiet,
                         echo=lambda line: tqdm.write(line, file=sys.stderr), source=source,
                         label_map=label_map, merge_numbered=args.merge_numbered)
    except LabelNamesError as e:
        print(f"error: --labels {args.labels} {e}; nothing written to {args.output}", file=sys.stderr)
        return 2
    unused = result.class_naming.unused_map_labels
    if unused:
        print(f"warning: --label-map {args.label_map}: no instance is labelled {quoted_names(unused)} "
              f"(left unused)", file=sys.stderr)
    return print_outcome(result, args.output, f"LabelMe -> COCO: {result.num_json} JSON file(s) in {redact(source)}",
                         report=not args.no_report)
