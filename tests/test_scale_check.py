"""benchmarks/scale_check.py on 3 photos through labelme2coco: the set it builds is what the numbers
in docs/benchmarks.md claim (12 MP LabelMe photos of the real frames, 144 objects each, imageData
embedded) and every row has a measured peak."""

import base64
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, SHARED
from PIL import Image

FRAMES = SHARED / "datasets" / "controllers"


@pytest.mark.skipif(not FRAMES.is_dir(), reason="../shared/datasets/controllers is not present")
def test_three_photos_through_labelme2coco(tmp_path):
    work, results = tmp_path / "work", tmp_path / "scale.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale_check.py"), "--images", "3",
                           "--tools", "labelme2coco", "--work", str(work), "--keep", "--results", str(results)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(results.read_text())
    assert [r["tool"] for r in out["rows"]] == ["labelme2coco"]
    row = out["rows"][0]
    assert row["images"] == 3 and row["peak_rss_mb"] > 20 and row["target_met"]

    doc = json.loads((work / "labelme" / "photo_00001.json").read_text())
    jpeg = base64.b64decode(doc["imageData"])
    assert jpeg == (work / "labelme" / doc["imagePath"]).read_bytes()
    photo = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    assert photo.shape == (3000, 4000, 3) and (doc["imageWidth"], doc["imageHeight"]) == (4000, 3000)
    assert len(doc["shapes"]) == 144
    coco = json.loads((work / "data" / "trainval.json").read_text())
    assert len(coco["images"]) == 3 and len(coco["annotations"]) == 3 * 144

    # each shape sits on its frame's object: the frame whose first polygon matches, moved by its cell
    frames = {}
    for f in FRAMES.glob("*/*.json"):
        d = json.loads(f.read_text())
        frames[json.dumps(np.round(np.subtract(d["shapes"][0]["points"], d["shapes"][0]["points"][0]), 3).tolist())] = f
    first = doc["shapes"][0]
    key = json.dumps(np.round(np.subtract(first["points"], first["points"][0]), 3).tolist())
    source = frames[key]
    src = np.asarray(Image.open(source.with_suffix(".png")).convert("RGB"), dtype=np.int16)
    x0 = int(round(first["points"][0][0] - json.loads(source.read_text())["shapes"][0]["points"][0][0]))
    y0 = int(round(first["points"][0][1] - json.loads(source.read_text())["shapes"][0]["points"][0][1]))
    cell = photo[y0:y0 + src.shape[0], x0:x0 + src.shape[1]].astype(np.int16)
    assert cell.shape == src.shape and np.abs(cell - src).mean() < 4  # the frame, JPEG-compressed
