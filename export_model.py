#!/usr/bin/env python
"""Export a trained checkpoint for deployment (detectron2 TracingAdapter).

    python export_model.py --format onnx          # the latest run: output/lite0/model_best.onnx + .onnx.json
    python export_model.py --format onnx --int8   # INT8: model_best.int8.onnx (refused if it loses > 1 segm AP)
    python export_model.py --format openvino      # OpenVINO IR: model_best.xml + .bin (--int8: NNCF)
    python export_model.py --format torchscript --weights output/mini \
                           --sample-image data/images/x.jpg

Run the result with segkit.inference.onnx_predictor.OnnxPredictor / TorchScriptPredictor
/ OpenVinoPredictor (same interface as segkit.inference.Predictor). See segkit/inference/export.py.
"""

import sys

from segkit.inference.export import main

if __name__ == "__main__":
    sys.exit(main())
