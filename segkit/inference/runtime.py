"""Exported models without torch or detectron2: onnxruntime, numpy and Pillow are all it needs.

    pip install onnxruntime==1.23.2 "numpy>=1.24,<2" Pillow==12.3.0
    from segkit.inference.runtime import load_model
    model = load_model("output/lite0/model_best.onnx")    # the sidecar model_best.onnx.json beside it
    det = model("photo.jpg")                              # or a BGR array (rgb=True for RGB), a PIL image
    det.classes, det.scores, det.boxes, det.masks         # numpy: [N], [N], [N, 4] XYXY px, bool [N, H, W]
    [det.class_names[c] for c in det.classes]

or ``python -m segkit.inference.runtime model.onnx photo.jpg [--score-threshold 0.5] [--json out.json]``.

What detectron2 does around the exported graph (segkit.inference.export), done here the same way:

1. ResizeShortestEdge with the sidecar's test sizes: detectron2's output-shape rounding and its
   resize (Pillow's bilinear on uint8 images, the one ``ResizeTransform.apply_image`` calls);
2. the graph on onnxruntime (normalisation, backbone, RPN, NMS, heads): boxes, classes, 28x28 mask
   probabilities and scores at the resized size;
3. ``detector_postprocess``: boxes scaled to the input size and clipped, empty ones dropped, masks
   pasted as ``paste_masks_in_image`` does on the CPU (bilinear ``grid_sample`` with
   ``align_corners=False`` and zero padding, over the boxes' pixel region, ``>= 0.5``) - written as
   two small matrix products per instance, because bilinear sampling on a grid is separable;
4. score thresholds, a choice made here and not at export: the graph keeps everything above the
   SCORE_THRESH_TEST it was exported with (the sidecar's ``score_thresh_test``, detectron2's 0.05
   by default); above that floor, ``score_threshold=`` keeps one threshold for every class, else
   each class keeps instances above its best-F1 threshold that the run's evaluation stored in the
   checkpoint and export copied into the sidecar (``score_thresholds``; the all-classes
   ``score_threshold`` for a class without one), else 0.5. Filtering after the graph keeps exactly
   what a graph exported at the higher threshold keeps: per-class NMS only lets a box suppress
   lower-scored ones, and the top DETECTIONS_PER_IMAGE of a score-sorted list keep its prefix.

A U-Net export gives ``sem_seg`` class scores resized to the input size as torch's
``interpolate(mode="bilinear", align_corners=False)`` does. (OpenCV is not needed: Pillow decodes and
resizes, numpy does the rest; opencv-python-headless would add 137 MB to the install.)

New runtimes plug in through ``BACKENDS`` (file suffix -> class with ``run(chw) -> {name: array}``).
"""

import argparse
import json
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from segkit.data.run_layout import DEFAULT_SCORE_THRESHOLD, KEY_SCORE_THRESHOLD, KEY_SCORE_THRESHOLDS
from segkit.inference.image_io import to_rgb_uint8

SIDECAR_SUFFIX = ".json"
MASK_THRESHOLD = 0.5  # detector_postprocess's default; an older sidecar without mask_threshold means it


class ModelFileError(ValueError):
    """An exported model that cannot be used; the message is one line naming the file."""


def sidecar_path(model_path):
    return os.fspath(model_path) + SIDECAR_SUFFIX


def read_sidecar(model_path):
    """The metadata export_model.py writes beside an exported model (``<model>.json``)."""
    path = sidecar_path(model_path)
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: not found; export_model.py writes it beside the model, and the "
                             f"model cannot run without it (class names, input format, test sizes)")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path}: not a readable JSON sidecar ({e})") from None
    missing = [k for k in ("class_names", "min_size_test", "max_size_test") if k not in meta]
    if missing:
        raise ModelFileError(f"{path}: the sidecar lacks {', '.join(missing)}; export the model again")
    return meta


def resized_shape(h, w, short_edge, max_size):
    """(new_h, new_w): detectron2's ``ResizeShortestEdge.get_output_shape``, same float steps and rounding."""
    size = short_edge * 1.0
    scale = size / min(h, w)
    if h < w:
        newh, neww = size, scale * w
    else:
        newh, neww = scale * h, size
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh = newh * scale
        neww = neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def resize_shortest_edge(image, short_edge, max_size):
    """``image`` (HxWx3 uint8) resized as detectron2's ResizeShortestEdge at test time. Pillow's
    bilinear, as detectron2's ResizeTransform uses for uint8 images (it filters when it shrinks,
    unlike cv2.INTER_LINEAR, so OpenCV would not give the same pixels)."""
    from PIL import Image

    h, w = image.shape[:2]
    if short_edge == 0:  # detectron2: NoOpTransform
        return image
    newh, neww = resized_shape(h, w, short_edge, max_size)
    return np.asarray(Image.fromarray(image).resize((neww, newh), Image.BILINEAR))


