"""LabelMe folders (one JSON per image), read by :mod:`segkit.data.labelme` as ``labelme2coco.py`` does."""

import json

from segkit.data.coco_convert import read_labelme_folder
from segkit.data.formats import Detection, ReadResult, final_categories
from segkit.data.formats.images import posix_rel
from segkit.data.labelme import find_labelme_files

NAME = "labelme"


def detect(src_dir):
    for path in find_labelme_files(src_dir)[:20]:
        try:
            with open(path, "rb") as f:
                data = json.loads(f.read().decode("utf-8-sig"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("shapes"), list):
            return Detection(f"LabelMe JSON files ({posix_rel(path, src_dir)}, ...)")
    return None


def read(src_dir, log, options):
    images, num_files, _ = read_labelme_folder(src_dir, log, options.labels, exclude=options.exclude, progress=False)
    if options.classes is not None:
        for image in images:
            image.annotations = [a for a in image.annotations if a["label"] is None or a["label"] in options.classes]
    return ReadResult(images=images, categories=final_categories(None, options), num_files=num_files)
