"""Ground-truth overlays of a converted COCO folder, drawn by detectron2's Visualizer.

For every image of a split, ``Visualizer.draw_dataset_dict`` draws the annotated masks, boxes and
class names (classes coloured with the catalog's stable ``thing_colors``) and the result is
written as a PNG under ``OUT`` (default ``DIR/browse/<split>/``), keeping the image's relative
path with a ``.png`` suffix. Images without annotations are written unchanged, so every image
of the split has one overlay.

    python -m segkit.data.browse DIR [--split val] [--out DIR/browse] [--limit N]
"""

import argparse
import os
import sys

import cv2
import numpy as np
from tqdm import tqdm

from segkit.data.atomic import write_bytes
from segkit.data.catalog import register_coco_dataset
from segkit.data.layout import BROWSE_DIR, SPLITS, image_root, split_json


def _dataset_name(split):
    return f"segkit_browse_{split}"


def output_folder(data_dir, split="val", out_dir=None):
    """Where ``browse`` writes the overlays of ``split``: ``OUT/<split>`` (OUT defaults to ``DIR/browse``)."""
    return os.path.join(out_dir if out_dir is not None else os.path.join(data_dir, BROWSE_DIR), split)


def browse(data_dir, split="val", out_dir=None, limit=None, scale=1.0, progress=True):
    """Write one overlay PNG per image of ``DIR/<split>.json``; returns the written paths.

    ``out_dir`` defaults to ``DIR/browse``; files go to ``out_dir/<split>/<file_name>.png``.
    ``limit`` keeps the first N images (in the COCO file's order).
    """
    # detectron2 is imported here so that `--help` stays fast
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.detection_utils import read_image
    from detectron2.utils.visualizer import ColorMode, Visualizer

    json_file = split_json(data_dir, split)
    images_dir = image_root(data_dir)
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"{json_file}: file not found")
    name = _dataset_name(split)
    register_coco_dataset(name, os.path.abspath(json_file), os.path.abspath(images_dir))
    dicts = DatasetCatalog.get(name)
    metadata = MetadataCatalog.get(name)
    if limit is not None:
        dicts = dicts[: max(int(limit), 0)]
    out_root = output_folder(data_dir, split, out_dir)
    abs_root = os.path.abspath(images_dir)

    written = []
    state = np.random.get_state()  # Visualizer jitters colours with the global RNG
    try:
        for index, record in enumerate(tqdm(dicts, desc=f"browse {split}", unit="img", disable=not progress)):
            np.random.seed(index)
            image = read_image(record["file_name"], format="RGB")  # EXIF-rotated, like training
            visualizer = Visualizer(image, metadata=metadata, scale=scale, instance_mode=ColorMode.SEGMENTATION)
            drawn = visualizer.draw_dataset_dict(record).get_image()  # RGB uint8
            rel = os.path.relpath(os.path.abspath(record["file_name"]), abs_root)
            if rel.startswith(".."):
                rel = os.path.basename(record["file_name"])
            path = os.path.join(out_root, os.path.splitext(rel)[0] + ".png")
            ok, buf = cv2.imencode(".png", cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
            if not ok:
                raise RuntimeError(f"PNG encoding failed for {record['file_name']}")
            write_bytes(path, buf.tobytes())
            written.append(path)
    finally:
        np.random.set_state(state)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m segkit.data.browse",
                                     description="Write ground-truth overlays of a converted COCO folder as PNGs.")
    parser.add_argument("data_dir", help="folder with <split>.json and images/")
    parser.add_argument("--split", default="val", choices=SPLITS)
    parser.add_argument("--out", default=None, help="output folder (default DATA_DIR/browse); files go to OUT/SPLIT/")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--scale", type=float, default=1.0, help="output scale (default 1.0)")
    args = parser.parse_args(argv)
    try:
        paths = browse(args.data_dir, args.split, args.out, args.limit, args.scale)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} overlay(s) to {output_folder(args.data_dir, args.split, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
