#!/usr/bin/env python
"""Train or evaluate a model (detectron2's tools/train_net.py conventions); ``segkit train`` / ``segkit val``.

    python train_net.py --num-gpus 1                                      # R50-FPN, fine-tuned from COCO
    python train_net.py --config-file configs/mask_rcnn_lite0_FPN.yaml    # no GPU: ImageNet-pretrained Lite0
    python train_net.py --config-file ... --resume                        # continue the newest run of that name
    python train_net.py --eval-only [--weights RUN_OR_CHECKPOINT] [--split test]   # the latest run by default

Each training writes its own run folder (output/<name>/, numbered when the name is taken) and
records it as the latest run, which predict.py, app.py, export_model.py and the rest then use.
"""

import sys

from segkit.evaluation.train_net import Trainer, main  # noqa: F401  (Trainer: detectron2's train_net shape)

if __name__ == "__main__":
    sys.exit(main())
