"""Deployable models from a checkpoint: TorchScript and ONNX through detectron2's TracingAdapter.

What is exported is ``model.inference([{"image": CHW float}], do_postprocess=False)`` for Mask
R-CNN (the model as detectron2's tools/deploy/export_model.py traces it) or the model's forward for
U-Net. Inside the graph: normalisation, backbone, RPN, NMS, box and mask heads. Outside it (done by
:mod:`segkit.inference.onnx_predictor` with detectron2's own code): the input resize
(ResizeShortestEdge as INPUT.MIN/MAX_SIZE_TEST say), and ``detector_postprocess``: box rescaling,
and pasting the 28x28 mask probabilities into the image (pasting inside the graph gives an ONNX
model onnxruntime cannot load).

ONNX uses opset 17 (detectron2's default 11 exports RoIAlign without ``aligned=True`` and results
drift) with dynamic height/width, so any input size works. Next to each exported file goes a
JSON sidecar (``model_final.onnx.json``) with what the runtime side needs: class names, input
format, resize parameters, the score threshold baked into the graph (the floor of what a runtime can
choose), output names, the run's stored best-F1 score thresholds (``score_thresholds`` per class,
``score_threshold`` for all) when its checkpoint has them, and the full config (``config``, YAML).

CLI: ``python export_model.py --format torchscript|onnx [--weights CHECKPOINT_OR_RUN]
[--sample-image IMG] [--output FILE]``.
"""

import argparse
import copy
import datetime
import inspect
import json
import logging
import os
import sys
import warnings

import numpy as np
import torch

from segkit.data.run_layout import KEY_CONFIG, KEY_ITERATION, NoModelError, SCORE_THRESHOLD_KEYS, resolve_weights

logger = logging.getLogger(__name__)

ONNX_OPSET = 17
# torch 2.9+ exports through torch.export + onnxscript unless told otherwise; what this module checks
# (opset 17, dynamic axes, the traced TracingAdapter) is the TorchScript-based exporter, the only one
# before torch 2.5 (which has no `dynamo` argument).
TRACING_EXPORTER = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
FORMATS = {"torchscript": ".ts", "onnx": ".onnx"}


def sidecar_path(model_path):
    return os.fspath(model_path) + ".json"


def _sample_image(cfg, sample_image=None):
    """RGB uint8 image to trace with: ``sample_image``, else the first image of the first test
    dataset in DATASETS.DATA_DIR, else a synthetic one (with a warning)."""
    from segkit.inference.image_io import read_image_rgb

    if sample_image:
        return read_image_rgb(sample_image), os.fspath(sample_image)
    from detectron2.data import MetadataCatalog

    from segkit.engine.launch import register_datasets

    register_datasets(cfg)
    for name in list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN):
        meta = MetadataCatalog.get(name)
        json_file, images_dir = meta.get("json_file", None), meta.get("image_root", None)
        if not json_file or not images_dir or not os.path.isfile(json_file):
            continue
        try:
            with open(json_file, encoding="utf-8") as f:
                images = json.load(f).get("images", [])
            for im in images[:5]:
                path = os.path.join(images_dir, im["file_name"])
                if os.path.isfile(path):
                    return read_image_rgb(path), path
        except (OSError, ValueError, KeyError):
            continue
    warnings.warn("No --sample-image and no dataset image found: tracing with a synthetic image. "
                  "Pass --sample-image with a real image where the model finds objects.")
    rng = np.random.default_rng(0)
    size = int(cfg.INPUT.MIN_SIZE_TEST)
    img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    return img, None


class _InstancesInference:
    """inference_func for TracingAdapter: raw (un-pasted) Mask R-CNN outputs."""

    def __call__(self, model, inputs):
        inst = model.inference(inputs, do_postprocess=False)[0]
        return [{"instances": inst}]


class _SemanticInference:
    def __call__(self, model, inputs):
        return [{"sem_seg": model(inputs)[0]["sem_seg"]}]


