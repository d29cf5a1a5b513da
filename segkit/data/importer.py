"""``import_data.py``: any supported annotation export -> the data folder ``labelme2coco.py`` writes.

    python import_data.py SRC [--format auto|coco|masks|voc|openimages|yolo|semantic|labelme]
                          [--output data] [--labels FILE] [--classes NAME ...] [--val-fraction 0.2]
                          [--seed 0] [--copy | --symlink] [--strict] [--resplit]

Each format has one reader in :mod:`segkit.data.formats`; the data folder is written by
:mod:`segkit.data.folder_writer` (same files, split rules and report as ``labelme2coco.py``).
``--format auto`` asks every reader whether the folder looks like its format and says which one
matched. A format's own marker file (the Open Images CSV, a COCO JSON, data.yaml, ...) decides over
formats that matched generic folder names only (images/ + masks/, labels/, instances/), and the
summary names those; when none, or several markers (or only several generic matches) are found it
stops with one line and asks for ``--format``.
Splits the export already has are kept unless ``--resplit``; its test split becomes ``test.json``
(``mydata_test``), outside ``trainval.json``. Exit status: 0; 1 when nothing usable
remains or with ``--strict`` on any problem (nothing written); 2 on bad arguments or layout.
"""

import argparse
import importlib
import os
import sys

from segkit.data.atomic import add_place_mode_options
from segkit.data.coco_convert import source_and_labels
from segkit.data.folder_writer import print_outcome, write_data_folder
from segkit.data.formats import ImportOptions
from segkit.data.labelme import ConversionLog
from segkit.data.remote import redact

# In the order auto-detection reports them; each is a module of segkit.data.formats.
FORMATS = ("coco", "yolo", "voc", "masks", "openimages", "semantic", "labelme")


class LayoutError(ValueError):
    """The source folder's format cannot be told (none or several match); the message says why."""


def reader(name):
    return importlib.import_module(f"segkit.data.formats.{name}")


def detect_format(src_dir):
    """``(format name, evidence)`` of the one format the folder looks like; LayoutError otherwise."""
    found = {}
    for name in FORMATS:
        detection = reader(name).detect(src_dir)
        if detection:
            found[name] = detection
    if not found:
        raise LayoutError(f"{src_dir}: no known annotation layout found (formats: {', '.join(FORMATS)}); pass --format")
    by_marker = [name for name, d in found.items() if d.marker]
    if len(found) > 1 and len(by_marker) != 1:
        what = "; ".join(f"{k}: {d.evidence}" for k, d in found.items())
        raise LayoutError(f"{src_dir}: ambiguous layout ({what}); pass --format")
    name = by_marker[0] if by_marker else next(iter(found))
    others = [k for k in found if k != name]
    evidence = found[name].evidence
    if others:
        evidence += f" (decides over generic folders that also fit {', '.join(others)}: pass --format to read those)"
    return name, evidence


def import_folder(src_dir, output_dir="data", fmt="auto", labels=None, classes=None, val_fraction=0.2, seed=0,
                  mode="copy", strict=False, resplit=False, progress=True, echo=None, source=None):
    """Read ``src_dir`` (a local folder) in format ``fmt`` and write the data folder; returns the
    :class:`~segkit.data.folder_writer.ConversionResult` (``.format`` and ``.evidence`` added).
    ``source``: what ``info["source"]`` records (default ``src_dir``; the URL of a remote source)."""
    evidence = None
    if fmt == "auto":
        fmt, evidence = detect_format(src_dir)
    log = ConversionLog(echo=echo)
    options = ImportOptions(labels=labels, classes=classes, exclude=[os.path.abspath(output_dir)])
    found = reader(fmt).read(src_dir, log, options)
    result = write_data_folder(found.images, output_dir, log, categories=found.categories, source=source or src_dir,
                               description=f"{fmt} annotations imported by segkit import_data",
                               val_fraction=val_fraction, seed=seed, mode=mode, strict=strict, resplit=resplit,
                               progress=progress, num_files=found.num_files)
    result.format, result.evidence = fmt, evidence
    return result


def build_parser():
    p = argparse.ArgumentParser(
        prog="import_data.py",
        description="Import annotations (COCO from Label Studio/CVAT/Roboflow, YOLO-seg, PASCAL VOC, binary masks, "
                    "Open Images, semantic label folders, LabelMe) into a data folder: OUTPUT/trainval.json, "
                    "train.json, val.json (test.json: the source's test split) and OUTPUT/images/, as "
                    "labelme2coco.py writes it.")
    p.add_argument("src", metavar="SRC", help="folder of the export; or s3://, gs://, https:// "
                                              "(downloaded into OUTPUT/.remote-source first)")
    p.add_argument("--format", default="auto", choices=("auto",) + FORMATS,
                   help="format of SRC (default: detected from the folder's layout)")
    p.add_argument("--output", default="data", help="output folder (default: data)")
    p.add_argument("--labels", metavar="FILE",
                   help="class names, one per line, in category-id order; other classes are reported and skipped")
    p.add_argument("--classes", nargs="+", metavar="NAME", help="import only these classes (names as in the source)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of images in val.json when the source has no split or with --resplit (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val split (default 0)")
    add_place_mode_options(p)
    p.add_argument("--resplit", action="store_true",
                   help="ignore the source's splits (its test split included) and make ours")
    p.add_argument("--strict", action="store_true", help="any reported problem fails the import (nothing written)")
    p.add_argument("--no-report", action="store_true", help="skip the dataset report at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    checked = source_and_labels(parser, args, "src", "SRC")
    if checked is None:
        return 1
    source, labels = checked

    from tqdm import tqdm

    try:
        result = import_folder(args.src, args.output, args.format, labels=labels, classes=args.classes,
                               val_fraction=args.val_fraction, seed=args.seed, mode=args.mode, strict=args.strict,
                               resplit=args.resplit, progress=not args.quiet,
                               echo=lambda line: tqdm.write(line, file=sys.stderr), source=source)
    except LayoutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    how = f"detected {result.format}: {result.evidence}" if result.evidence else f"format {result.format}"
    split = "splits kept from the source" if result.split_from_source else "train/val split made here (seeded)"
    if result.test_from_source:
        split += "; its test split kept apart as test.json"
    header = f"{redact(source)}: {how}\n{result.num_json} annotation file(s) read; {split}"
    return print_outcome(result, args.output, header, report=not args.no_report)
