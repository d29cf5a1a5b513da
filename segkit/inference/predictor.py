"""Running a trained checkpoint on images: detectron2's DefaultPredictor, plus what it lacks.

``Predictor.from_checkpoint("output/lite0/model_best.pth")`` reads the config and class names from the
checkpoint (or the config.yaml beside it), builds the model with detectron2's DefaultPredictor
(DetectionCheckpointer loads the weights; ResizeShortestEdge as INPUT.MIN/MAX_SIZE_TEST say; the
model's INPUT.FORMAT), and runs on the GPU when there is one. On top of DefaultPredictor:

- inputs may be numpy arrays (BGR like ``cv2.imread``, or RGB with ``rgb=True``), PIL images or
  paths; EXIF orientation is applied; grayscale, RGBA, palette, 16-bit and CMYK work;
- ``predict_batch`` runs several images as ONE forward pass, under ``torch.inference_mode``;
- results come back as a :class:`Prediction` on the CPU, at the input size, with the class names
  (and a MetadataCatalog entry carrying them, so detectron2's Visualizer prints names);
- U-Net checkpoints (META_ARCHITECTURE "UNet") give ``sem_seg`` ([C, H, W] scores) instead;
- with ``TEST.TILE_SIZE`` > 0 (``predict.py --tile``) large images are cut into overlapping tiles
  run at native resolution and merged (segkit/modeling/tiling.py); ``pred_masks`` is then a
  :class:`~segkit.modeling.tiling.CroppedMasks` (box-sized crops, a full mask made per access);
- ``use_checkpoint_thresholds=True`` keeps, per class, the instances above the F1-maximising score
  threshold the evaluation stored in the checkpoint (``threshold_note`` says which threshold is
  used and why).
"""

import contextlib
import copy
import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from typing import List, Optional

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.modeling import GeneralizedRCNNWithTTA
from detectron2.structures import Instances

from segkit.data.catalog import class_colors
from segkit.data.run_layout import DEFAULT_SCORE_THRESHOLD, KEY_SCORE_THRESHOLD, KEY_SCORE_THRESHOLDS
from segkit.engine.checkpoint import PreloadedCheckpointer, load_for_inference
from segkit.inference.image_io import to_rgb_uint8
import segkit.modeling.unet  # noqa: F401  (registers the UNet meta-architecture)
from segkit.modeling.config import check_test_augmentation, is_semantic
from segkit.modeling.tiling import CroppedMasks, TiledModel

logger = logging.getLogger(__name__)


def default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def metadata_for(class_names, semantic=False):
    """A MetadataCatalog entry holding ``class_names`` (thing_ or stuff_classes) and their colours.

    A process that never registered the training dataset (predict.py, the app) needs this, or
    Visualizer labels instances with bare class indices. The entry's name is derived from the
    names, so the same classes always map to the same entry.
    """
    names = [str(c) for c in class_names]
    key = hashlib.sha1(json.dumps([semantic, names]).encode()).hexdigest()[:12]
    meta = MetadataCatalog.get(f"segkit_inference_{key}")
    colors = class_colors(len(names))
    if semantic:
        if meta.get("stuff_classes") is None:
            meta.set(stuff_classes=names, stuff_colors=colors)
    elif meta.get("thing_classes") is None:
        meta.set(thing_classes=names, thing_colors=colors)
    return meta