class ExportableGroupNorm(torch.nn.Module):
    """nn.GroupNorm without a Reshape, for ONNX.

    torch.onnx exports GroupNorm through ``Reshape(x, [N, groups, -1])``; onnxruntime cannot
    reshape an empty batch with a -1 (and its ReshapeFusion optimiser turns explicit sizes back
    into -1), so with GroupNorm in the mask head (our mini config) an image without detections
    would fail. Here group statistics are per-channel means combined by two small constant
    matrices: only ReduceMean, MatMul and element-wise ops, fine with N = 0."""

    def __init__(self, gn):
        super().__init__()
        c, g = gn.num_channels, gn.num_groups
        self.eps, self.affine = gn.eps, gn.affine
        self.weight, self.bias = gn.weight, gn.bias
        member = (torch.arange(c)[:, None] // (c // g) == torch.arange(g)[None, :]).float()  # [C, G]
        self.register_buffer("channel_to_group", member / (c // g), persistent=False)
        self.register_buffer("group_to_channel", member.t().contiguous(), persistent=False)

    def _group_mean(self, per_channel):  # [N, C] -> [N, C, 1, 1], each channel its group's mean
        return ((per_channel @ self.channel_to_group) @ self.group_to_channel)[:, :, None, None]

    def forward(self, x):
        d = x - self._group_mean(x.mean(dim=(2, 3)))
        y = d / torch.sqrt(self._group_mean((d * d).mean(dim=(2, 3))) + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def replace_group_norm(model):
    """``model`` with every 4-D nn.GroupNorm replaced by :class:`ExportableGroupNorm` (in place)."""
    for name, child in list(model.named_children()):
        if isinstance(child, torch.nn.GroupNorm):
            setattr(model, name, ExportableGroupNorm(child))
        else:
            replace_group_norm(child)
    return model


def build_adapter(predictor, image_rgb, model=None):
    """(TracingAdapter, CHW float input tensor) for ``model`` (default: the predictor's) on
    ``image_rgb``, preprocessed as the predictor does."""
    from detectron2.export import TracingAdapter

    inputs, _ = predictor.preprocess(image_rgb, rgb=True)
    image = inputs["image"]
    func = _SemanticInference() if predictor.semantic else _InstancesInference()
    adapter = TracingAdapter(model if model is not None else predictor.model, [{"image": image}], func)
    adapter.eval()
    return adapter, image


def export_model(weights, fmt, output=None, sample_image=None, config_file=None, opts=None,
                 check=True):
    """Export ``weights`` as ``fmt`` ("torchscript" or "onnx"); returns the written file's path.

    The file goes next to the checkpoint (``model_final.ts`` / ``model_final.onnx``) unless
    ``output`` names one; its sidecar JSON beside it. ``check`` runs the exported model once on
    the sample image and compares with eager (logged)."""
    from segkit.data.atomic import atomic_path, write_json
    from segkit.inference.predictor import Predictor

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, not {fmt!r}")
    from segkit.engine.checkpoint import load_for_inference

    loaded = load_for_inference(os.fspath(weights), config_file)
    iteration = loaded.state.get(KEY_ITERATION)
    # the run's best-F1 thresholds: the runtime applies them above the graph's SCORE_THRESH_TEST
    stored_thresholds = {k: loaded.thresholds[k] for k in SCORE_THRESHOLD_KEYS if k in loaded.thresholds}
    # The graph keeps the config's SCORE_THRESH_TEST; per-class thresholds stay outside it.
    predictor = Predictor.from_checkpoint(weights, device="cpu", opts=opts, loaded=loaded,
                                          use_checkpoint_thresholds=False)
    loaded = None  # the weights live in the model now
    cfg = predictor.cfg
    if output is None:
        output = os.path.splitext(os.fspath(weights))[0] + FORMATS[fmt]
    output = os.fspath(output)
    image_rgb, sample_path = _sample_image(cfg, sample_image)
    model = predictor.model
    if fmt == "onnx":
        model = replace_group_norm(copy.deepcopy(model)).eval()
    adapter, image = build_adapter(predictor, image_rgb, model)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.meshgrid")
        adapter(image)  # fills adapter.outputs_schema: which fields the graph returns, in order
    output_names = output_names_of(adapter)

    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="torch.meshgrid")
        warnings.filterwarnings("ignore", category=UserWarning, module="torch.onnx")
        if fmt == "torchscript":
            traced = torch.jit.trace(adapter, (image,), check_trace=False)
            with atomic_path(output) as tmp:
                torch.jit.save(traced, tmp)
        else:
            with atomic_path(output) as tmp:
                torch.onnx.export(
                    adapter, (image,), tmp, opset_version=ONNX_OPSET, do_constant_folding=True,
                    input_names=["image"], output_names=output_names,
                    dynamic_axes={"image": {1: "height", 2: "width"},
                                  **{n: {0: "num"} for n in output_names if n != "image_size"}},
                    **TRACING_EXPORTER,
                )
    meta = {
        "format": fmt,
        "model_file": os.path.basename(output),
        "source_checkpoint": os.path.abspath(os.fspath(weights)),
        "iteration": None if iteration is None else int(iteration),
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "class_names": list(predictor.class_names),
        "input_format": cfg.INPUT.FORMAT,
        "input_layout": "CHW float32, 0-255, channels in input_format, resized (no normalisation)",
        "min_size_test": int(cfg.INPUT.MIN_SIZE_TEST),
        "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST),
        "score_thresh_test": float(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST),
        "nms_thresh_test": float(cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST),
        "detections_per_image": int(cfg.TEST.DETECTIONS_PER_IMAGE),
        "mask_threshold": 0.5,
        "outputs": output_names,
        "onnx_opset": ONNX_OPSET if fmt == "onnx" else None,
        "sample_image": sample_path,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        **stored_thresholds,
        KEY_CONFIG: cfg.dump(),  # what predict.py and the app show and check of a model (DATASETS, OUTPUT_DIR, ...)
    }
    write_json(sidecar_path(output), meta)
    if check:
        _check(output, predictor, image_rgb)
    return output


# detectron2 field name -> name of the graph output (TracingAdapter flattens fields sorted by name,
# then the image size)
OUTPUT_NAMES = {"pred_boxes": "boxes", "pred_classes": "classes", "pred_masks": "mask_probs",
                "scores": "scores", "sem_seg": "sem_seg"}


def output_names_of(adapter):
    """Names of the traced graph's outputs, in order, from the adapter's output schema."""
    inner = adapter.outputs_schema.schemas[0]  # ListSchema([DictSchema]) -> the dict
    if inner.keys == ["instances"]:
        fields = inner.schemas[0].keys
        return [OUTPUT_NAMES.get(k, k) for k in fields] + ["image_size"]
    return [OUTPUT_NAMES.get(k, k) for k in inner.keys]


def _check(path, predictor, image_rgb):
    from segkit.inference.onnx_predictor import load_exported

    exported = load_exported(path)
    a = predictor(image_rgb, rgb=True)
    b = exported(image_rgb, rgb=True)
    if a.is_semantic:
        agree = float((a.class_map() == b.class_map()).mean())
        logger.info("exported model check: %.4f of pixels agree with eager", agree)
        return agree
    logger.info("exported model check: %d instances (eager %d)", len(b), len(a))
    return len(a), len(b)


def get_parser():
    p = argparse.ArgumentParser(
        prog="export_model.py",
        description="Export a checkpoint to TorchScript or ONNX (detectron2 TracingAdapter); the "
                    "file and a JSON sidecar go next to the checkpoint.")
    p.add_argument("--format", required=True, choices=sorted(FORMATS), help="torchscript or onnx")
    p.add_argument("--weights", default=None, metavar="CHECKPOINT_OR_RUN",
                   help="a checkpoint, run folder or run name (default: the latest run's best checkpoint)")
    p.add_argument("--config-file", default=None, help="config (default: the checkpoint's own)")
    p.add_argument("--sample-image", default=None,
                   help="image to trace with (default: the first image of the test split)")
    p.add_argument("--output", default=None, help="output file (default: next to the checkpoint)")
    p.add_argument("--opts", default=[], nargs=argparse.REMAINDER, metavar="KEY VALUE",
                   help="config overrides, e.g. MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.3")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    try:
        args.weights = resolve_weights(args.weights)
    except NoModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = export_model(args.weights, args.format, output=args.output,
                        sample_image=args.sample_image, config_file=args.config_file,
                        opts=args.opts)
    print(f"wrote {path} and {sidecar_path(path)}")
    return 0
