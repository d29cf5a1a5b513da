"""Running exported models (``export_model.py``) with the Predictor's interface.

``OnnxPredictor("output/model_final.onnx")`` (onnxruntime) and ``TorchScriptPredictor(
"output/model_final.ts")`` take what :class:`~segkit.inference.predictor.Predictor` takes (numpy
BGR or ``rgb=True``, PIL, path) and return the same :class:`Prediction`. The steps outside the
graph, as detectron2 does them:

1. ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST) - detectron2's own transform;
2. the graph: boxes, classes, 28x28 mask probabilities, scores at the resized size;
3. detectron2's ``detector_postprocess``: boxes scaled to the input size, clipped, empty boxes
   dropped, masks pasted into their boxes (``paste_masks_in_image``) and thresholded.

Preprocessing is the eager Predictor's own (``prepare_image``).

The score threshold is the one baked in at export (the sidecar says which);
``confidence_threshold`` can only raise it.
"""

import json
import os
import warnings

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.structures import Boxes, Instances

from detectron2.modeling.postprocessing import detector_postprocess

from segkit.inference.predictor import Prediction, metadata_for, prepare_image


def read_sidecar(model_path):
    path = os.fspath(model_path) + ".json"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: it is written by export_model.py beside the model")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class ExportedPredictor:
    """Shared pre- and post-processing; subclasses implement ``_run(chw_float32) -> dict``."""

    def __init__(self, model_path, confidence_threshold=None):
        self.model_path = os.fspath(model_path)
        self.meta = read_sidecar(model_path)
        self.class_names = list(self.meta["class_names"])
        self.semantic = self.meta.get("outputs") == ["sem_seg"]
        self.input_format = self.meta.get("input_format", "BGR")
        self.aug = T.ResizeShortestEdge([self.meta["min_size_test"]] * 2, self.meta["max_size_test"])
        self.mask_threshold = float(self.meta.get("mask_threshold", 0.5))
        baked = float(self.meta.get("score_thresh_test", 0.0))
        if confidence_threshold is not None and confidence_threshold < baked:
            warnings.warn(f"the model was exported with score threshold {baked}; instances below it "
                          f"cannot be recovered (export again with a lower SCORE_THRESH_TEST)")
        self.confidence_threshold = max(baked, float(confidence_threshold or 0.0))
        self.metadata = metadata_for(self.class_names, semantic=self.semantic)

    def preprocess(self, image, rgb=False):
        tensor, image_rgb = prepare_image(image, self.aug, self.input_format, rgb=rgb)
        return tensor.numpy(), image_rgb

    def __call__(self, image, rgb=False, keep_image=True):
        chw, image_rgb = self.preprocess(image, rgb=rgb)
        outputs = self._run(chw)
        name = str(image) if isinstance(image, str) or hasattr(image, "__fspath__") else None
        return self._postprocess(outputs, chw.shape[1:], image_rgb, keep_image, name)

    def predict_batch(self, images, rgb=False, keep_image=True):
        """One image at a time: the exported graph takes a single image."""
        return [self(im, rgb=rgb, keep_image=keep_image) for im in images]

    def _postprocess(self, out, resized_hw, image_rgb, keep_image, file_name):
        h, w = image_rgb.shape[:2]
        keep_img = image_rgb if keep_image else None
        if self.semantic:
            sem = torch.from_numpy(np.asarray(out["sem_seg"], dtype=np.float32))
            if sem.dim() == 4:
                sem = sem[0]
            if tuple(sem.shape[-2:]) != (h, w):
                sem = torch.nn.functional.interpolate(sem[None], size=(h, w), mode="bilinear",
                                                      align_corners=False)[0]
            return Prediction(self.class_names, sem_seg=sem, image=keep_img, file_name=file_name)
        scores = torch.as_tensor(np.asarray(out["scores"], dtype=np.float32).reshape(-1))
        keep = scores >= self.confidence_threshold
        inst = Instances((int(resized_hw[0]), int(resized_hw[1])))
        inst.pred_boxes = Boxes(torch.as_tensor(np.asarray(out["boxes"], dtype=np.float32).reshape(-1, 4))[keep])
        inst.scores = scores[keep]
        inst.pred_classes = torch.as_tensor(np.asarray(out["classes"]).reshape(-1).astype(np.int64))[keep]
        if "mask_probs" in out:
            probs = torch.as_tensor(np.asarray(out["mask_probs"], dtype=np.float32))
            inst.pred_masks = (probs if probs.dim() == 4 else probs[:, None])[keep]
        with torch.inference_mode():
            inst = detector_postprocess(inst, h, w, mask_threshold=self.mask_threshold)
        if inst.has("pred_masks"):
            inst.pred_masks = inst.pred_masks.bool()
        return Prediction(self.class_names, instances=inst, image=keep_img, file_name=file_name)


