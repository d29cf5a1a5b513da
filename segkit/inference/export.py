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

INT8 (ONNX Runtime static quantization) and OpenVINO IR (fp32, or INT8 through NNCF) are made from
the same fp32 ONNX graph (:mod:`segkit.inference.quantize` says what is quantized and why). Every
export of an instance model is evaluated against the torch model on the run's val split
(:mod:`segkit.inference.parity`); the sidecar's "parity" holds both APs, and an export that loses
more than ``--max-ap-drop`` segm AP is refused: it is made in a temporary folder beside the output
and moved into place only once accepted, so nothing (and no half-written file) is left otherwise.

CLI: ``python export_model.py --format torchscript|onnx|openvino [--int8] [--weights CHECKPOINT_OR_RUN]
[--sample-image IMG] [--output FILE] [--max-ap-drop POINTS] [--force]``.
"""

import argparse
import copy
import datetime
import inspect
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings

import numpy as np
import torch

from segkit.data.run_layout import (DEFAULT_CALIBRATION_IMAGES, DEFAULT_MAX_AP_DROP, KEY_CONFIG, KEY_ITERATION,
                                    SCORE_THRESHOLD_KEYS, NoModelError, resolve_weights)
from segkit.inference.image_io import read_image_rgb
from segkit.inference.quantize import QUANT_FORMATS, quantize_onnx, to_openvino

logger = logging.getLogger(__name__)

ONNX_OPSET = 17
# torch 2.9+ exports through torch.export + onnxscript unless told otherwise; what this module checks
# (opset 17, dynamic axes, the traced TracingAdapter) is the TorchScript-based exporter, the only one
# before torch 2.5 (which has no `dynamo` argument).
TRACING_EXPORTER = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
FORMATS = {"torchscript": ".ts", "onnx": ".onnx", "openvino": ".xml"}
INT8_FORMATS = ("onnx", "openvino")


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


class ExportRefused(Exception):
    """The export lost more accuracy than allowed (or could not be checked): nothing was written."""


def default_output(weights, fmt, int8=False):
    """``model_best.onnx`` / ``model_best.int8.onnx`` / ``model_best.xml`` ... beside the checkpoint."""
    return os.path.splitext(os.fspath(weights))[0] + (".int8" if int8 else "") + FORMATS[fmt]


def export_model(weights, fmt, output=None, sample_image=None, config_file=None, opts=None,
                 check=True, int8=False, calibration_images=DEFAULT_CALIBRATION_IMAGES,
                 max_ap_drop=DEFAULT_MAX_AP_DROP, force=False, parity=True, quant_format="QDQ"):
    """Export ``weights`` as ``fmt`` ("torchscript", "onnx" or "openvino"); returns the written
    file's path.

    The file goes next to the checkpoint (``model_final.ts`` / ``.onnx`` / ``.int8.onnx`` /
    ``.xml`` + ``.bin``) unless ``output`` names one; its sidecar JSON beside it. ``int8``
    (onnx, openvino): post-training quantization calibrated on ``calibration_images`` images of
    the run's training split (:mod:`segkit.inference.quantize`). ``parity``: the exported model
    and the torch model are evaluated on the run's val split (COCO AP, stored in the sidecar);
    when the export loses more than ``max_ap_drop`` segm AP, :class:`ExportRefused` is raised and
    nothing is written, unless ``force``. Everything is made in a temporary folder beside the
    output and moved into place only once accepted. ``check`` runs the exported model once on the
    sample image and compares with eager (logged)."""
    from segkit.data.atomic import write_json
    from segkit.inference.parity import calibration_images as calibration_set
    from segkit.inference.predictor import Predictor

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, not {fmt!r}")
    if int8 and fmt not in INT8_FORMATS:
        raise ValueError(f"--int8 works with {' and '.join(INT8_FORMATS)}, not {fmt}")
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
    if int8 and predictor.semantic:
        raise ValueError("--int8 is for Mask R-CNN checkpoints (its quantized scope is the detector's "
                         "backbone and RPN), not U-Net")
    output = os.fspath(output or default_output(weights, fmt, int8))
    image_rgb, sample_path = _sample_image(cfg, sample_image)
    model = predictor.model
    if fmt != "torchscript":
        model = replace_group_norm(copy.deepcopy(model)).eval()
    adapter, image = build_adapter(predictor, image_rgb, model)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.meshgrid")
        adapter(image)  # fills adapter.outputs_schema: which fields the graph returns, in order
    output_names = output_names_of(adapter)

    out_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(out_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="." + os.path.basename(output) + ".", dir=out_dir)
    try:
        candidate = os.path.join(work, "model" + FORMATS[fmt])
        onnx_path = os.path.join(work, "fp32.onnx") if fmt == "onnx" and int8 or fmt == "openvino" else candidate
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="torch.meshgrid")
            warnings.filterwarnings("ignore", category=UserWarning, module="torch.onnx")
            if fmt == "torchscript":
                torch.jit.save(torch.jit.trace(adapter, (image,), check_trace=False), candidate)
            else:
                torch.onnx.export(
                    adapter, (image,), onnx_path, opset_version=ONNX_OPSET, do_constant_folding=True,
                    input_names=["image"], output_names=output_names,
                    dynamic_axes={"image": {1: "height", 2: "width"},
                                  **{n: {0: "num"} for n in output_names if n != "image_size"}},
                    **TRACING_EXPORTER,
                )
        model = adapter = None
        extra = {"precision": "int8" if int8 else "fp32"}
        calibration = None
        if int8:
            calib_name, calib_paths = calibration_set(cfg, calibration_images)
            if not calib_paths:
                raise ExportRefused(f"{output}: not written: --int8 needs calibration images and "
                                    f"DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)} has none under "
                                    f"{cfg.DATASETS.DATA_DIR}")
            calibration = [predictor.preprocess(read_image_rgb(p), rgb=True)[0]["image"].numpy()
                           for p in calib_paths]
            extra["calibration"] = {"dataset": calib_name, "images": len(calib_paths)}
        if fmt == "onnx" and int8:
            extra["quantization"] = quantize_onnx(onnx_path, candidate, calibration, quant_format=quant_format)
        elif fmt == "openvino":
            record = to_openvino(onnx_path, candidate, calibration)
            extra["quantization"] = record.pop("quantization", None)
            extra.update(record)
            extra["weights_file"] = os.path.splitext(os.path.basename(output))[0] + ".bin"
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
            "onnx_opset": ONNX_OPSET if fmt != "torchscript" else None,
            "sample_image": sample_path,
            "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            **stored_thresholds,
            KEY_CONFIG: cfg.dump(),  # what predict.py and the app show and check of a model (DATASETS, OUTPUT_DIR, ...)
            **extra,
            "parity": None,
        }
        write_json(sidecar_path(candidate), meta)
        if parity and not predictor.semantic:
            meta["parity"] = _parity(output, candidate, predictor, cfg, max_ap_drop, force, int8)
        elif parity:
            logger.info("accuracy check: COCO AP is for instance models; %s not compared", output)
        _place(candidate, output, fmt)
        write_json(sidecar_path(output), meta)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if check:
        _check(output, predictor, image_rgb)
    return output


def _parity(output, candidate, predictor, cfg, max_ap_drop, force, int8):
    """The sidecar's "parity" record of ``candidate``; raises ExportRefused when it lost too much."""
    from segkit.inference.onnx_predictor import load_exported
    from segkit.inference.parity import _dataset_images, ap_drop, evaluate, parity_record, val_dataset

    dataset = val_dataset(cfg)
    if dataset is None:
        if int8 and not force:
            raise ExportRefused(f"{output}: not written: no val split under {cfg.DATASETS.DATA_DIR} "
                                f"(DATASETS.TEST {tuple(cfg.DATASETS.TEST)}) to check the INT8 model "
                                f"against the fp32 one; --force writes it unchecked")
        logger.warning("%s: no val split under %s: accuracy not compared", output, cfg.DATASETS.DATA_DIR)
        return None
    torch_ap = evaluate(predictor, dataset)
    exported_ap = evaluate(load_exported(candidate), dataset)
    record = parity_record(exported_ap, torch_ap, dataset, len(_dataset_images(dataset)))
    record["max_ap_drop"] = float(max_ap_drop)
    drop = ap_drop(record)
    line = (f"{os.path.basename(output)}: segm AP {_fmt(record.get('segm_AP'))} "
            f"(torch {_fmt(record.get('segm_AP_torch'))}), bbox AP {_fmt(record.get('bbox_AP'))} "
            f"(torch {_fmt(record.get('bbox_AP_torch'))}) on {dataset}, {record['images']} images")
    print(line, flush=True)
    if drop is not None and drop > max_ap_drop:
        if not force:
            raise ExportRefused(f"{output}: not written: segm AP {_fmt(record['segm_AP'])} against "
                                f"{_fmt(record['segm_AP_torch'])} for the torch model on {dataset}, a drop "
                                f"of {drop:.2f} > --max-ap-drop {max_ap_drop:g} (--force writes it anyway)")
        record["forced"] = True
        logger.warning("%s: segm AP drop %.2f > %g, written because of --force", output, drop, max_ap_drop)
    return record


