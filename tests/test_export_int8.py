"""export_model.py --int8 and --format openvino: the quantized / converted model runs, its accuracy
against the torch model on the val split is stored in the sidecar, an export that loses too much is
refused without leaving a file, and OpenVINO fp32 gives ONNX Runtime fp32's instances."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segkit
from segkit.inference.export import export_model, sidecar_path
from segkit.inference.onnx_predictor import OnnxPredictor, load_exported

ROOT = Path(segkit.__file__).resolve().parents[1]
pytestmark = [pytest.mark.filterwarnings("ignore:torch.meshgrid", "ignore::torch.jit.TracerWarning",
                                         "ignore::DeprecationWarning", "ignore::UserWarning"),
              pytest.mark.usefixtures("one_thread")]


def _openvino():
    # CI installs requirements-deploy.txt (scripts/env.sh); a venv without it skips these tests.
    return pytest.importorskip("openvino", reason="openvino is not installed (requirements-deploy.txt)")


@pytest.fixture(scope="module")
def lite0(trained_lite0_checkpoint, tmp_path_factory):
    """The Lite0 run's checkpoint in a folder of our own (exports go beside it)."""
    d = tmp_path_factory.mktemp("int8")
    ckpt = d / "model_final.pth"
    ckpt.write_bytes(Path(trained_lite0_checkpoint).read_bytes())
    return ckpt


@pytest.fixture(scope="module")
def images(sample_data):
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted((Path(sample_data) / "images").glob("*.jpg"))]


def _parity(path):
    meta = json.loads(Path(sidecar_path(path)).read_text())
    p = meta["parity"]
    assert p["dataset"] == "mydata_trainval" and p["images"] > 0
    for key in ("segm_AP", "bbox_AP"):
        assert p[key] is not None and p[f"{key}_torch"] is not None
        assert p[f"{key}_change"] == pytest.approx(p[key] - p[f"{key}_torch"], abs=1e-3)
    assert p["segm_AP_torch"] > 10  # the torch model found the objects: the comparison means something
    return meta


def test_int8_onnx_runs_and_stores_parity(lite0, images):
    import onnx

    path = export_model(lite0, "onnx", int8=True, calibration_images=4, max_ap_drop=100, check=False)
    assert path.endswith("model_final.int8.onnx")
    meta = _parity(path)
    assert meta["precision"] == "int8" and meta["calibration"] == {"dataset": "mydata_trainval", "images": 4}
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "RoiAlign" in ops  # quantized, heads fp32
    assert meta["quantization"]["nodes_quantized"] > 20
    found = sum(len(OnnxPredictor(path, num_threads=1)(im, rgb=True)) for im in images)
    assert found > 0
    assert not [p for p in os.listdir(lite0.parent) if p.startswith(".")]  # no temporary left


def test_export_losing_too_much_is_refused_and_writes_nothing(lite0):
    """An AP bound no export can meet: the command fails in one line naming the file and the
    numbers, and the file already at --output (a user's earlier export) stays as it was."""
    out = lite0.parent / "refused" / "model.int8.onnx"
    out.parent.mkdir()
    out.write_bytes(b"an earlier export")
    before = sorted(os.listdir(out.parent))
    proc = subprocess.run([sys.executable, str(ROOT / "export_model.py"), "--format", "onnx", "--int8",
                           "--calibration-images", "2", "--max-ap-drop", "-1000", "--weights", str(lite0),
                           "--output", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 1, proc.stderr[-2000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and str(out) in error and "not written" in error and "segm AP" in error
    assert "--max-ap-drop -1000" in error
    assert sorted(os.listdir(out.parent)) == before and out.read_bytes() == b"an earlier export"


def _match(a, b):
    """Same instances (classes, boxes within 1 px, mask IoU >= 0.98) from two predictors."""
    ia, ib = a.instances, b.instances
    assert ia.pred_classes.tolist() == ib.pred_classes.tolist()
    assert torch.allclose(ia.scores, ib.scores, atol=1e-3)
    assert torch.allclose(ia.pred_boxes.tensor, ib.pred_boxes.tensor, atol=1.0)
    if len(ia):
        inter = (ia.pred_masks & ib.pred_masks).flatten(1).sum(1).float()
        union = (ia.pred_masks | ib.pred_masks).flatten(1).sum(1).float().clamp(min=1)
        assert (inter / union).min() >= 0.98
    return len(ia)


# OpenVINO 2026.4.1's CPU plugin returns a garbage class id (float bits, e.g. 1096243168) when the
# graph outputs exactly one instance (the sample's sample_0005.jpg); boxes, scores and masks are right
# and the controllers models (never one instance) match ORT exactly. Strict: a fixed OpenVINO shows up.
OPENVINO_ONE_INSTANCE_BUG = pytest.mark.xfail(strict=True, raises=AssertionError,
                                              reason="OpenVINO CPU: wrong class id when one instance is found")


@OPENVINO_ONE_INSTANCE_BUG
def test_openvino_fp32_matches_onnxruntime(lite0, images):
    _openvino()
    xml = export_model(lite0, "openvino", check=False)
    assert xml.endswith("model_final.xml") and os.path.isfile(xml[:-4] + ".bin")
    meta = _parity(xml)
    assert meta["format"] == "openvino" and meta["precision"] == "fp32"
    assert abs(meta["parity"]["segm_AP_change"]) < 0.5
    onnx_path = export_model(lite0, "onnx", check=False, parity=False)
    ov_pred, ort_pred = load_exported(xml, num_threads=1), OnnxPredictor(onnx_path, num_threads=1)
    blank = np.full((120, 90, 3), 127, np.uint8)  # no detections: empty outputs through OpenVINO
    assert sum(_match(ort_pred(im, rgb=True), ov_pred(im, rgb=True)) for im in images + [blank]) > 0


@OPENVINO_ONE_INSTANCE_BUG
def test_openvino_int8_runs_and_stores_parity(lite0, images):
    _openvino()
    xml = export_model(lite0, "openvino", int8=True, calibration_images=4, max_ap_drop=100, check=False)
    assert xml.endswith("model_final.int8.xml")
    meta = _parity(xml)
    assert meta["precision"] == "int8" and meta["quantization"]["tool"].startswith("nncf")
    assert "FakeQuantize" in Path(xml).read_text()  # NNCF's quantization is in the graph
    assert sum(len(load_exported(xml, num_threads=1)(im, rgb=True)) for im in images) > 0
