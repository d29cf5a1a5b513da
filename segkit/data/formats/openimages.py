"""Open Images V7 instance segmentation, as its downloads lay it out.

- ``{train,validation,test}-annotations-object-segmentation.csv``: one row per mask (``MaskPath,
  ImageID, LabelName, BoxID, BoxXMin, ...``); the split comes from the file name.
- The mask PNGs (from the ``*-masks-[0-9a-f].zip`` archives, in any folder below SRC), found by the
  ``MaskPath`` file name. They are smaller than their image: scaled up to the image size (bilinear,
  threshold at half). A mask whose aspect ratio differs from the image's is reported.
- Images ``<ImageID>.jpg`` (or another image type, PNG included) in any folder below SRC.
- Class names from the class-descriptions CSV (``oidv7-class-descriptions.csv`` with a
  ``LabelName,DisplayName`` header, or the older headerless ``class-descriptions-boxable.csv``);
  without it the MIDs (``/m/01yrx``) are the names. ``--classes Cat Dog`` keeps those display names.
"""

import csv
import glob
import os

import numpy as np
from PIL import Image

from segkit.data.folder_writer import SOURCE_SPLITS, SourceImage
from segkit.data.formats import Detection, ReadResult, final_categories, keep_class
from segkit.data.formats.annotation import mask_annotation
from segkit.data.image_files import IMAGE_EXTENSIONS
from segkit.data.formats.images import is_hidden, placed_name, posix_rel, sized_image

NAME = "openimages"
_CSV_SUFFIX = "-annotations-object-segmentation.csv"
_ASPECT_TOLERANCE = 0.05


def _annotation_csvs(src_dir):
    return sorted(glob.glob(os.path.join(src_dir, f"*{_CSV_SUFFIX}")) +
                  glob.glob(os.path.join(src_dir, "*", f"*{_CSV_SUFFIX}")))


def detect(src_dir):
    files = _annotation_csvs(src_dir)
    if not files:
        return None
    return Detection(f"Open Images segmentation CSV ({', '.join(posix_rel(p, src_dir) for p in files)})")


def read_class_names(src_dir, log):
    """MID -> display name, from the first class-descriptions CSV found; {} without one."""
    files = sorted(glob.glob(os.path.join(src_dir, "**", "*class-descriptions*.csv"), recursive=True))
    names = {}
    for path in files[:1]:
        rel = posix_rel(path, src_dir)
        try:
            with open(path, encoding="utf-8", newline="") as f:
                for k, row in enumerate(csv.reader(f)):
                    if k == 0 and row[:2] == ["LabelName", "DisplayName"]:
                        continue
                    if len(row) >= 2:
                        names[row[0]] = row[1]
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            log.problem(rel, "unreadable CSV", f"unreadable CSV ({e})")
    return names


def _index_files(src_dir, exts, exclude):
    """file name -> path for every file below SRC with one of ``exts`` (first found wins)."""
    index = {}
    for dirpath, dirnames, filenames in os.walk(src_dir):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d) and os.path.join(dirpath, d) not in exclude)
        for f in sorted(filenames):
            if f.lower().endswith(exts) and not is_hidden(f):
                index.setdefault(f, os.path.join(dirpath, f))
    return index


def _scaled_mask(path, width, height):
    with Image.open(path) as im:
        small = im.convert("L")
        mw, mh = small.size
        if abs(mw / mh - width / height) > _ASPECT_TOLERANCE * (width / height):
            raise ValueError(f"mask is {mw}x{mh}, image is {width}x{height}: another aspect ratio")
        scaled = small.resize((width, height), Image.BILINEAR) if (mw, mh) != (width, height) else small
        return np.asarray(scaled) >= 128


def read(src_dir, log, options):
    src_dir = os.path.abspath(src_dir)
    csvs = _annotation_csvs(src_dir)
    result = ReadResult(num_files=len(csvs))
    names = read_class_names(src_dir, log)
    exclude = {os.path.abspath(e) for e in options.exclude}
    rows_by_image, split_of, csv_of = {}, {}, {}
    for path in csvs:
        rel = posix_rel(path, src_dir)
        token = os.path.basename(path)[: -len(_CSV_SUFFIX)].split("-")[0].lower()
        try:
            with open(path, encoding="utf-8", newline="") as f:
                for k, row in enumerate(csv.DictReader(f), start=2):
                    if not row.get("MaskPath") or not row.get("ImageID") or not row.get("LabelName"):
                        log.problem(rel, "malformed CSV row", f"line {k}: no MaskPath, ImageID or LabelName")
                        continue
                    rows_by_image.setdefault(row["ImageID"], []).append((k, row))
                    split_of[row["ImageID"]] = SOURCE_SPLITS.get(token)
                    csv_of[row["ImageID"]] = rel
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            log.problem(rel, "unreadable CSV", f"unreadable CSV ({e})")
    # Masks are the PNGs a MaskPath names; every other image file, PNGs included, may be an image.
    mask_names = {os.path.basename(r["MaskPath"]) for rows in rows_by_image.values() for _, r in rows}
    files = _index_files(src_dir, IMAGE_EXTENSIONS, exclude)
    masks = {n: p for n, p in files.items() if n in mask_names}
    image_files = {os.path.splitext(n)[0]: p for n, p in files.items() if n not in mask_names}
    used = []
    for image_id in sorted(rows_by_image):
        rel_csv = csv_of[image_id]
        rows = [(k, r) for k, r in rows_by_image[image_id]
                if keep_class(names.get(r["LabelName"], r["LabelName"]), options)]
        if not rows:
            log.skip("images with no mask of the kept classes", 1)
            continue
        image_path = image_files.get(image_id)
        if image_path is None:
            log.problem(rel_csv, "missing image", f"image {image_id} not found below SRC, skipped")
            continue
        size = sized_image(image_path, log, posix_rel(image_path, src_dir))
        if size is None:
            continue
        annotations = []
        for k, row in rows:
            name = names.get(row["LabelName"], row["LabelName"])
            mask_path = masks.get(os.path.basename(row["MaskPath"]))
            if mask_path is None:
                log.problem(rel_csv, "missing mask", f"line {k}: mask {row['MaskPath']!r} not found, skipped")
                continue
            try:
                mask = _scaled_mask(mask_path, *size)
            except Exception as e:  # OSError, UnidentifiedImageError, ValueError (aspect ratio)
                log.problem(posix_rel(mask_path, src_dir), "unusable mask", f"{e}, skipped")
                continue
            ann = mask_annotation(name, mask)
            if ann is None:
                log.problem(posix_rel(mask_path, src_dir), "empty mask", "mask covers no pixel, skipped")
                continue
            if name not in used:
                used.append(name)
            annotations.append(ann)
        result.images.append(SourceImage(source_file=rel_csv, image_name=placed_name(posix_rel(image_path, src_dir)),
                                         width=size[0], height=size[1], image_file=image_path,
                                         annotations=annotations, split=split_of[image_id]))
    result.categories = final_categories(sorted(used) if options.labels is None else None, options)
    return result
