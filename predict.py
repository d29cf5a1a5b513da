#!/usr/bin/env python
"""Batch prediction with a trained checkpoint (detectron2's demo/demo.py, for our checkpoints).

    python predict.py --input images/ "more/*.jpg" --output results/ [--weights RUN_OR_CHECKPOINT]   (default: the latest run)
                      [--confidence-threshold 0.5] [--config-file FILE] [--opts KEY VALUE ...]
    python predict.py --video-input clip.mp4 --output results/
    python predict.py --input new_images/ --labelme [--overwrite]

See ``python predict.py --help`` and segkit/inference/predict_cli.py (``--rank``: segkit/loop/rank.py).
"""

import sys

from segkit.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