def _fmt(x):
    return "n/a" if x is None else f"{x:.2f}"


def _place(candidate, output, fmt):
    """Move the accepted export from its temporary folder to ``output`` (an OpenVINO model's .bin
    first: the .xml names its weights by its own base name)."""
    if fmt == "openvino":
        os.replace(os.path.splitext(candidate)[0] + ".bin", os.path.splitext(output)[0] + ".bin")
    # mkstemp/mkdtemp permissions are 0600/0700; give the file what a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(candidate, 0o666 & ~umask)
    os.replace(candidate, output)


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
        description="Export a checkpoint to TorchScript, ONNX (fp32 or INT8) or OpenVINO IR (fp32 or INT8) "
                    "through detectron2's TracingAdapter; the file and a JSON sidecar go next to the "
                    "checkpoint, once the export's AP on the val split is within --max-ap-drop of the "
                    "torch model's.")
    p.add_argument("--format", required=True, choices=sorted(FORMATS), help="torchscript, onnx or openvino")
    p.add_argument("--int8", action="store_true",
                   help="onnx/openvino: post-training INT8 quantization of the backbone and RPN, "
                        "calibrated on images of the run's training split")
    p.add_argument("--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES, metavar="N",
                   help=f"with --int8: training images to calibrate on (default {DEFAULT_CALIBRATION_IMAGES})")
    p.add_argument("--quant-format", default="QDQ", choices=QUANT_FORMATS,
                   help="onnx --int8: ONNX Runtime's QDQ (default) or QOperator form")
    p.add_argument("--max-ap-drop", type=float, default=DEFAULT_MAX_AP_DROP, metavar="POINTS",
                   help=f"refuse to write an export whose segm AP on the val split is more than this below the "
                        f"torch model's (default {DEFAULT_MAX_AP_DROP:g})")
    p.add_argument("--force", action="store_true", help="write the export even when it loses more than --max-ap-drop")
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
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.int8 and args.format not in INT8_FORMATS:
        parser.error(f"--int8 works with --format {' or '.join(INT8_FORMATS)}, not {args.format}")
    try:
        args.weights = resolve_weights(args.weights)
    except NoModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = export_model(args.weights, args.format, output=args.output,
                            sample_image=args.sample_image, config_file=args.config_file,
                            opts=args.opts, int8=args.int8, calibration_images=args.calibration_images,
                            max_ap_drop=args.max_ap_drop, force=args.force, quant_format=args.quant_format)
    except ExportRefused as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path} and {sidecar_path(path)}")
    return 0
