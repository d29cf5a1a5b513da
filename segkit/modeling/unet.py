"""U-Net semantic segmentation as a detectron2 meta-architecture (``MODEL.META_ARCHITECTURE "UNet"``).

The network is ``segmentation_models_pytorch.Unet`` with a ResNet (or any smp) encoder; around it
this module does what detectron2's ``SemanticSegmentor`` does, so ``train_net.py``, the
checkpointer, hooks, ``launch`` and ``--resume`` work unchanged:

* input: ``DatasetMapper`` dicts (``image`` CHW uint8 in ``INPUT.FORMAT``, optional ``sem_seg``
  HxW long with ``MODEL.SEM_SEG_HEAD.IGNORE_VALUE`` for "don't care");
* normalisation with ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD`` (in ``INPUT.FORMAT`` channel order; BGR
  input is flipped to the RGB order smp's ImageNet encoders expect), padding to a multiple of
  ``MODEL.UNET.SIZE_DIVISIBILITY`` (at least ``2 ** ENCODER_DEPTH``) with ``ImageList``;
* training returns ``{"loss_sem_seg": cross-entropy}`` plus ``"loss_dice"`` when
  ``MODEL.UNET.LOSSES`` contains ``"dice"`` (weighted by ``MODEL.UNET.DICE_WEIGHT``);
* inference returns ``[{"sem_seg": Tensor[C, H, W]}]``: per-class logits resized to each input's
  ``height`` / ``width`` by detectron2's ``sem_seg_postprocess`` (argmax gives the class map).

Importing this module registers ``UNet``; segmentation_models_pytorch is imported only when a model
is built. ``MODEL.UNET.ENCODER_WEIGHTS "imagenet"`` downloads the encoder weights from the Hugging
Face hub on first use (smp 0.6 stores them in its cache); offline, building stops at once with
:class:`EncoderWeightsUnavailable`, whose message says what to set or where to put the files.
"""

import math
import os
import socket
from typing import Sequence
from urllib.parse import urlparse

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList

from segkit.modeling.weights import WeightsUnavailableError

__all__ = ["UNet", "EncoderWeightsUnavailable", "build_smp_unet", "LOSS_NAMES"]

LOSS_NAMES = ("ce", "dice")
_PROBE_TIMEOUT_S = 3.0


class EncoderWeightsUnavailable(WeightsUnavailableError):
    """Pretrained encoder weights were asked for but cannot be downloaded (offline, blocked)."""


def _weights_cache_dir(encoder, weights):
    """(hub repo URL, folder that would hold the files) for an smp encoder, or (None, cache root)."""
    from huggingface_hub import constants
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders.get(encoder, {}).get("pretrained_settings", {}).get(weights)
    if not settings:
        return None, constants.HF_HUB_CACHE
    repo_id, revision = settings["repo_id"], settings["revision"]
    folder = os.path.join(constants.HF_HUB_CACHE, "models--" + repo_id.replace("/", "--"),
                          "snapshots", revision)
    return f"{constants.ENDPOINT}/{repo_id}", folder


def _weights_cached(folder):
    return all(os.path.isfile(os.path.join(folder, f)) for f in ("config.json", "model.safetensors"))


def _hub_unreachable():
    """Reason string when the Hugging Face hub (or the proxy in front of it) cannot be reached, else None.

    huggingface_hub itself retries for about half a minute before giving up; this probe answers in
    at most a few seconds so that an offline run stops at once.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    proxy = next((os.environ[k] for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
                  if os.environ.get(k)), None)
    url = urlparse(proxy if proxy else constants.ENDPOINT)
    host = url.hostname
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as e:
        return f"{host}:{port} is unreachable: {e.strerror or e}"
    return None


def _offline_message(encoder, weights, reason, repo_url, folder):
    """One sentence, in the style of the Mask R-CNN message of segkit.engine.checkpoint."""
    where = (f"place config.json and model.safetensors from {repo_url} in {folder}"
             if repo_url else f"run once online to fill the Hugging Face cache {folder}")
    return (f"Could not download the '{weights}' weights of the U-Net encoder {encoder} ({reason}): "
            f"{where}, or set MODEL.UNET.ENCODER_WEIGHTS \"\" to train from scratch.")


def build_smp_unet(encoder, encoder_depth, encoder_weights, decoder_channels, num_classes,
                   in_channels=3):
    """smp.Unet with the given encoder; ``encoder_weights`` "" / "none" / None means random init.

    Raises EncoderWeightsUnavailable (one sentence) when weights are asked for and cannot be had.
    """
    import segmentation_models_pytorch as smp

    decoder_channels = tuple(int(c) for c in decoder_channels)
    if len(decoder_channels) != int(encoder_depth):
        raise ValueError(
            f"MODEL.UNET.DECODER_CHANNELS has {len(decoder_channels)} entries but "
            f"MODEL.UNET.ENCODER_DEPTH is {encoder_depth}: give one decoder width per encoder stage.")
    weights = encoder_weights or None
    if isinstance(weights, str) and weights.lower() in ("none", "null"):
        weights = None
    if weights is not None:
        repo_url, folder = _weights_cache_dir(encoder, weights)
        if not (repo_url and _weights_cached(folder)):
            reason = _hub_unreachable()
            if reason:
                raise EncoderWeightsUnavailable(
                    _offline_message(encoder, weights, reason, repo_url, folder))
    try:
        return smp.Unet(
            encoder_name=encoder,
            encoder_depth=int(encoder_depth),
            encoder_weights=weights,
            decoder_channels=decoder_channels,
            in_channels=in_channels,
            classes=int(num_classes),
        )
    except (OSError, ConnectionError) as e:  # huggingface_hub errors derive from OSError
        if weights is None:
            raise
        repo_url, folder = _weights_cache_dir(encoder, weights)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EncoderWeightsUnavailable(
            _offline_message(encoder, weights, reason, repo_url, folder)) from None


def _num_classes_from_cfg(cfg):
    """MODEL.SEM_SEG_HEAD.NUM_CLASSES, or -1 resolved from the first training set's stuff_classes."""
    n = int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    if n > 0:
        return n
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for name in cfg.DATASETS.TRAIN:
        if name in DatasetCatalog.list():
            classes = MetadataCatalog.get(name).get("stuff_classes")
            if classes:
                return len(classes)
    raise ValueError(
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES is -1 (take it from the dataset) but no dataset of "
        f"DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)} is registered with stuff_classes: register it "
        "first (segkit.data.semantic) or set MODEL.SEM_SEG_HEAD.NUM_CLASSES.")


