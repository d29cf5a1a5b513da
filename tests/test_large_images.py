"""predict.py --tile on a 12,000 x 12,000 photo mosaic, through the whole CLI: no size cap, and the
decode, the tiles, the overlay and the masks stay within a memory bound."""

import base64
import csv
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, SHARED

sys.path.insert(0, str(ROOT / "benchmarks"))
from peak_rss import run_with_peak_rss  # noqa: E402  (the measurement benchmarks/tiling.py makes too)

CONTROLLERS = SHARED / "datasets" / "controllers"
SIDE = 12_000



def photo_mosaic(path, side=SIDE):
    """The controllers frames (real 640 x 352 photos) laid edge to edge into one side x side JPEG."""
    frames = []
    for f in sorted((CONTROLLERS / "train").glob("*.json"))[:20]:
        data = base64.b64decode(json.loads(f.read_text())["imageData"])
        frames.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    out = np.zeros((side, side, 3), np.uint8)
    k = 0
    for y in range(0, side, 352):
        for x in range(0, side, 640):
            frame = frames[k % len(frames)]
            k += 1
            out[y:y + 352, x:x + 640] = frame[:side - y, :side - x]
    Image.fromarray(out).save(path, quality=90)
    return path


def narrow_mask_rcnn(path):
    """A detectron2 Mask R-CNN (R50-FPN layout, a few channels per layer, random weights): a real
    model through Predictor, cheap enough to run 225 tiles of 1024 px in a test; at a low threshold
    it finds thousands of instances, as a dense large image does."""
    import torch
    from detectron2.modeling import build_model

    from segkit.modeling.config import get_segkit_cfg

    cfg = get_segkit_cfg()
    cfg.merge_from_file(str(ROOT / "configs" / "mask_rcnn_R_18_FPN_mini.yaml"))
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 8
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 16
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 4
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    cfg.MODEL.FPN.NORM = ""
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 16
    cfg.MODEL.ROI_MASK_HEAD.NORM = ""
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg)
    torch.save({"model": model.state_dict(), "config": cfg.dump(), "iteration": 0,
                "class_names": ["disc", "square", "triangle"]}, path)
    return path


@pytest.mark.slow
@pytest.mark.skipif(not CONTROLLERS.is_dir(), reason="../shared/datasets/controllers is not present")
def test_predict_tile_runs_a_12000px_photo_in_bounded_memory(tmp_path):
    image = photo_mosaic(tmp_path / "mosaic.jpg")
    weights = narrow_mask_rcnn(tmp_path / "narrow.pth")
    out = tmp_path / "out"
    proc, peak_mb = run_with_peak_rss(
        ROOT / "predict.py", "--input", image, "--output", out, "--weights", weights, "--tile", "1024",
        "--confidence-threshold", "0.05", "--quiet", "--opts", "TEST.DETECTIONS_PER_IMAGE", "20",
        cwd=ROOT, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    images = json.loads((out / "images.json").read_text())["images"]
    assert [(im["width"], im["height"]) for im in images] == [(SIDE, SIDE)]
    assert len(results) > 1000  # thousands of instances: the masks cannot be one PNG each
    with open(out / "counts.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert int(row["instances"]) == len(results)
    assert f"{len(results)} instance(s)" in proc.stdout
    instance_map = np.asarray(Image.open(out / "instance_maps" / "mosaic.png"))
    assert instance_map.shape == (SIDE, SIDE) and 0 < instance_map.max() <= len(results)
    assert not (out / "masks").exists()
    assert max(Image.open(out / "overlays" / "mosaic.png").size) == 4096  # drawn at display scale
    # The image is 432 MB. Measured: 1.6 GB; with a full-size overlay 3.8 GB, with the decode's
    # extra copies (Pillow's exif_transpose copy, tobytes) 2.4 GB.
    assert peak_mb < 2000, peak_mb