@dataclass
class Prediction:
    """What one image gave: instances (Mask R-CNN) or a semantic score map (U-Net).

    ``instances``: detectron2 Instances on the CPU at the input size with ``pred_boxes`` (XYXY
    pixels), ``scores``, ``pred_classes`` (0-based indices into ``class_names``) and ``pred_masks``
    (bool [N, H, W]). ``sem_seg``: float [C, H, W] (class scores; ``class_map()`` takes the argmax).
    ``image``: the RGB uint8 image the model saw (after EXIF and mode conversion), when kept.
    """

    class_names: List[str]
    instances: Optional[Instances] = None
    sem_seg: Optional[torch.Tensor] = None
    image: Optional[np.ndarray] = field(default=None, repr=False)
    file_name: Optional[str] = None

    @property
    def is_semantic(self):
        return self.sem_seg is not None

    @property
    def image_size(self):
        """(height, width) of the input image."""
        if self.instances is not None:
            return tuple(self.instances.image_size)
        if self.sem_seg is not None:
            return tuple(self.sem_seg.shape[-2:])
        return tuple(self.image.shape[:2])

    @property
    def metadata(self):
        return metadata_for(self.class_names, semantic=self.is_semantic)

    def __len__(self):
        return len(self.instances) if self.instances is not None else 0

    def filter(self, min_score=None, classes=None):
        """A copy keeping instances with score >= ``min_score`` whose class is in ``classes``
        (names or indices; None keeps all). Nothing is recomputed: the masks are shared."""
        if self.instances is None:
            return self
        keep = torch.ones(len(self.instances), dtype=torch.bool)
        if min_score is not None:
            keep &= self.instances.scores >= float(min_score)
        if classes is not None:
            wanted = {self.class_names.index(c) if isinstance(c, str) else int(c) for c in classes
                      if not isinstance(c, str) or c in self.class_names}
            keep &= torch.tensor([int(c) in wanted for c in self.instances.pred_classes.tolist()],
                                 dtype=torch.bool)
        return replace(self, instances=self.instances[keep])

    def class_map(self):
        """HxW array of class indices. U-Net: the argmax of sem_seg. Instances: 0 is background and
        i+1 is class i; where instances overlap, the higher score wins."""
        if self.sem_seg is not None:
            return self.sem_seg.argmax(dim=0).numpy().astype(np.uint16 if self.sem_seg.shape[0] > 255 else np.uint8)
        h, w = self.image_size
        out = np.zeros((h, w), dtype=np.uint16 if len(self.class_names) >= 255 else np.uint8)
        if len(self) and self.instances.has("pred_masks"):
            order = torch.argsort(self.instances.scores).tolist()
            masks = self.instances.pred_masks
            classes = self.instances.pred_classes.numpy()
            for i in order:
                if isinstance(masks, CroppedMasks):
                    masks.paint(out, i, classes[i] + 1)
                else:
                    out[masks[i].numpy()] = classes[i] + 1
        return out

    def records(self):
        """One dict per instance: index, class, score, area (mask pixels), box [x0, y0, x1, y1]."""
        if self.instances is None:
            return []
        inst = self.instances
        boxes = inst.pred_boxes.tensor.tolist() if inst.has("pred_boxes") else [None] * len(inst)
        areas = [None] * len(inst)
        if inst.has("pred_masks"):
            masks = inst.pred_masks
            areas = masks.areas().tolist() if isinstance(masks, CroppedMasks) else masks.flatten(1).sum(1).tolist()
        out = []
        for i, (c, s) in enumerate(zip(inst.pred_classes.tolist(), inst.scores.tolist())):
            out.append({
                "index": i,
                "class_id": int(c),
                "class": self.class_names[c] if 0 <= c < len(self.class_names) else str(c),
                "score": float(s),
                "area": None if areas[i] is None else int(areas[i]),
                "box": None if boxes[i] is None else [float(v) for v in boxes[i]],
            })
        return out