@META_ARCH_REGISTRY.register()
class UNet(nn.Module):
    """detectron2 meta-architecture around smp.Unet; see the module docstring for the contract."""

    @configurable
    def __init__(
        self,
        *,
        net: nn.Module,
        num_classes: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: str = "BGR",
        size_divisibility: int = 32,
        ignore_value: int = 255,
        losses: Sequence[str] = ("ce",),
        dice_weight: float = 1.0,
    ):
        super().__init__()
        unknown = [x for x in losses if x not in LOSS_NAMES]
        if unknown or not losses:
            raise ValueError(f"MODEL.UNET.LOSSES {tuple(losses)}: expected a non-empty subset of {LOSS_NAMES}")
        self.net = net
        self.num_classes = int(num_classes)
        self.input_format = input_format
        self.size_divisibility = int(size_divisibility)
        self.ignore_value = int(ignore_value)
        self.losses = tuple(losses)
        self.dice_weight = float(dice_weight)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
        self._dice = None
        if "dice" in self.losses:
            from segmentation_models_pytorch.losses import DiceLoss

            self._dice = DiceLoss(mode="multiclass", from_logits=True, ignore_index=self.ignore_value)

    @classmethod
    def from_config(cls, cfg):
        u = cfg.MODEL.UNET
        num_classes = _num_classes_from_cfg(cfg)
        depth = int(u.ENCODER_DEPTH)
        return {
            "net": build_smp_unet(u.ENCODER, depth, u.ENCODER_WEIGHTS, u.DECODER_CHANNELS, num_classes,
                                  in_channels=len(cfg.MODEL.PIXEL_MEAN)),
            "num_classes": num_classes,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            # the encoder halves the resolution ENCODER_DEPTH times: pad to a multiple of both
            "size_divisibility": math.lcm(max(int(u.SIZE_DIVISIBILITY), 1), 2 ** depth),
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "losses": tuple(u.LOSSES),
            "dice_weight": u.DICE_WEIGHT,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs):
        """Normalise, reorder BGR -> RGB, pad into one batch (an ImageList keeping the true sizes)."""
        images = [x["image"].to(self.device).float() for x in batched_inputs]
        images = [(x - self.pixel_mean) / self.pixel_std for x in images]
        if self.input_format == "BGR" and images[0].shape[0] == 3:
            images = [x.flip(0) for x in images]
        return ImageList.from_tensors(images, self.size_divisibility)

    def losses_from_logits(self, logits, targets):
        """Loss dict for logits N x C x H x W and targets N x H x W (ignore_value = don't care)."""
        valid = (targets != self.ignore_value).sum()
        out = {}
        if "ce" in self.losses:
            # sum / count instead of mean: a batch whose pixels are all ignored gives 0, not NaN
            ce = F.cross_entropy(logits, targets, ignore_index=self.ignore_value, reduction="sum")
            out["loss_sem_seg"] = ce / valid.clamp(min=1)
        if self._dice is not None:
            dice = self._dice(logits, targets) if valid > 0 else logits.sum() * 0.0
            out["loss_dice"] = self.dice_weight * dice
        return out

    def forward(self, batched_inputs):
        images = self.preprocess_image(batched_inputs)
        logits = self.net(images.tensor)
        if self.training:
            if "sem_seg" not in batched_inputs[0]:
                raise ValueError("UNet in training mode needs 'sem_seg' targets (DatasetMapper with "
                                 "datasets that have sem_seg_file_name)")
            targets = [x["sem_seg"].to(self.device) for x in batched_inputs]
            targets = ImageList.from_tensors(targets, self.size_divisibility, self.ignore_value).tensor
            return self.losses_from_logits(logits, targets.long())
        results = []
        for result, input_per_image, image_size in zip(logits, batched_inputs, images.image_sizes):
            height = input_per_image.get("height", image_size[0])
            width = input_per_image.get("width", image_size[1])
            results.append({"sem_seg": sem_seg_postprocess(result, image_size, height, width)})
        return results
