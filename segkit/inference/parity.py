"""Accuracy of an exported model against the fp32 torch model it came from: COCO bbox and segm AP
on the run's validation split, and the images quantization calibrates on.

Both models see the same images through the same ``Prediction`` interface (the eager
:class:`~segkit.inference.predictor.Predictor` and the exported predictors of
:mod:`segkit.inference.onnx_predictor`), and detectron2's ``COCOEvaluator`` scores both, so the
difference is the export's alone. The eager predictor keeps the config's SCORE_THRESH_TEST (the
one baked into the graph), not the checkpoint's best-F1 thresholds: AP wants the low-score
detections too.
"""

import contextlib
import io
import json
import logging
import os

from segkit.data.layout import SPLITS, dataset_name

logger = logging.getLogger(__name__)


def _dataset_images(name):
    """[(image_id, file path)] of a registered COCO dataset, from the file its metadata names
    (without loading the annotations through detectron2)."""
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(name)
    json_file, root = meta.get("json_file", None), meta.get("image_root", None)
    if not json_file or not os.path.isfile(json_file):
        return []
    with open(json_file, encoding="utf-8") as f:
        images = json.load(f).get("images", [])
    return [(im["id"], os.path.join(root, im["file_name"])) for im in images]


def registered(cfg):
    """Register DATASETS.DATA_DIR's splits (what the run trained on) when the folder exists."""
    from segkit.engine.launch import register_datasets

    register_datasets(cfg)


def val_dataset(cfg):
    """The registered dataset the run was evaluated on (DATASETS.TEST[0]), or None when its file
    is not there (a checkpoint moved away from its data)."""
    registered(cfg)
    for name in list(cfg.DATASETS.TEST) + [dataset_name("val")]:
        if _dataset_images(name):
            return name
    return None


def calibration_images(cfg, count):
    """(dataset name, up to ``count`` image paths) of the run's training split, spread evenly over
    it (consecutive frames of a video are near duplicates); ([], None) without one."""
    registered(cfg)
    names = list(cfg.DATASETS.TRAIN) + [dataset_name(s) for s in SPLITS if s in ("train", "trainval")]
    for name in names:
        images = [p for _, p in _dataset_images(name) if os.path.isfile(p)]
        if images:
            step = max(1, len(images) // max(1, count))
            return name, images[::step][:count]
    return None, []


def evaluate(predictor, dataset, tasks=("bbox", "segm"), max_images=None):
    """{"bbox_AP": .., "segm_AP": ..} (COCO AP, 0-100; None where COCO has no number) of
    ``predictor`` (anything that maps an RGB image to a ``Prediction``) on ``dataset``."""
    from detectron2.data import DatasetCatalog
    from detectron2.evaluation import COCOEvaluator

    from segkit.inference.image_io import read_image_rgb

    # Loading the dataset through detectron2 sets the category id <-> class index mapping that
    # COCOEvaluator reads from the metadata; without it class i would be scored as category id i.
    DatasetCatalog.get(dataset)
    quiet = logging.getLogger("detectron2.evaluation")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # its AP tables, twice per export
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            evaluator = COCOEvaluator(dataset, tasks=tuple(tasks), distributed=False, output_dir=None)
            evaluator.reset()
            for image_id, path in _dataset_images(dataset)[:max_images]:
                pred = predictor(read_image_rgb(path), rgb=True, keep_image=False)
                evaluator.process([{"image_id": image_id}], [{"instances": pred.instances}])
            results = evaluator.evaluate()
    finally:
        quiet.setLevel(level)
    out = {}
    for task in tasks:
        ap = (results or {}).get(task, {}).get("AP")
        out[f"{task}_AP"] = None if ap is None or ap != ap else round(float(ap), 3)
    return out


def parity_record(exported_ap, torch_ap, dataset, num_images):
    """What the sidecar stores: the exported model's AP, the torch model's, and the change."""
    record = {"dataset": dataset, "images": num_images}
    for key in sorted(exported_ap):
        a, b = exported_ap[key], torch_ap.get(key)
        record[key] = a
        record[f"{key}_torch"] = b
        # COCO has no AP for a model without a single detection: that is AP 0 against the torch one.
        record[f"{key}_change"] = None if b is None else round((a or 0.0) - b, 3)
    return record


def ap_drop(record, key="segm_AP"):
    """How much AP the export lost (positive = worse); None when it cannot be told."""
    change = record.get(f"{key}_change")
    return None if change is None else -change
