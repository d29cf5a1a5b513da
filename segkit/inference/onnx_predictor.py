"""Running exported models (``export_model.py``) with the Predictor's interface.

``OnnxPredictor("output/model_final.onnx")`` (onnxruntime) and ``TorchScriptPredictor(
"output/model_final.ts")`` take what :class:`~segkit.inference.predictor.Predictor` takes (numpy
BGR or ``rgb=True``, PIL, path) and return the same :class:`Prediction`. The steps outside the
graph, as detectron2 does them:

1. ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST) - detectron2's own transform;
2. the graph: boxes, classes, 28x28 mask probabilities, scores at the resized size;
3. ``detector_postprocess``: boxes scaled to the input size, clipped, empty boxes dropped;
4. ``paste_masks_in_image``: each mask bilinearly resampled into its box (grid_sample with
   align_corners=False and zero padding, reproduced with numpy) and thresholded at 0.5.

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

from segkit.inference.image_io import to_rgb_uint8
from segkit.inference.predictor import Prediction, metadata_for


def _interp_matrix(coords, size):
    """(len(coords), size) bilinear weights of sampling a length-``size`` signal at ``coords``
    (pixel units, zero outside the signal) - one axis of grid_sample."""
    coords = coords.astype(np.float32)
    i0 = np.floor(coords).astype(np.int64)
    t = (coords - i0).astype(np.float32)
    m = np.zeros((len(coords), size), dtype=np.float32)
    rows = np.arange(len(coords))
    for idx, w in ((i0, 1 - t), (i0 + 1, t)):
        ok = (idx >= 0) & (idx < size)
        m[rows[ok], idx[ok]] += w[ok]
    return m


def paste_masks(mask_probs, boxes, image_shape, threshold=0.5):
    """detectron2's ``paste_masks_in_image`` in numpy: (N, M, M) probabilities + (N, 4) XYXY
    boxes -> (N, H, W) bool masks."""
    h, w = int(image_shape[0]), int(image_shape[1])
    n = len(mask_probs)
    out = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        m = np.asarray(mask_probs[i], dtype=np.float32)
        mh, mw = m.shape
        x0, y0, x1, y1 = (np.float32(v) for v in boxes[i])
        # the region detectron2 computes on CPU (one mask per chunk)
        xa = int(max(np.floor(x0) - 1, 0))
        ya = int(max(np.floor(y0) - 1, 0))
        xb = int(min(np.ceil(x1) + 1, w))
        yb = int(min(np.ceil(y1) + 1, h))
        if xb <= xa or yb <= ya:
            continue
        gx = (np.arange(xa, xb, dtype=np.float32) + np.float32(0.5) - x0) / (x1 - x0) * 2 - 1
        gy = (np.arange(ya, yb, dtype=np.float32) + np.float32(0.5) - y0) / (y1 - y0) * 2 - 1
        # grid_sample(align_corners=False): normalised [-1, 1] -> pixel ((g + 1) * size - 1) / 2
        ux = ((gx + 1) * mw - 1) / 2
        uy = ((gy + 1) * mh - 1) / 2
        region = _interp_matrix(uy, mh) @ m @ _interp_matrix(ux, mw).T
        out[i, ya:yb, xa:xb] = region >= threshold
    return out


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
        image_rgb = to_rgb_uint8(image, rgb=rgb)
        original = image_rgb if self.input_format == "RGB" else image_rgb[:, :, ::-1]
        resized = self.aug.get_transform(original).apply_image(original)
        chw = np.ascontiguousarray(resized.astype(np.float32).transpose(2, 0, 1))
        return chw, image_rgb

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
        rh, rw = int(resized_hw[0]), int(resized_hw[1])
        boxes = np.asarray(out["boxes"], dtype=np.float32).reshape(-1, 4).copy()
        scores = np.asarray(out["scores"], dtype=np.float32).reshape(-1)
        classes = np.asarray(out["classes"]).reshape(-1).astype(np.int64)
        # detector_postprocess: scale, clip, drop empty boxes
        boxes[:, 0::2] *= np.float32(w / rw)
        boxes[:, 1::2] *= np.float32(h / rh)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        keep = ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)
        keep &= scores >= self.confidence_threshold
        inst = Instances((h, w))
        inst.pred_boxes = Boxes(torch.from_numpy(boxes[keep]))
        inst.scores = torch.from_numpy(scores[keep])
        inst.pred_classes = torch.from_numpy(classes[keep])
        if "mask_probs" in out:
            probs = np.asarray(out["mask_probs"], dtype=np.float32)
            probs = probs[:, 0] if probs.ndim == 4 else probs
            inst.pred_masks = torch.from_numpy(
                paste_masks(probs[keep], boxes[keep], (h, w), self.mask_threshold))
        return Prediction(self.class_names, instances=inst, image=keep_img, file_name=file_name)


class OnnxPredictor(ExportedPredictor):
    """An exported ``.onnx`` model on onnxruntime (CUDA provider when onnxruntime has it)."""

    def __init__(self, model_path, confidence_threshold=None, providers=None, num_threads=None):
        super().__init__(model_path, confidence_threshold)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # no busy-waiting threads between runs: they would slow down everything else on the CPU
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if num_threads:
            opts.intra_op_num_threads = int(num_threads)
        available = ort.get_available_providers()
        providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                                  if p in available]
        self.session = ort.InferenceSession(self.model_path, sess_options=opts, providers=providers)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _run(self, chw):
        values = self.session.run(None, {self.session.get_inputs()[0].name: chw})
        return dict(zip(self.output_names, values))


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


def load_exported(path, **kwargs):
    """OnnxPredictor for ``.onnx``, TorchScriptPredictor otherwise."""
    if os.fspath(path).endswith(".onnx"):
        return OnnxPredictor(path, **kwargs)
    return TorchScriptPredictor(path, **kwargs)