class OnnxPredictor(ExportedPredictor):
    """An exported ``.onnx`` model on onnxruntime (CUDA provider when onnxruntime has it)."""

    def __init__(self, model_path, confidence_threshold=None, providers=None, num_threads=None):
        super().__init__(model_path, confidence_threshold)
        from segkit.inference.runtime import OnnxBackend

        self.backend = OnnxBackend(self.model_path, num_threads=num_threads, providers=providers)

    def _run(self, chw):
        return self.backend.run(chw)


class TorchScriptPredictor(ExportedPredictor):
    """An exported ``.ts`` model on torch.jit (no detectron2 model code needed to run it)."""

    def __init__(self, model_path, confidence_threshold=None, device="cpu"):
        super().__init__(model_path, confidence_threshold)
        import torchvision  # noqa: F401  registers torchvision::nms / roi_align for the graph

        self.device = torch.device(device)
        self.model = torch.jit.load(self.model_path, map_location=self.device)
        self.output_names = list(self.meta["outputs"])

    def _run(self, chw):
        with torch.inference_mode():
            values = self.model(torch.from_numpy(chw).to(self.device))
        if isinstance(values, torch.Tensor):
            values = (values,)
        return {n: v.cpu().numpy() for n, v in zip(self.output_names, values)}


class OpenVinoPredictor(ExportedPredictor):
    """An exported OpenVINO IR (``.xml`` + ``.bin``, ``export_model.py --format openvino``) on
    OpenVINO's CPU plugin; the same pre- and post-processing as the other exported predictors."""

    def __init__(self, model_path, confidence_threshold=None, device="CPU", num_threads=None):
        super().__init__(model_path, confidence_threshold)
        from segkit.inference.runtime import OpenVinoBackend

        self.backend = OpenVinoBackend(self.model_path, num_threads=num_threads, device=device)

    def _run(self, chw):
        return self.backend.run(chw)


def load_exported(path, **kwargs):
    """OnnxPredictor for ``.onnx``, OpenVinoPredictor for ``.xml``, TorchScriptPredictor otherwise."""
    if os.fspath(path).endswith(".onnx"):
        return OnnxPredictor(path, **kwargs)
    if os.fspath(path).endswith(".xml"):
        return OpenVinoPredictor(path, **kwargs)
    return TorchScriptPredictor(path, **kwargs)


