#!/usr/bin/env python
"""Export a data folder (or any COCO instances file) to a LabelMe folder or to Ultralytics YOLO-seg.

    python export_data.py SRC --to labelme|yolo --output DIR [--image-root DIR] [--copy | --symlink]
                          [--overwrite]

See ``python export_data.py --help`` and segkit/data/coco_export.py for the rules.
"""

import sys

from segkit.data.coco_export import main

if __name__ == "__main__":
    sys.exit(main())
