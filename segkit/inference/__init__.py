"""Inference: from a trained checkpoint to results a person can look at and use.

    from segkit.inference import Predictor
    predictor = Predictor.from_checkpoint("output/lite0/model_best.pth")
    prediction = predictor("photo.jpg")          # or a BGR numpy array, rgb=True, a PIL image
    prediction.instances                         # detectron2 Instances on the CPU, input size
    draw_prediction(prediction)                  # RGB overlay (detectron2 Visualizer)

Modules: ``predictor`` (Predictor, Prediction), ``visualization`` (overlays, masked image, mask
PNGs, label map, GT side by side), ``coco_results`` and ``labelme_writer`` (output formats),
``export`` and ``onnx_predictor`` (TorchScript / ONNX and their predictors), ``runtime`` (exported
models with onnxruntime + numpy + Pillow only: importable without torch), ``predict_cli``
(predict.py), ``image_io`` (reading any image as 3-channel 8-bit). Names below are imported on
first use, so ``import segkit.inference`` stays cheap.
"""

import importlib

_EXPORTS = {
    "Predictor": "predictor",
    "Prediction": "predictor",
    "metadata_for": "predictor",
    "OnnxPredictor": "onnx_predictor",
    "TorchScriptPredictor": "onnx_predictor",
    "OpenVinoPredictor": "onnx_predictor",
    "load_exported": "onnx_predictor",
    "ExportedModel": "runtime",
    "export_model": "export",
    "draw_prediction": "visualization",
    "masked_image": "visualization",
    "instance_masks": "visualization",
    "save_instance_masks": "visualization",
    "label_map": "visualization",
    "side_by_side": "visualization",
    "coco_results": "coco_results",
    "prediction_to_labelme": "labelme_writer",
    "write_labelme": "labelme_writer",
    "ImageLoadError": "image_io",
    "read_image_rgb": "image_io",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
