"""export_model.py: ONNX and TorchScript exports give the PyTorch predictor's instances."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import segkit
from segkit.inference.export import export_model, sidecar_path
from segkit.inference.onnx_predictor import OnnxPredictor, TorchScriptPredictor
from segkit.inference.predictor import Predictor

ROOT = Path(segkit.__file__).resolve().parents[1]
pytestmark = [pytest.mark.filterwarnings("ignore:torch.meshgrid", "ignore::torch.jit.TracerWarning"),
              pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def exported(trained_mini_checkpoint, tmp_path_factory):
    """The checkpoint (hard-linked into a folder of our own) exported both ways; ONNX through the
    command line, TorchScript in-process."""
    d = tmp_path_factory.mktemp("export")
    ckpt = d / "model_final.pth"
    os.link(trained_mini_checkpoint, ckpt) if _same_fs(trained_mini_checkpoint, d) else \
        ckpt.write_bytes(Path(trained_mini_checkpoint).read_bytes())
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "export_model.py"), "--format", "onnx",
                           "--weights", str(ckpt)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ts = export_model(ckpt, "torchscript", check=False)
    return {"onnx": d / "model_final.onnx", "torchscript": Path(ts), "checkpoint": ckpt}


def _same_fs(a, b):
    return os.stat(a).st_dev == os.stat(b).st_dev


@pytest.fixture(scope="module")
def eager(trained_mini_checkpoint):
    return Predictor.from_checkpoint(trained_mini_checkpoint, device="cpu", use_checkpoint_thresholds=False)


@pytest.fixture(scope="module")
def test_images(sample_data):
    """The sample images, plus one at another size and aspect (dynamic axes) and a blank one."""
    paths = sorted((Path(sample_data) / "images").glob("*.jpg"))
    imgs = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    big = cv2.resize(imgs[1], (301, 173), interpolation=cv2.INTER_LINEAR)
    blank = np.full((120, 90, 3), 127, np.uint8)
    return imgs + [big, blank]


def mask_iou(a, b):
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def check_parity(eager, other, images):
    found = 0
    for img in images:
        a, b = eager(img, rgb=True), other(img, rgb=True)
        assert a.image_size == b.image_size
        ia, ib = a.instances, b.instances
        assert ia.pred_classes.tolist() == ib.pred_classes.tolist()
        assert torch.allclose(ia.scores, ib.scores, atol=1e-3)
        assert torch.allclose(ia.pred_boxes.tensor, ib.pred_boxes.tensor, atol=0.05)
        assert ib.pred_masks.shape == ia.pred_masks.shape and ib.pred_masks.dtype == torch.bool
        if len(ia):
            assert mask_iou(ia.pred_masks, ib.pred_masks).min() >= 0.995
        found += len(ia)
    assert found > 0


def test_sidecar(exported, eager):
    for fmt in ("onnx", "torchscript"):
        meta = json.loads(Path(sidecar_path(exported[fmt])).read_text())
        assert meta["format"] == fmt and meta["class_names"] == eager.class_names
        assert meta["input_format"] == eager.cfg.INPUT.FORMAT
        assert meta["min_size_test"] == eager.cfg.INPUT.MIN_SIZE_TEST
        assert meta["max_size_test"] == eager.cfg.INPUT.MAX_SIZE_TEST
        assert meta["outputs"] == ["boxes", "classes", "mask_probs", "scores", "image_size"]
    assert json.loads(Path(sidecar_path(exported["onnx"])).read_text())["onnx_opset"] == 17


def test_onnx_parity(exported, eager, test_images):
    import onnx

    model = onnx.load(str(exported["onnx"]), load_external_data=False)
    assert model.opset_import[0].version == 17
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[1:]] == ["height", "width"]  # dynamic H/W
    check_parity(eager, OnnxPredictor(exported["onnx"], num_threads=1), test_images)


def test_torchscript_parity(exported, eager, test_images):
    check_parity(eager, TorchScriptPredictor(exported["torchscript"]), test_images)


def test_exported_predictor_interface(exported, sample_data):
    onnx_pred = OnnxPredictor(exported["onnx"], confidence_threshold=0.9)
    path = sorted((Path(sample_data) / "images").glob("*.jpg"))[0]
    a = onnx_pred(path)
    b = onnx_pred(cv2.imread(str(path)))  # BGR by default, like the Predictor
    assert a.file_name == str(path) and b.file_name is None
    assert a.instances.scores.tolist() == b.instances.scores.tolist()
    assert (a.instances.scores >= 0.9).all()
    assert len(onnx_pred.predict_batch([path, path])) == 2
    assert list(a.metadata.thing_classes) == a.class_names


def test_lite0_export_parity(trained_lite0_checkpoint, test_images, tmp_path):
    """The pretrained EfficientNet-Lite0 Mask R-CNN exports both ways with the same outputs."""
    ckpt = tmp_path / "model_final.pth"
    ckpt.write_bytes(Path(trained_lite0_checkpoint).read_bytes())
    eager = Predictor.from_checkpoint(ckpt, device="cpu", use_checkpoint_thresholds=False)
    assert eager.cfg.INPUT.FORMAT == "RGB"
    for fmt, runtime in (("onnx", OnnxPredictor), ("torchscript", TorchScriptPredictor)):
        path = export_model(ckpt, fmt, check=False)
        check_parity(eager, runtime(path), test_images)


def test_unet_export(unet_checkpoint, sample_data):
    """U-Net checkpoints export too; the exported class map equals the eager one."""
    ckpt = unet_checkpoint.path
    image = sorted((Path(sample_data) / "images").glob("*.jpg"))[0]
    eager = Predictor.from_checkpoint(ckpt, device="cpu", use_checkpoint_thresholds=False)(image)
    for fmt in ("onnx", "torchscript"):
        path = export_model(ckpt, fmt, sample_image=image, check=False)
        other = (OnnxPredictor if fmt == "onnx" else TorchScriptPredictor)(path)(image)
        assert other.is_semantic and other.sem_seg.shape == eager.sem_seg.shape
        assert torch.allclose(other.sem_seg, eager.sem_seg, atol=1e-3)
        assert np.array_equal(other.class_map(), eager.class_map())
