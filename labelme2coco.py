#!/usr/bin/env python
"""Convert a folder of LabelMe JSON files into COCO instance annotations.

    python labelme2coco.py INPUT_DIR [--output data] [--labels labels.txt] [--val-fraction 0.2]
                           [--seed 0] [--copy | --symlink] [--strict] [--merge-numbered]
                           [--label-map map.json]

See ``python labelme2coco.py --help`` and segkit/data/coco_convert.py for the rules.
"""

import sys

from segkit.data.coco_convert import main

if __name__ == "__main__":
    sys.exit(main())
