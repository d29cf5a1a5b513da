"""INT8 and OpenVINO versions of an exported fp32 ONNX Mask R-CNN (``export_model.py --int8``,
``--format openvino``).

What is quantized, and why only that: the convolutions of the backbone (EfficientNet / ResNet
bottom-up and FPN) and of the RPN head, with their ReLU/ReLU6 and residual adds. That is where the
multiply-adds are; everything after the proposals stays fp32: RoIAlign, NMS, TopK and the box
decoding work on coordinates (8 bits of a 300-pixel range is about a pixel), the box head's FCs and
the mask head run on at most 100 regions, and the GroupNorm layers (their statistics are
MatMul/ReduceMean over a few values) lose most by rounding. Calibration: min/max of each activation
over images of the run's training split, preprocessed as the runtime does it.

ONNX Runtime: the graph is first optimised at ORT's basic level (``quant_pre_process``): the frozen
batch norms, exported as Mul + Add after each conv, fold into the conv weights, so each conv becomes
one int8 conv instead of an int8 conv followed by fp32 element-wise work. Then
``quantize_static`` in QDQ form (QuantizeLinear/DequantizeLinear pairs that ORT fuses into int8
kernels; portable to other runtimes), weights int8 per output channel, activations uint8.

OpenVINO: ``ov.convert_model`` on the same fp32 ONNX, and for INT8 NNCF's post-training
quantization (``nncf.quantize``) with the same scope (the heads in an ignored scope).
"""

import logging
import os

logger = logging.getLogger(__name__)

# Node name prefixes (TracingAdapter names nodes by module path) whose convolutions get quantized:
# the backbone + FPN and the RPN's head, not the RPN's anchor decoding (coordinates).
QUANTIZED_SCOPES = ("/backbone/", "/proposal_generator/rpn_head/")
# ... of these op types; GroupNorm's MatMuls (".../norm/MatMul") are not among them.
QUANTIZED_OPS = ("Conv", "Clip", "Relu", "Add", "MaxPool")
QUANT_FORMATS = ("QDQ", "QOperator")


def quantize_onnx(fp32_path, out_path, calibration_inputs, quant_format="QDQ", per_channel=True):
    """Write the INT8 model of ``fp32_path`` to ``out_path``; returns what the sidecar records."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if quant_format not in QUANT_FORMATS:
        raise ValueError(f"quant_format must be one of {QUANT_FORMATS}, not {quant_format!r}")
    # ORT 1.23's QOperator form fails on per-channel weights here (re-quantizing a weight for the
    # residual Add: "operands could not be broadcast"); it gets per-tensor weights.
    per_channel = per_channel and quant_format == "QDQ"
    pre = out_path + ".pre.onnx"
    try:
        # Symbolic shape inference is for transformer graphs; ours has data-dependent shapes (NMS).
        quant_pre_process(fp32_path, pre, skip_symbolic_shape=True)
        graph = onnx.load(pre, load_external_data=False).graph
        nodes = [n.name for n in graph.node
                 if n.op_type in QUANTIZED_OPS and n.name.startswith(QUANTIZED_SCOPES)]

        class Reader(CalibrationDataReader):
            def __init__(self):
                self._it = iter([{"image": x} for x in calibration_inputs])

            def get_next(self):
                return next(self._it, None)

        quantize_static(pre, out_path, Reader(), quant_format=getattr(QuantFormat, quant_format),
                        op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_quantize=nodes,
                        per_channel=per_channel, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    finally:
        for p in (pre, pre + ".data"):
            if os.path.exists(p):
                os.remove(p)
    return {"tool": f"onnxruntime {onnxruntime.__version__} quantize_static", "format": quant_format,
            "per_channel": bool(per_channel), "weights": "int8", "activations": "uint8",
            "calibration": "MinMax", "scopes": list(QUANTIZED_SCOPES), "op_types": list(QUANTIZED_OPS),
            "nodes_quantized": len(nodes)}


def to_openvino(onnx_path, xml_path, calibration_inputs=None):
    """Convert ``onnx_path`` to OpenVINO IR at ``xml_path`` (+ ``.bin`` beside it), fp32, or INT8
    through NNCF when ``calibration_inputs`` are given; returns what the sidecar records."""
    import openvino as ov

    model = ov.convert_model(onnx_path)
    record = {"openvino": ov.get_version()}
    if calibration_inputs is not None:
        import nncf

        # Everything not in QUANTIZED_SCOPES, and GroupNorm wherever it is (see the module docstring).
        ignored = nncf.IgnoredScope(patterns=[r"^/roi_heads/.*", r"^/proposal_generator/(?!rpn_head/).*",
                                              r".*/norm/.*"], validate=False)
        nncf_log = logging.getLogger("nncf")
        level = nncf_log.level
        nncf_log.setLevel(logging.WARNING)  # else a line for every node it leaves alone
        try:
            model = nncf.quantize(model, nncf.Dataset([{"image": x} for x in calibration_inputs]),
                                  subset_size=len(calibration_inputs), ignored_scope=ignored)
        finally:
            nncf_log.setLevel(level)
        record["quantization"] = {"tool": f"nncf {nncf.__version__} quantize", "preset": "performance",
                                  "ignored_patterns": list(ignored.patterns)}
    ov.save_model(model, xml_path, compress_to_fp16=False)
    return record
