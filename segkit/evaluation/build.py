"""The evaluator for a dataset, chosen by its metadata's ``evaluator_type`` as detectron2's
tools/train_net.py does: COCO (bbox, segm) for instance datasets, Dice/IoU for semantic ones."""

import os

from detectron2.data import MetadataCatalog

from segkit.data.run_layout import EVAL_DIR


def build_evaluator(cfg, dataset_name, output_folder=None):
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, EVAL_DIR)
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type == "sem_seg":
        from segkit.evaluation.semantic import SemSegDiceEvaluator

        return SemSegDiceEvaluator(dataset_name, distributed=True, output_dir=output_folder)
    if evaluator_type == "coco":
        from segkit.evaluation.coco import build_coco_evaluator

        return build_coco_evaluator(cfg, dataset_name, output_folder)
    raise NotImplementedError(
        f"No evaluator for dataset {dataset_name!r} (evaluator_type {evaluator_type!r}): register it "
        f"with register_coco_instances or segkit.data.semantic, or set DATASETS.TEST to ()."
    )
