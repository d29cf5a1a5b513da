#!/usr/bin/env python
"""Train or evaluate a model (detectron2's tools/train_net.py conventions).

    python train_net.py --num-gpus 1                                      # R50-FPN, fine-tuned from COCO
    python train_net.py --config-file configs/mask_rcnn_R_18_FPN_mini.yaml   # small, from scratch, CPU
    python train_net.py --config-file ... --resume                         # continue the last run
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
"""

from segkit.engine.launch import run
from segkit.engine.trainer import Trainer as BaseTrainer
from segkit.evaluation.build import build_evaluator


class Trainer(BaseTrainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)


if __name__ == "__main__":
    run(Trainer)
