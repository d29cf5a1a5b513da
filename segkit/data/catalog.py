"""Registers converted COCO files with detectron2's own catalogs.

A data folder written by ``labelme2coco.py`` holds ``train.json``, ``val.json`` and
``trainval.json`` plus ``images/``; each split becomes the detectron2 dataset ``<prefix>_<split>``
(``mydata_train``, ...), which configs name in ``DATASETS.TRAIN`` / ``DATASETS.TEST``.
"""

import json
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.utils.colormap import colormap

from segkit.data.layout import DEFAULT_PREFIX, SPLITS, coco_has_rle_instances, config_lines, dataset_name, image_root, split_json

__all__ = ["DEFAULT_PREFIX", "SPLITS", "class_colors", "coco_has_rle_instances", "config_lines", "read_categories",
           "register_coco_dataset", "register_data_dir"]

logger = logging.getLogger(__name__)


def class_colors(num_classes):
    """Stable RGB colours (0-255), one per class index, from detectron2's own palette."""
    palette = colormap(rgb=True, maximum=255)
    return [tuple(int(c) for c in palette[i % len(palette)]) for i in range(num_classes)]


def read_categories(json_file):
    """Class names of a COCO file, ordered by category id (what register_coco_instances maps to 0..K-1)."""
    with open(json_file, encoding="utf-8") as f:
        cats = json.load(f)["categories"]
    return [c["name"] for c in sorted(cats, key=lambda c: c["id"])]


def register_coco_dataset(name, json_file, image_root):
    """register_coco_instances + stable thing_colors. Re-registering the same files is a no-op."""
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if meta.get("json_file") == json_file and meta.get("image_root") == image_root:
            return
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, json_file, image_root)
    classes = read_categories(json_file)
    # thing_classes normally appear only after the dataset is loaded; set them now so a config
    # can take NUM_CLASSES from them without loading every annotation.
    MetadataCatalog.get(name).set(thing_classes=classes, thing_colors=class_colors(len(classes)))


def register_data_dir(data_dir="data", prefix=DEFAULT_PREFIX):
    """Register every ``<split>.json`` found in ``data_dir``; returns the registered names."""
    names = []
    for split in SPLITS:
        json_file = split_json(data_dir, split)
        if os.path.isfile(json_file):
            name = dataset_name(split, prefix)
            register_coco_dataset(name, json_file, image_root(data_dir))
            names.append(name)
    return names