def _sampling_matrix(lo, hi, start, end, size):
    """[hi - lo, size] weights of bilinear sampling (zero padding, align_corners=False) of a
    ``size``-long mask row stretched over [start, end] at the pixel centres lo + 0.5 ... hi - 0.5,
    in float32 like detectron2's grid."""
    pix = np.arange(lo, hi, dtype=np.float32) + np.float32(0.5)
    g = (pix - np.float32(start)) / np.float32(end - start) * np.float32(2) - np.float32(1)
    src = ((g + np.float32(1)) * np.float32(size) - np.float32(1)) / np.float32(2)  # grid_sample's unnormalize
    i0 = np.floor(src)
    frac = (src - i0).astype(np.float32)
    i0 = i0.astype(np.int64)
    out = np.zeros((len(pix), size), dtype=np.float32)
    rows = np.arange(len(pix))
    for idx, wgt in ((i0, np.float32(1) - frac), (i0 + 1, frac)):
        ok = (idx >= 0) & (idx < size)
        out[rows[ok], idx[ok]] += wgt[ok]
    return out


def _resize_matrix(size_in, size_out):
    """[size_out, size_in] weights of torch's ``interpolate(mode="bilinear", align_corners=False)``
    along one axis (no antialiasing; source positions below 0 clamped to 0, the last pixel repeated)."""
    scale = size_in / size_out
    src = np.maximum((np.arange(size_out, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    i1 = np.minimum(i0 + 1, size_in - 1)
    frac = src - i0
    out = np.zeros((size_out, size_in), dtype=np.float32)
    rows = np.arange(size_out)
    np.add.at(out, (rows, i0), 1.0 - frac)
    np.add.at(out, (rows, i1), frac)
    return out


def paste_masks(mask_probs, boxes, height, width, threshold=MASK_THRESHOLD):
    """bool [N, height, width]: each [M, M] probability map pasted into its box (XYXY, already at
    the output size), as detectron2's ``paste_masks_in_image`` does on the CPU: only the pixels
    from floor(x0) - 1 to ceil(x1) + 1 are sampled, the rest stays False."""
    n = len(boxes)
    out = np.zeros((n, height, width), dtype=bool)
    for i in range(n):
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        m = mask_probs[i]
        xa, ya = max(int(np.floor(np.float32(x0))) - 1, 0), max(int(np.floor(np.float32(y0))) - 1, 0)
        xb, yb = min(int(np.ceil(np.float32(x1))) + 1, width), min(int(np.ceil(np.float32(y1))) + 1, height)
        if xb <= xa or yb <= ya:
            continue
        wy = _sampling_matrix(ya, yb, y0, y1, m.shape[0])
        wx = _sampling_matrix(xa, xb, x0, x1, m.shape[1])
        out[i, ya:yb, xa:xb] = (wy @ m @ wx.T) >= threshold
    return out


@dataclass
class Detections:
    """What one image gave, in plain numpy, at the input image's size.

    Instances: ``classes`` int64 [N] (indices into ``class_names``), ``scores`` float32 [N],
    ``boxes`` float32 [N, 4] (x0, y0, x1, y1 in pixels), ``masks`` bool [N, H, W], best score first.
    U-Net: ``sem_seg`` float32 [C, H, W] class scores (``class_map()``) and no instances.
    """

    class_names: List[str]
    image_size: tuple
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    masks: Optional[np.ndarray] = None
    sem_seg: Optional[np.ndarray] = None

    def __len__(self):
        return len(self.classes)

    def class_map(self):
        """HxW class indices: the argmax of ``sem_seg``; for instances 0 is background and i + 1
        class i, the higher score winning where instances overlap."""
        if self.sem_seg is not None:
            return self.sem_seg.argmax(axis=0).astype(np.uint16 if self.sem_seg.shape[0] > 255 else np.uint8)
        out = np.zeros(self.image_size, dtype=np.uint16 if len(self.class_names) >= 255 else np.uint8)
        if self.masks is not None:
            for i in np.argsort(self.scores, kind="stable"):
                out[self.masks[i]] = self.classes[i] + 1
        return out

    def records(self):
        """One dict per instance: class, score, box, mask area."""
        areas = self.masks.reshape(len(self), -1).sum(1) if self.masks is not None else [None] * len(self)
        return [{"class_id": int(c), "class": self.class_names[c], "score": float(s),
                 "box": [float(v) for v in b], "area": None if a is None else int(a)}
                for c, s, b, a in zip(self.classes, self.scores, self.boxes, areas)]


class OnnxBackend:
    """An ``.onnx`` file on onnxruntime (CUDA provider when onnxruntime has it)."""

    def __init__(self, model_path, num_threads=None, providers=None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # no busy-waiting threads between runs: they would slow down everything else on the CPU
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if num_threads:
            opts.intra_op_num_threads = int(num_threads)
        available = ort.get_available_providers()
        providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(os.fspath(model_path), sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime's own exception types (InvalidProtobuf, NoSuchFile, ...)
            raise ModelFileError(f"{model_path}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, chw):
        return dict(zip(self.output_names, self.session.run(None, {self.input_name: chw})))


class OpenVinoBackend:
    """An OpenVINO IR (``.xml`` + ``.bin``, ``export_model.py --format openvino``) on OpenVINO's CPU plugin."""

    def __init__(self, model_path, num_threads=None, device="CPU"):
        try:
            import openvino as ov
        except ImportError:
            raise ModelFileError(f"{model_path}: an OpenVINO model needs the openvino package "
                                 f"(pip install -r requirements-deploy.txt)") from None
        # fp32 where the model is fp32: on CPUs with bf16 units OpenVINO would otherwise pick bf16.
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if num_threads:
            config["INFERENCE_NUM_THREADS"] = int(num_threads)
        try:
            self.compiled = ov.Core().compile_model(os.fspath(model_path), device, config)
        except Exception as e:  # OpenVINO raises RuntimeError subclasses with long messages
            raise ModelFileError(f"{model_path}: OpenVINO cannot load it ({str(e).splitlines()[0]})") from None
        self.request = self.compiled.create_infer_request()
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]

    def run(self, chw):
        result = self.request.infer({0: chw})
        return {n: result[o] for n, o in zip(self.output_names, self.compiled.outputs)}


# Exported file suffix -> backend: what predict.py and the app take where a checkpoint goes (is_exported).
BACKENDS = {".onnx": OnnxBackend, ".xml": OpenVinoBackend}


def is_exported(path):
    """True when ``path`` names an exported model this runtime runs (a suffix in ``BACKENDS``):
    what predict.py and the app take instead of a checkpoint."""
    return os.path.splitext(os.fspath(path))[1].lower() in BACKENDS


def backend_for(model_path):
    suffix = os.path.splitext(os.fspath(model_path))[1].lower()
    if suffix not in BACKENDS:
        raise ModelFileError(f"{model_path}: not an exported model this runtime runs "
                             f"({', '.join(sorted(BACKENDS))}); export one with export_model.py")
    return BACKENDS[suffix]


class ExportedModel:
    """An exported model and its sidecar; ``model(image)`` -> :class:`Detections`.

    ``score_threshold``: one minimum score for every class (default: each class's stored best-F1
    threshold, else 0.5; see the module docstring). ``num_threads``: onnxruntime's intra-op threads."""

    def __init__(self, model_path, score_threshold=None, num_threads=None, providers=None):
        self.model_path = os.fspath(model_path)
        if not os.path.isfile(self.model_path):
            raise ModelFileError(f"{self.model_path}: no such file")
        self.meta = read_sidecar(self.model_path)
        self.class_names = [str(c) for c in self.meta["class_names"]]
        self.semantic = self.meta.get("outputs") == ["sem_seg"]
        self.input_format = self.meta.get("input_format", "BGR")
        self.min_size, self.max_size = int(self.meta["min_size_test"]), int(self.meta["max_size_test"])
        self.mask_threshold = float(self.meta.get("mask_threshold", MASK_THRESHOLD))
        self.floor = float(self.meta.get("score_thresh_test", 0.0))  # baked into the graph
        self.backend = backend_for(self.model_path)(self.model_path, num_threads=num_threads, providers=providers)
        self.set_score_threshold(score_threshold)

    def set_score_threshold(self, score_threshold=None):
        """Choose the thresholds (see the class docstring); sets ``thresholds`` (float32 [K], one
        per class) and ``threshold_note`` (which, and why)."""
        names = self.class_names
        if score_threshold is not None:
            per_class = {n: float(score_threshold) for n in names}
            note = f"score threshold {float(score_threshold):g} for every class, as asked"
        else:
            overall = self.meta.get(KEY_SCORE_THRESHOLD)
            stored = self.meta.get(KEY_SCORE_THRESHOLDS) or {}
            per_class = {n: stored.get(n, overall) for n in names}
            if all(t is None for t in per_class.values()):
                per_class = {n: DEFAULT_SCORE_THRESHOLD for n in names}
                note = (f"score threshold {DEFAULT_SCORE_THRESHOLD:g}, the default: the model carries "
                        f"no evaluated threshold")
            else:
                per_class = {n: float(DEFAULT_SCORE_THRESHOLD if t is None else t) for n, t in per_class.items()}
                note = ("score thresholds from the run's evaluation (each class's best F1): "
                        + ", ".join(f"{n} {t:.2f}" for n, t in per_class.items()))
        low = min(per_class.values(), default=self.floor)
        if low < self.floor and not self.semantic:
            warnings.warn(f"{self.model_path} was exported with score threshold {self.floor:g}; instances "
                          f"below it cannot be recovered (export again with a lower SCORE_THRESH_TEST)")
        self.thresholds = np.array([per_class[n] for n in names], dtype=np.float32)
        self.threshold_note = note
        return self

    def preprocess(self, image, rgb=False):
        """(CHW float32 model input, HxWx3 RGB uint8 image) as the torch Predictor prepares them."""
        image_rgb = to_rgb_uint8(image, rgb=rgb)
        ordered = image_rgb if self.input_format == "RGB" else image_rgb[:, :, ::-1]
        resized = resize_shortest_edge(np.ascontiguousarray(ordered), self.min_size, self.max_size)
        return np.ascontiguousarray(resized.transpose(2, 0, 1), dtype=np.float32), image_rgb

    def __call__(self, image, rgb=False):
        chw, image_rgb = self.preprocess(image, rgb=rgb)
        return self.postprocess(self.backend.run(chw), chw.shape[1:], image_rgb.shape[:2])

    def postprocess(self, out, resized_hw, image_hw):
        h, w = int(image_hw[0]), int(image_hw[1])
        if self.semantic:
            sem = np.asarray(out["sem_seg"], dtype=np.float32)
            sem = sem[0] if sem.ndim == 4 else sem
            if sem.shape[-2:] != (h, w):
                wy, wx = _resize_matrix(sem.shape[1], h), _resize_matrix(sem.shape[2], w)
                sem = np.einsum("yi,cij,xj->cyx", wy, sem, wx, optimize=True).astype(np.float32)
            return Detections(self.class_names, (h, w), sem_seg=np.ascontiguousarray(sem))
        scores = np.asarray(out["scores"], dtype=np.float32).reshape(-1)
        classes = np.asarray(out["classes"]).reshape(-1).astype(np.int64)
        boxes = np.asarray(out["boxes"], dtype=np.float32).reshape(-1, 4)
        # strict, as detectron2's own score filter and the Predictor's per-class one
        keep = scores > self.thresholds[np.clip(classes, 0, len(self.thresholds) - 1)]
        sx, sy = np.float32(w / resized_hw[1]), np.float32(h / resized_hw[0])
        boxes = boxes[keep] * np.array([sx, sy, sx, sy], dtype=np.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        idx = np.flatnonzero(keep)[nonempty]
        boxes = boxes[nonempty]
        masks = None
        if "mask_probs" in out:
            probs = np.asarray(out["mask_probs"], dtype=np.float32)
            probs = probs[:, 0] if probs.ndim == 4 else probs
            masks = paste_masks(probs[idx], boxes, h, w, self.mask_threshold)
        return Detections(self.class_names, (h, w), classes=classes[idx], scores=scores[idx],
                          boxes=boxes, masks=masks)


def load_model(model_path, **kwargs):
    """:class:`ExportedModel` for an exported file (the backend chosen by its suffix)."""
    return ExportedModel(model_path, **kwargs)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m segkit.inference.runtime",
                                description="Run an exported model (export_model.py) on images, without "
                                            "torch or detectron2; one line per instance.")
    p.add_argument("model", help="the exported model (its .json sidecar beside it)")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--score-threshold", type=float, default=None,
                   help="minimum score for every class (default: the stored per-class thresholds, else 0.5)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the instances of every image as JSON")
    args = p.parse_args(argv)
    try:
        model = load_model(args.model, score_threshold=args.score_threshold, num_threads=args.threads)
    except ModelFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Using {model.threshold_note}.", file=sys.stderr)
    from segkit.inference.image_io import ImageLoadError

    results, status = {}, 0
    for path in args.images:
        try:
            det = model(path)
        except ImageLoadError as e:
            print(f"skipped {path}: {e.reason}", file=sys.stderr)
            status = 1
            continue
        results[path] = det.records()
        print(f"{path}: {len(det)} instance(s)")
        for r in results[path]:
            print(f"  {r['class']} {r['score']:.3f} box {' '.join(f'{v:.1f}' for v in r['box'])}"
                  + ("" if r["area"] is None else f" area {r['area']}"))
    if args.json:
        from segkit.data.atomic import write_json

        write_json(args.json, results)
    return status


if __name__ == "__main__":
    sys.exit(main())
