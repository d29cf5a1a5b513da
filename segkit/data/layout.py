"""The data folder layout, in one place and without detectron2 (converters import it at start-up).

A data folder (``labelme2coco.py`` and ``import_data.py`` write it) holds::

    DIR/trainval.json  DIR/train.json  DIR/val.json   COCO instance files (ids shared between them)
    DIR/test.json                                     the source's test split, when it has one: not in
                                                      trainval.json, never trained on
    DIR/images/...                                    the images, ``file_name`` relative to here
    DIR/report.json  DIR/report.png                   the dataset report
    DIR/browse/<split>/                               ground-truth overlays
    DIR/sem_seg/<split>/                              label PNGs for semantic models (a cache)

Each split is registered with detectron2 as ``<prefix>_<split>`` (``<prefix>_sem_<split>`` for the
semantic view); which file a registered dataset reads is its ``MetadataCatalog`` ``json_file``.
"""

import json
import os

TEST_SPLIT = "test"
SPLITS = ("train", "val", "trainval", TEST_SPLIT)
WRITE_ORDER = ("trainval", "train", "val")  # what converters write, and print, in this order (then test)
DEFAULT_PREFIX = "mydata"
IMAGES_DIR = "images"
REPORT_JSON = "report.json"
REPORT_PNG = "report.png"
BROWSE_DIR = "browse"
SEM_SEG_DIR = "sem_seg"


def split_json(data_dir, split):
    return os.path.join(data_dir, f"{split}.json")


def image_root(data_dir):
    return os.path.join(data_dir, IMAGES_DIR)


def dataset_name(split, prefix=DEFAULT_PREFIX, semantic=False):
    return f"{prefix}_sem_{split}" if semantic else f"{prefix}_{split}"


def config_lines(data_dir="data", prefix=DEFAULT_PREFIX):
    """What to put into a config (or pass as KEY VALUE overrides) to train on this folder."""
    return [
        f'DATASETS.DATA_DIR "{data_dir}"',
        f'DATASETS.TRAIN "(\'{dataset_name("train", prefix)}\',)"',
        f'DATASETS.TEST "(\'{dataset_name("val", prefix)}\',)"',
    ]


def eval_test_lines(data_dir="data", prefix=DEFAULT_PREFIX):
    """What to run to measure a trained model on the test split (kept out of training and of the
    choice of model_best)."""
    return [
        f"test split: {split_json(data_dir, TEST_SPLIT)} ({dataset_name(TEST_SPLIT, prefix)}; not trained on). "
        "Measure the final model on it with:",
        f"  python train_net.py --eval-only --split {TEST_SPLIT}"
        + ("" if os.path.normpath(data_dir) == "data" else f' DATASETS.DATA_DIR "{data_dir}"'),
    ]


def has_rle_instances(annotations):
    """True when some non-crowd annotation is RLE (e.g. LabelMe mask shapes): needs INPUT.MASK_FORMAT bitmask."""
    return any(not a.get("iscrowd") and isinstance(a["segmentation"], dict) for a in annotations)


def coco_has_rle_instances(json_file):
    with open(json_file, encoding="utf-8") as f:
        return has_rle_instances(json.load(f)["annotations"])