class RuntimePredictor:
    """An exported model where predict.py and the app take a checkpoint: the torch-free
    :mod:`segkit.inference.runtime` does the work, the results come back as a :class:`Prediction`.

    It offers what those commands read of a Predictor: ``class_names``, ``semantic``, ``cfg`` (the
    sidecar's ``config``, else a default config with the sidecar's sizes and architecture),
    ``confidence_threshold`` (the floor baked into the graph), ``class_thresholds``,
    ``stored_thresholds``, ``threshold_note``, ``weights``, ``device``; ``predict_batch`` runs one
    image at a time (the graph takes one). Tiles need the checkpoint (``with_tiles`` says so)."""

    tiled = None
    supports_tiles = False  # tiles run on the checkpoint (TiledModel needs the torch model)

    def __init__(self, model_path, confidence_threshold=None, num_threads=None):
        from segkit.data.run_layout import SCORE_THRESHOLD_KEYS
        from segkit.inference.runtime import load_model

        self.model = load_model(model_path, score_threshold=confidence_threshold, num_threads=num_threads)
        meta = self.model.meta
        self.weights = self.model.model_path
        self.class_names = list(self.model.class_names)
        self.semantic = self.model.semantic
        self.metadata = metadata_for(self.class_names, semantic=self.semantic)
        self.cfg = config_of(meta, self.weights)
        self.device = torch.device("cpu")
        self.stored_thresholds = {k: meta[k] for k in SCORE_THRESHOLD_KEYS if meta.get(k) is not None}
        self.class_thresholds = {n: float(t) for n, t in zip(self.class_names, self.model.thresholds)}
        self.threshold_note = self.model.threshold_note

    @property
    def confidence_threshold(self):
        return self.model.floor

    def with_tiles(self, size, overlap=0.2):
        raise ValueError(f"{self.weights}: tiled prediction runs on a checkpoint (.pth), not on an exported model")

    def __call__(self, image, rgb=False, keep_image=True):
        chw, image_rgb = self.model.preprocess(image, rgb=rgb)
        det = self.model.postprocess(self.model.backend.run(chw), chw.shape[1:], image_rgb.shape[:2])
        name = str(image) if isinstance(image, str) or hasattr(image, "__fspath__") else None
        keep = image_rgb if keep_image else None
        if det.sem_seg is not None:
            return Prediction(self.class_names, sem_seg=torch.from_numpy(det.sem_seg), image=keep, file_name=name)
        inst = Instances(det.image_size)
        inst.pred_boxes = Boxes(torch.from_numpy(det.boxes))
        inst.scores = torch.from_numpy(det.scores)
        inst.pred_classes = torch.from_numpy(det.classes)
        if det.masks is not None:
            inst.pred_masks = torch.from_numpy(det.masks)
        return Prediction(self.class_names, instances=inst, image=keep, file_name=name)

    def predict_batch(self, images, rgb=False, keep_image=True):
        return [self(im, rgb=rgb, keep_image=keep_image) for im in images]


def config_of(meta, model_path):
    """The config an exported model was made from: the sidecar's ``config`` (exports since it was
    added), else the default config with what older sidecars say (architecture, test sizes, threshold)."""
    from detectron2.config import CfgNode

    from segkit.data.run_layout import KEY_CONFIG
    from segkit.modeling.config import get_segkit_cfg

    cfg = get_segkit_cfg()
    cfg.set_new_allowed(True)  # configs of newer versions may carry keys we do not know yet
    if meta.get(KEY_CONFIG):
        cfg.merge_from_other_cfg(CfgNode.load_cfg(meta[KEY_CONFIG]))
    else:
        cfg.MODEL.META_ARCHITECTURE = meta.get("meta_architecture", cfg.MODEL.META_ARCHITECTURE)
        cfg.INPUT.FORMAT = meta.get("input_format", cfg.INPUT.FORMAT)
        cfg.INPUT.MIN_SIZE_TEST = int(meta["min_size_test"])
        cfg.INPUT.MAX_SIZE_TEST = int(meta["max_size_test"])
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = float(meta.get("score_thresh_test", 0.05))
    cfg.set_new_allowed(False)
    cfg.TEST.TILE_SIZE = 0  # the graph runs on whole images, whatever the run predicted with
    cfg.MODEL.WEIGHTS = os.fspath(model_path)
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def load_exported_predictor(path, confidence_threshold=None, **kwargs):
    """The predictor of an exported file predict.py or the app was given instead of a checkpoint
    (which suffixes: ``segkit.inference.runtime.BACKENDS``, where OpenVINO's ``.xml`` plugs in)."""
    return RuntimePredictor(path, confidence_threshold=confidence_threshold, **kwargs)