class Predictor:
    """DefaultPredictor for our checkpoints; see the module docstring.

    ``predictor(image, rgb=False)`` -> :class:`Prediction`; ``predictor.predict_batch(images)``
    -> list of them from one forward pass.
    """

    def __init__(self, cfg, class_names, device=None, class_thresholds=None, state=None):
        """``class_thresholds``: {class name: minimum score} applied after the model's own
        SCORE_THRESH_TEST (classes not in it keep that one). ``state``: the checkpoint dict of
        MODEL.WEIGHTS when it was read already (from_checkpoint), so the file is read once."""
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.DEVICE = device or default_device()
        self.cfg = cfg
        self.class_names = list(class_names)
        self.semantic = is_semantic(cfg)
        if state is None:
            self.default_predictor = DefaultPredictor(cfg)
        else:
            without_weights = cfg.clone()
            without_weights.MODEL.WEIGHTS = ""  # loaded below from ``state``
            with _quiet("fvcore.common.checkpoint"):  # else it logs "Initializing model from scratch"
                self.default_predictor = DefaultPredictor(without_weights)
            self.default_predictor.cfg = cfg.clone()
            PreloadedCheckpointer(self.default_predictor.model, state).load(cfg.MODEL.WEIGHTS)
        self.model = self.default_predictor.model
        self.aug = self.default_predictor.aug
        self.input_format = self.default_predictor.input_format
        self.device = torch.device(cfg.MODEL.DEVICE)
        self.metadata = metadata_for(self.class_names, semantic=self.semantic)
        self.weights = cfg.MODEL.WEIGHTS
        self.class_thresholds = dict(class_thresholds or {})
        self.stored_thresholds = {}  # what the checkpoint carries, see from_checkpoint
        self.threshold_note = f"score threshold {self.confidence_threshold:g} (MODEL.ROI_HEADS.SCORE_THRESH_TEST)"
        self.tiled = None
        if cfg.TEST.TILE_SIZE > 0:
            if self.semantic:
                raise ValueError("TEST.TILE_SIZE (--tile): tiled prediction is for instance models (Mask R-CNN), "
                                 f"not {cfg.MODEL.META_ARCHITECTURE}")
            self.tiled = TiledModel.from_config(self.model, cfg)
        check_test_augmentation(cfg)
        # detectron2's TTA: TEST.AUG.MIN_SIZES x (flip) passes, boxes merged, masks averaged.
        self.augmented = GeneralizedRCNNWithTTA(cfg, self.model) if cfg.TEST.AUG.ENABLED else None

    @classmethod
    def from_checkpoint(cls, path, config_file=None, device=None, confidence_threshold=None,
                        opts=None, use_checkpoint_thresholds=True, default_threshold=DEFAULT_SCORE_THRESHOLD,
                        loaded=None):
        """Predictor for ``path`` (one of our checkpoints, or a plain detectron2 one with a
        config.yaml beside it or ``config_file``). ``opts``: ``["KEY", "VALUE", ...]`` overrides.
        ``confidence_threshold`` sets the score threshold of every detectron2 head.

        Without ``confidence_threshold`` (and unless ``use_checkpoint_thresholds`` is False), each
        class keeps the instances above its best-F1 threshold stored in the checkpoint (the
        all-classes one for a class without its own), or above ``default_threshold`` when the
        checkpoint has none: what predict.py does. ``loaded``: the checkpoint's
        :class:`~segkit.engine.checkpoint.InferenceCheckpoint` when the caller read it already."""
        loaded = loaded or load_for_inference(str(path), config_file)
        cfg, class_names, stored = loaded.cfg.clone(), loaded.class_names, loaded.thresholds
        cfg.defrost()
        if opts:
            cfg.merge_from_list(list(opts))
        per_class, note = None, None
        if confidence_threshold is not None:
            set_confidence_threshold(cfg, confidence_threshold)
            if use_checkpoint_thresholds:
                note = f"score threshold {float(confidence_threshold):g} for every class, as asked"
        elif use_checkpoint_thresholds:
            overall = stored.get(KEY_SCORE_THRESHOLD)
            per_class = {n: stored.get(KEY_SCORE_THRESHOLDS, {}).get(n, overall) for n in class_names}
            per_class = {n: float(t) for n, t in per_class.items() if t is not None}
            if per_class:
                set_confidence_threshold(cfg, min(per_class.values()))
                note = ("score thresholds from the checkpoint's evaluation (each class's best F1): "
                        + ", ".join(f"{n} {t:.2f}" for n, t in per_class.items()))
            else:
                per_class = None
                set_confidence_threshold(cfg, default_threshold)
                note = (f"score threshold {default_threshold:g}, the default: the checkpoint carries "
                        f"no evaluated threshold")
        predictor = cls(cfg, class_names, device=device, class_thresholds=per_class, state=loaded.state)
        predictor.stored_thresholds = stored
        if note:
            predictor.threshold_note = note
        return predictor

    def with_tiles(self, size, overlap=0.2):
        """A predictor on tiles (``TEST.TILE_SIZE`` ``size``) sharing this one's model and weights."""
        other = copy.copy(self)
        other.cfg = self.cfg.clone()
        other.cfg.defrost()
        other.cfg.TEST.TILE_SIZE = int(size)
        other.cfg.TEST.TILE_OVERLAP = float(overlap)
        check_test_augmentation(other.cfg)
        other.tiled = TiledModel.from_config(self.model, other.cfg)
        return other

    @property
    def confidence_threshold(self):
        return float(self.cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST)

    def preprocess(self, image, rgb=False):
        """(model input dict, RGB uint8 image) for one image, as DefaultPredictor prepares it."""
        tensor, image_rgb = prepare_image(image, self.aug, self.input_format, rgb=rgb)
        height, width = image_rgb.shape[:2]
        return {"image": tensor.to(self.device), "height": height, "width": width}, image_rgb

    def __call__(self, image, rgb=False, keep_image=True):
        return self.predict_batch([image], rgb=rgb, keep_image=keep_image)[0]

    def predict_batch(self, images, rgb=False, keep_image=True):
        """Predictions for ``images`` (a list of anything ``__call__`` takes) from ONE forward pass.

        Images of different sizes are padded to a common size inside the model (detectron2's
        ImageList); with GroupNorm in the backbone that padding slightly changes the scores
        compared with one-at-a-time runs, so batch images of one size where exactness matters.
        """
        if not images:
            return []
        if self.tiled is not None:
            return [self._predict_tiled(im, rgb, keep_image) for im in images]
        prepared = [self.preprocess(im, rgb=rgb) for im in images]
        model = self.model if self.augmented is None else self.augmented
        with torch.inference_mode():
            outputs = model([p[0] for p in prepared])
        results = []
        for (inputs, image_rgb), out, src in zip(prepared, outputs, images):
            name = str(src) if isinstance(src, (str, bytes)) or hasattr(src, "__fspath__") else None
            self._report_limit(out, name)
            results.append(self._to_prediction(out, image_rgb if keep_image else None, name))
        return results

    def _report_limit(self, out, name):
        # A full pass means objects may have been dropped from the results and from AP (tiled
        # passes report their own limits in TiledModel).
        limit = int(self.cfg.TEST.DETECTIONS_PER_IMAGE)
        if "instances" in out and limit > 0 and len(out["instances"]) >= limit:
            logger.warning("%s: reached TEST.DETECTIONS_PER_IMAGE (%d detections); raise it if the image "
                           "holds more objects, or predict on tiles (--tile).", name or "image", limit)

    def _predict_tiled(self, image, rgb, keep_image, progress=None):
        """One image through :class:`TiledModel`: tiles at native resolution, no resize."""
        image_rgb = to_rgb_uint8(image, rgb=rgb, max_pixels=None)
        # A CHW view of the image, not a copy (432 MB at 144 MP); tiles are sliced from it.
        tensor = torch.from_numpy(image_rgb).permute(2, 0, 1)
        name = str(image) if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__") else None
        with torch.inference_mode():
            inst = self.tiled.predict_one(tensor, progress=progress, name=name,
                                          flip_channels=self.input_format != "RGB")
        del tensor
        return self._to_prediction({"instances": inst}, image_rgb if keep_image else None, name)

    def _to_prediction(self, out, image_rgb, file_name):
        if "instances" in out:
            inst = out["instances"].to("cpu")
            if inst.has("pred_masks") and not isinstance(inst.pred_masks, CroppedMasks):
                inst.pred_masks = inst.pred_masks.bool()
            if self.class_thresholds and len(inst):
                minimum = torch.tensor([self.class_thresholds.get(n, 0.0) for n in self.class_names])
                inst = inst[inst.scores > minimum[inst.pred_classes]]
            return Prediction(self.class_names, instances=inst, image=image_rgb, file_name=file_name)
        if "sem_seg" in out:
            return Prediction(self.class_names, sem_seg=out["sem_seg"].float().cpu(),
                              image=image_rgb, file_name=file_name)
        raise ValueError(f"the model returned neither instances nor sem_seg: {sorted(out)}")


@contextlib.contextmanager
def _quiet(logger_name):
    log = logging.getLogger(logger_name)
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def prepare_image(image, aug, input_format, rgb=False):
    """(CHW float32 tensor, RGB uint8 image): the model input of one image, as DefaultPredictor
    prepares it (channel order ``input_format``, resized by ``aug``). Shared by the eager and the
    exported predictors so both see the same pixels."""
    image_rgb = to_rgb_uint8(image, rgb=rgb)
    original = image_rgb if input_format == "RGB" else image_rgb[:, :, ::-1]
    resized = aug.get_transform(original).apply_image(original)
    return torch.as_tensor(np.ascontiguousarray(resized.astype("float32").transpose(2, 0, 1))), image_rgb


def set_confidence_threshold(cfg, threshold):
    """What detectron2's demo does with --confidence-threshold, for every head that has one."""
    cfg.defrost()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = float(threshold)
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = float(threshold)
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = float(threshold)
    return cfg
