"""``segkit COMMAND [ARGS]``: every step of the toolkit as one installed command, in the shape of
``yolo`` and detectron2's tools. Each command is the ``main`` the top-level script of a checkout
calls (``segkit train`` is ``python train_net.py``), with the same arguments.

    segkit convert LABELME_DIR            # -> data/ (COCO files + images)
    segkit train --config-file configs/mask_rcnn_lite0_FPN.yaml   # -> output/lite0/ (the latest run)
    segkit val --split test               # evaluate the latest run's best checkpoint
    segkit predict --input photos/ --output out/
    segkit app

``--config-file configs/NAME.yaml`` finds the configs shipped with segkit from any folder.
"""

import importlib
import sys

# name: (module, function, what it does). Imported only when called, so `segkit --help` is quick.
COMMANDS = {
    "convert": ("segkit.data.coco_convert", "main", "LabelMe folder -> data folder (COCO files, images/); labelme2coco.py"),
    "import": ("segkit.data.importer", "main", "another tool's export (COCO, YOLO, VOC, masks, ...) -> data folder; import_data.py"),
    "export-data": ("segkit.data.coco_export", "main", "data folder -> LabelMe or YOLO; export_data.py"),
    "sample": ("segkit.data.sample", "main", "generate a LabelMe sample set"),
    "report": ("segkit.data.report", "main", "dataset report: counts per class and split, sizes, duplicates"),
    "browse": ("segkit.data.browse", "main", "ground-truth overlays of a split"),
    "train": ("segkit.evaluation.train_net", "main", "train a model into a new run folder; train_net.py"),
    "val": ("segkit.evaluation.train_net", "evaluate_main", "evaluate a checkpoint on a split (default: the latest run); train_net.py --eval-only"),
    "predict": ("segkit.cli.predict", "main", "predictions on images or a video; predict.py"),
    "export": ("segkit.inference.export", "main", "TorchScript or ONNX export; export_model.py"),
    "suspects": ("segkit.loop.suspects_cli", "main", "likely label errors, cross-validated"),
    "review": ("segkit.loop.review", "main", "error review of an evaluation, worst images first"),
    "app": ("segkit.app.gradio_app", "main", "the Gradio app on http://127.0.0.1:7860; app.py"),
}


def usage():
    width = max(map(len, COMMANDS))
    lines = ["usage: segkit COMMAND [ARGS ...]   (segkit COMMAND --help for its arguments)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"segkit: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[name]
    sys.argv = [f"segkit {name}", *rest]  # what argparse shows as the program in usage lines
    status = getattr(importlib.import_module(module), function)(rest)
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
