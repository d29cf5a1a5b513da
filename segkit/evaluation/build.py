"""The evaluator for a config: COCO (bbox, segm) for Mask R-CNN, Dice/IoU for the U-Net."""

import os


def build_evaluator(cfg, dataset_name, output_folder=None):
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "eval")
    if cfg.MODEL.META_ARCHITECTURE == "UNet":
        from segkit.evaluation.semantic import SemSegDiceEvaluator

        return SemSegDiceEvaluator(dataset_name, distributed=True, output_dir=output_folder)
    from segkit.evaluation.coco import build_coco_evaluator

    return build_coco_evaluator(cfg, dataset_name, output_folder)
