"""The torch-free runtime (segkit/inference/runtime.py) and exported models where a checkpoint goes.

A real trained model (the mini config, conftest's trained_mini_checkpoint) is exported to ONNX; the
runtime must give what the torch Predictor gives on the same images: the same classes, boxes within
1 px, mask IoU >= 0.99 (measured: >= 0.9995; the masks differ by a pixel where a probability sits at
0.5 and float32 sums round differently). One test runs it in a venv holding only the pinned
onnxruntime, numpy and Pillow (cached in tests/_artifacts/runtime-venv; no OpenCV either).
"""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import segkit
from segkit.data.run_layout import KEY_SCORE_THRESHOLD, KEY_SCORE_THRESHOLDS

ROOT = Path(segkit.__file__).resolve().parents[1]
VENV = ROOT / "tests" / "_artifacts" / "runtime-venv"
RUNTIME_PACKAGES = ("onnxruntime", "numpy", "Pillow")  # OpenCV is not needed (runtime.py)
pytestmark = [pytest.mark.filterwarnings("ignore:torch.meshgrid", "ignore::torch.jit.TracerWarning"),
              pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def exported(trained_mini_checkpoint, tmp_path_factory):
    """(checkpoint, model.onnx) in a folder of our own; the checkpoint carries the per-class
    thresholds its evaluation stored (the fixture's run evaluates at its end)."""
    from segkit.inference.export import export_model

    d = tmp_path_factory.mktemp("runtime")
    ckpt = d / "model_final.pth"
    ckpt.write_bytes(Path(trained_mini_checkpoint).read_bytes())
    return ckpt, Path(export_model(ckpt, "onnx", check=False))


@pytest.fixture(scope="module")
def images(sample_data, tmp_path_factory):
    """The sample photos as files, plus one shrunk by the resize (800x600 -> 192x144: Pillow's
    filtered bilinear, not OpenCV's, gives detectron2's pixels) and one enlarged (101x77)."""
    d = tmp_path_factory.mktemp("runtime_images")
    paths = sorted((Path(sample_data) / "images").glob("*.jpg"))
    first = np.asarray(Image.open(paths[1]).convert("RGB"))
    for name, size in (("big.png", (800, 600)), ("small.png", (101, 77))):
        Image.fromarray(cv2.resize(first, size, interpolation=cv2.INTER_CUBIC)).save(d / name)
        paths.append(d / name)
    return paths


def mask_iou(a, b):
    inter = (a & b).reshape(len(a), -1).sum(1)
    union = (a | b).reshape(len(a), -1).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def check_same(torch_prediction, classes, scores, boxes, masks):
    inst = torch_prediction.instances
    assert classes.tolist() == inst.pred_classes.tolist()
    assert np.allclose(scores, inst.scores.numpy(), atol=1e-3)
    assert np.abs(boxes - inst.pred_boxes.tensor.numpy()).max(initial=0) <= 1.0
    assert masks.shape == tuple(inst.pred_masks.shape) and masks.dtype == bool
    if len(inst):
        assert mask_iou(masks, inst.pred_masks.numpy()).min() >= 0.99
    return len(inst)


def test_runtime_matches_torch_predictor(exported, images):
    """Same instances as the torch Predictor at the graph's floor, at a threshold chosen at run time,
    and with the run's per-class thresholds the sidecar carries (the Predictor's default)."""
    from segkit.inference.predictor import Predictor
    from segkit.inference.runtime import load_model

    ckpt, onnx_path = exported
    meta = json.loads(Path(f"{onnx_path}.json").read_text())
    stored = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert meta.get(KEY_SCORE_THRESHOLDS) == stored.get(KEY_SCORE_THRESHOLDS)
    assert meta.get(KEY_SCORE_THRESHOLD) == stored.get(KEY_SCORE_THRESHOLD)
    assert meta.get(KEY_SCORE_THRESHOLDS), "the trained run should carry per-class thresholds"

    floor = meta["score_thresh_test"]
    cases = [(Predictor.from_checkpoint(ckpt, device="cpu", use_checkpoint_thresholds=False),
              load_model(onnx_path, score_threshold=floor, num_threads=1)),
             (Predictor.from_checkpoint(ckpt, device="cpu", confidence_threshold=0.6),
              load_model(onnx_path, score_threshold=0.6, num_threads=1)),
             (Predictor.from_checkpoint(ckpt, device="cpu"), load_model(onnx_path, num_threads=1))]
    counts = []
    for predictor, model in cases:
        found = 0
        for path in images:
            det, want = model(path), predictor(path)
            assert det.image_size == want.image_size and det.class_names == want.class_names
            found += check_same(want, det.classes, det.scores, det.boxes, det.masks)
        counts.append(found)
    assert counts[0] > counts[1] > 0  # the threshold chosen at run time removes instances


def _pins():
    """pip requirement lines of the runtime's packages, from requirements.txt."""
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    wanted = {p.lower() for p in RUNTIME_PACKAGES}
    pins = [l.strip() for l in lines if re.split(r"[=<>!~\[ ]", l.strip(), 1)[0].lower() in wanted]
    assert len(pins) == len(RUNTIME_PACKAGES), pins
    return pins


def runtime_venv():
    """A venv with only the runtime's pinned packages (made once, reused while the pins are the same)."""
    pins = _pins()
    stamp = VENV / "pins.txt"
    python = VENV / "bin" / "python"
    if stamp.is_file() and stamp.read_text() == "\n".join(pins) and python.is_file():
        return python
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run([str(base), "-m", "venv", "--clear", str(VENV)], check=True, capture_output=True, timeout=300)
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.skip(f"pip could not install {' '.join(pins)}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    stamp.write_text("\n".join(pins))
    return python


NO_TORCH_SCRIPT = """
import importlib.util, json, sys
import numpy as np
for name in ("torch", "detectron2", "torchvision", "cv2"):
    assert importlib.util.find_spec(name) is None, name + " is importable"
from segkit.inference.runtime import load_model
model = load_model(sys.argv[1], num_threads=1)
out = {}
for i, path in enumerate(sys.argv[3:]):
    d = model(path)
    out.update({f"{i}_classes": d.classes, f"{i}_scores": d.scores, f"{i}_boxes": d.boxes, f"{i}_masks": d.masks})
np.savez_compressed(sys.argv[2], **out)
assert "torch" not in sys.modules and "detectron2" not in sys.modules
print(json.dumps(model.class_names))
"""


def test_runtime_without_torch(exported, images, tmp_path):
    """In a venv without torch: the runtime's instances are the torch Predictor's (the run's per-class
    thresholds on both sides), and the installed packages stay under 300 MB."""
    from segkit.inference.predictor import Predictor

    ckpt, onnx_path = exported
    python = runtime_venv()
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    size = sum(f.stat().st_size for f in Path(site).rglob("*") if f.is_file())
    assert size < 300e6, f"the runtime's install is {size / 1e6:.0f} MB"
    out = tmp_path / "runtime.npz"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([str(python), "-c", NO_TORCH_SCRIPT, str(onnx_path), str(out), *map(str, images)],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == predictor.class_names
    got = np.load(out)
    found = sum(check_same(predictor(path), *(got[f"{i}_{k}"] for k in ("classes", "scores", "boxes", "masks")))
                for i, path in enumerate(images))
    assert found > 0


def test_predict_cli_on_onnx(exported, images, tmp_path):
    """predict.py --weights model.onnx writes the results the checkpoint's run writes."""
    from pycocotools import mask as mask_util

    from segkit.inference.predict_cli import main

    ckpt, onnx_path = exported
    runs = {}
    for name, weights in (("pth", ckpt), ("onnx", onnx_path)):
        out = tmp_path / name
        assert main(["--input", *map(str, images), "--output", str(out), "--weights", str(weights), "--quiet"]) == 0
        runs[name] = json.loads((out / "results.json").read_text())
    a, b = runs["pth"], runs["onnx"]
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert (x["image_id"], x["category_id"], x["file_name"]) == (y["image_id"], y["category_id"], y["file_name"])
        assert abs(x["score"] - y["score"]) < 1e-3
        assert np.abs(np.subtract(x["bbox"], y["bbox"])).max() <= 1.0
        assert mask_util.iou([y["segmentation"]], [x["segmentation"]], [0])[0, 0] >= 0.99

    err = tmp_path / "tile"
    assert main(["--input", str(images[0]), "--output", str(err), "--weights", str(onnx_path), "--tile", "96"]) == 2


def test_app_loads_onnx(exported, images):
    """The app's model loader takes an exported model as it takes a checkpoint."""
    from segkit.app.model import AppModel
    from segkit.inference.predictor import Predictor

    ckpt, onnx_path = exported
    model = AppModel(onnx_path)
    assert model.ready and model.error is None, model.error
    eager = Predictor.from_checkpoint(ckpt, device="cpu")
    assert model.class_names == eager.class_names
    stored = eager.stored_thresholds[KEY_SCORE_THRESHOLD]
    assert model.default_score == min(max(round(float(stored), 2), 0.05), 1.0)
    image = np.asarray(Image.open(images[0]).convert("RGB"))
    got = model.predict(image)
    want = Predictor.from_checkpoint(ckpt, device="cpu", confidence_threshold=0.05)(image, rgb=True)
    check_same(want, got.instances.pred_classes.numpy(), got.instances.scores.numpy(),
               got.instances.pred_boxes.tensor.numpy(), got.instances.pred_masks.numpy())
    assert "GeneralizedRCNN" in model.info_markdown()
    assert model.tile_size == 0  # no "Tiles" option: tiles run on the checkpoint


def test_bad_exported_files(exported, tmp_path):
    """A model without its sidecar, or a file that is no model: one line naming the file."""
    from segkit.inference.runtime import ModelFileError, load_model

    _, onnx_path = exported
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(onnx_path.read_bytes())
    with pytest.raises(ModelFileError, match=r"lone\.onnx\.json: not found"):
        load_model(lone)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    Path(f"{junk}.json").write_text(Path(f"{onnx_path}.json").read_text())
    with pytest.raises(ModelFileError, match=r"junk\.onnx: onnxruntime cannot load it"):
        load_model(junk)


def test_runtime_unet(unet_checkpoint, images, tmp_path):
    """A U-Net export: the runtime's class scores at the input size are the torch Predictor's."""
    from segkit.inference.export import export_model
    from segkit.inference.predictor import Predictor
    from segkit.inference.runtime import load_model

    ckpt = unet_checkpoint.path
    path = export_model(ckpt, "onnx", output=tmp_path / "unet.onnx", sample_image=images[0], check=False)
    model, eager = load_model(path, num_threads=1), Predictor.from_checkpoint(ckpt, device="cpu")
    for image in (images[0], images[-1]):
        got, want = model(image), eager(image)
        assert got.sem_seg.shape == tuple(want.sem_seg.shape)
        assert np.allclose(got.sem_seg, want.sem_seg.numpy(), atol=1e-3)
        assert (got.class_map() == want.class_map()).mean() > 0.999
