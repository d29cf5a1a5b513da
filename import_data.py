#!/usr/bin/env python
"""Import an annotation export (COCO, YOLO-seg, PASCAL VOC, binary masks, Open Images, semantic label
folders, LabelMe) into the data folder that training reads.

    python import_data.py SRC [--format auto] [--output data] [--labels FILE] [--classes NAME ...]
                          [--val-fraction 0.2] [--seed 0] [--copy | --symlink] [--strict] [--resplit]

See ``python import_data.py --help`` and segkit/data/importer.py for the rules.
"""

import sys

from segkit.data.importer import main

if __name__ == "__main__":
    sys.exit(main())
