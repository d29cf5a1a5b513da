"""``python app.py``: a Gradio app around a trained checkpoint.

    python app.py [--weights output/model_final.pth] [--host 127.0.0.1] [--port 7860]

- upload an image (or pick an example from the dataset's val split, when the checkpoint's config
  names one that exists: DATASETS.DATA_DIR / DATASETS.TEST);
- the result: Visualizer overlay (masks, boxes, ``label score``), a confidence slider and a class
  filter that redraw from the cached prediction (the model is not run again), a table of instances
  (class, score, area in px, box), downloads (overlay PNG, masks zip, COCO results JSON, LabelMe
  JSON); U-Net checkpoints show the class map overlay and a per-class table instead;
- a panel with the model's classes and its evaluation AP when the checkpoint's folder has the
  evaluator's JSON (``eval/metrics_<dataset>.json``, ``eval/sem_seg_metrics.json``);
- without a checkpoint the app still starts and says which command to run first;
- bad uploads (not an image, truncated, empty, huge) give a message on the page; the server keeps
  serving. Large images are predicted at most MAX_PREDICT_SIDE px and shown at most
  MAX_DISPLAY_SIDE px.

The same prediction is an API endpoint (``api_name="predict"``)::

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    overlay, table, files, message = client.predict(
        handle_file("photo.jpg"), 0.5, ["disc", "square"], api_name="/predict")  # [] = all classes
    # overlay: path of the PNG; table: {"headers": [...], "data": [[...], ...]};
    # files: paths of overlay PNG, masks zip, COCO results JSON, LabelMe JSON; message: text
"""

import argparse
import glob
import json
import logging
import os
import shutil
import tempfile
import threading
import traceback
import warnings
import zipfile
from collections import deque

import cv2
import gradio as gr
import numpy as np
import pandas as pd

from segkit.inference.image_io import ImageLoadError, read_image_rgb

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = os.path.join("output", "model_final.pth")
TRAIN_COMMAND = "python train_net.py --config-file configs/mask_rcnn_R_18_FPN_mini.yaml"
MIN_SCORE = 0.05  # the model keeps instances from here; the slider filters above it
MAX_PREDICT_SIDE = 2048  # larger uploads are downscaled first: the model sees <= 1333 px anyway, and
# masks at input size cost H x W bytes per instance
MAX_DISPLAY_SIDE = 1600
MAX_UPLOAD_PIXELS = 64_000_000
MAX_UPLOAD_BYTES = "200mb"
INSTANCE_HEADERS = ["#", "class", "score", "area (px)", "box (x0, y0, x1, y1)"]
SEMANTIC_HEADERS = ["#", "class", "area (px)", "share"]


class UploadImage(gr.Image):
    """gr.Image whose upload reaches our function as a file path without being decoded first:
    gr.Image opens every upload with PIL before the function runs, so an upload that is not an
    image, is empty, or is 20000x20000 px would fail inside Gradio with a bare "Error" instead of
    a message on the page. ``is_template`` keeps gr.Image's front end."""

    is_template = True

    def preprocess(self, payload):
        if payload is None:
            return None
        if getattr(payload, "url", None) and str(payload.url).startswith("data:"):
            return super().preprocess(payload)
        return None if payload.path is None else str(payload.path)


# ----------------------------------------------------------------------------- model side


class AppModel:
    """The checkpoint behind the app (or the reason there is none) and what the page shows of it."""

    def __init__(self, weights=DEFAULT_WEIGHTS, device=None, predictor=None):
        self.weights = os.fspath(weights)
        self.predictor = predictor
        self.error = None
        if predictor is None:
            if not os.path.isfile(self.weights):
                self.error = (f"No checkpoint at `{self.weights}`. Train one first: `{TRAIN_COMMAND}` "
                              f"(or start the app with `--weights PATH`).")
            else:
                try:
                    from segkit.inference.predictor import Predictor

                    self.predictor = Predictor.from_checkpoint(
                        self.weights, device=device, confidence_threshold=MIN_SCORE)
                except Exception as e:  # the page says why; the server still starts
                    logger.exception("could not load %s", self.weights)
                    self.error = f"Could not load `{self.weights}`: {e.__class__.__name__}: {e}"
        self.lock = threading.Lock()
        self.calls = 0  # model runs (not redraws)

    @property
    def ready(self):
        return self.predictor is not None

    @property
    def class_names(self):
        return list(self.predictor.class_names) if self.ready else []

    @property
    def semantic(self):
        return bool(self.ready and self.predictor.semantic)

    def predict(self, image_rgb):
        with self.lock:
            self.calls += 1
            return self.predictor(image_rgb, rgb=True)

    def example_images(self, limit=8):
        """Up to ``limit`` images of the test split named by the checkpoint's config."""
        if not self.ready:
            return []
        cfg = self.predictor.cfg
        data_dir = cfg.DATASETS.DATA_DIR
        found = []
        for name in cfg.DATASETS.TEST:
            split = name.rsplit("_", 1)[-1]
            json_file = os.path.join(data_dir, f"{split}.json")
            try:
                with open(json_file, encoding="utf-8") as f:
                    images = json.load(f).get("images", [])
            except (OSError, ValueError):
                continue
            for im in images:
                path = os.path.join(data_dir, "images", str(im.get("file_name", "")))
                if os.path.isfile(path) and path not in found:
                    found.append(path)
                if len(found) >= limit:
                    return found
        return found

    def eval_files(self):
        """Evaluation JSON files beside the checkpoint (``eval/``) and under OUTPUT_DIR/eval."""
        dirs = [os.path.join(os.path.dirname(os.path.abspath(self.weights)), "eval")]
        if self.ready:
            dirs.append(os.path.abspath(os.path.join(self.predictor.cfg.OUTPUT_DIR, "eval")))
        files = []
        for d in dict.fromkeys(dirs):
            files += sorted(glob.glob(os.path.join(d, "*.json")) + glob.glob(os.path.join(d, "*", "*.json")))
        return list(dict.fromkeys(files))

    def info_markdown(self):
        if not self.ready:
            return "### Model\nNone loaded (see the top of the page)."
        p = self.predictor
        kind = "semantic segmentation (U-Net)" if p.semantic else "instance segmentation"
        lines = [
            "### Model",
            f"`{self.weights}`  ",
            f"{p.cfg.MODEL.META_ARCHITECTURE}, {kind}, on {p.device.type}",
            "",
            "**Classes:** " + ", ".join(f"`{c}`" for c in p.class_names),
        ]
        lines += eval_markdown(self.eval_files())
        return "\n".join(lines)


def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def _fmt(v, scale=1.0):
    return f"{v * scale:.1f}" if _num(v) else "n/a"


def eval_markdown(files):
    """Markdown lines summarising whatever evaluation JSON is there, read defensively."""
    lines = []
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        name = data.get("dataset") or os.path.splitext(os.path.basename(path))[0]
        tasks = [t for t in ("bbox", "segm") if isinstance(data.get(t), dict)]
        if tasks:
            lines += ["", f"**Evaluation on `{name}`**", "", "| metric | " + " | ".join(tasks) + " |",
                      "|---|" + "---|" * len(tasks)]
            for m in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
                if any(m in data[t] for t in tasks):
                    lines.append(f"| {m} | " + " | ".join(_fmt(data[t].get(m)) for t in tasks) + " |")
            per_class = data.get("segm", {}).get("per_class") or data.get("bbox", {}).get("per_class")
            if isinstance(per_class, dict) and per_class:
                lines += ["", "| class | AP | AP50 |", "|---|---|---|"]
                for cname, v in per_class.items():
                    if isinstance(v, dict):
                        lines.append(f"| {cname} | {_fmt(v.get('AP'))} | {_fmt(v.get('AP50'))} |")
            continue
        if any(k in data for k in ("mIoU", "mDice")):
            lines += ["", f"**Evaluation on `{name}`**: mIoU {_fmt(data.get('mIoU'), 100)}, "
                          f"mDice {_fmt(data.get('mDice'), 100)}, pixel acc. {_fmt(data.get('pACC'), 100)}"]
            classes = data.get("classes")
            if isinstance(classes, list) and classes:
                lines += ["", "| class | Dice | IoU |", "|---|---|---|"]
                for c in classes:
                    if isinstance(c, dict):
                        lines.append(f"| {c.get('name')} | {_fmt(c.get('dice'), 100)} | {_fmt(c.get('iou'), 100)} |")
            continue
        flat = {k: v for k, v in data.items() if _num(v)}
        if flat:
            lines += ["", f"**{name}**: " + ", ".join(f"{k} {v:.3g}" for k, v in list(flat.items())[:8])]
    if not lines:
        lines = ["", "No evaluation results next to the checkpoint (train_net.py writes them to "
                     "`OUTPUT_DIR/eval/` when it evaluates)."]
    return lines


# ----------------------------------------------------------------------------- rendering


class _Workdirs:
    """Per-request folders for the download files; only the most recent ones are kept."""

    def __init__(self, keep=32):
        self.dirs = deque()
        self.keep = keep
        self.lock = threading.Lock()

    def new(self):
        d = tempfile.mkdtemp(prefix="segkit_app_")
        with self.lock:
            self.dirs.append(d)
            while len(self.dirs) > self.keep:
                shutil.rmtree(self.dirs.popleft(), ignore_errors=True)
        return d

    def cleanup(self):
        with self.lock:
            while self.dirs:
                shutil.rmtree(self.dirs.popleft(), ignore_errors=True)


def _semantic_subset(prediction, classes):
    """Class map restricted to the selected classes (others set past the class list, which
    draw_sem_seg skips)."""
    cmap = prediction.class_map().astype(np.int64)
    if classes is not None:
        keep = [i for i, c in enumerate(prediction.class_names) if c in set(classes)]
        cmap[~np.isin(cmap, keep)] = len(prediction.class_names)
    return cmap


def _table(prediction, classes):
    if prediction.is_semantic:
        cmap = _semantic_subset(prediction, classes)
        total = cmap.size
        rows = []
        for c in range(len(prediction.class_names)):
            n = int((cmap == c).sum())
            if n:
                rows.append([len(rows) + 1, prediction.class_names[c], n, f"{100 * n / total:.1f}%"])
        return pd.DataFrame(rows, columns=SEMANTIC_HEADERS)
    rows = [[r["index"] + 1, r["class"], round(r["score"], 3), r["area"],
             ", ".join(f"{v:.0f}" for v in r["box"]) if r["box"] else ""]
            for r in prediction.records()]
    return pd.DataFrame(rows, columns=INSTANCE_HEADERS)


def _zip_masks(prediction, path, stem):
    from segkit.inference.visualization import instance_masks

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, mask in instance_masks(prediction):
            ok, buf = cv2.imencode(".png", mask)
            z.writestr(f"{stem}_{name}.png", buf.tobytes())
    return path


def render(prediction, min_score, classes, workdirs, note=""):
    """(overlay RGB array, table, download paths, message) for the cached ``prediction`` filtered
    by ``min_score`` and ``classes``; no model call."""
    from segkit.inference import visualization as vis
    from segkit.inference.coco_results import coco_results
    from segkit.inference.labelme_writer import prediction_to_labelme

    classes = list(classes) if classes is not None else list(prediction.class_names)
    shown = prediction if prediction.is_semantic else prediction.filter(min_score, classes)
    display = vis.downscale(shown, MAX_DISPLAY_SIDE)
    if prediction.is_semantic:
        from detectron2.utils.visualizer import Visualizer

        cmap = _semantic_subset(display, classes)
        v = Visualizer(display.image, metadata=display.metadata)
        overlay = v.draw_sem_seg(cmap, alpha=0.6).get_image()
    else:
        overlay = vis.draw_prediction(display)
    table = _table(shown, classes)

    out = workdirs.new()
    stem = os.path.splitext(os.path.basename(prediction.file_name or "image"))[0] or "image"
    files = [vis.save_png(overlay, os.path.join(out, f"{stem}_overlay.png"))]
    files.append(_zip_masks(shown, os.path.join(out, f"{stem}_masks.zip"), stem))
    results = coco_results(shown, 1, file_name=os.path.basename(prediction.file_name or "image"))
    coco_path = os.path.join(out, f"{stem}_coco_results.json")
    with open(coco_path, "w", encoding="utf-8") as f:
        json.dump(results, f)
    files.append(coco_path)
    image_name = os.path.basename(prediction.file_name or f"{stem}.png")
    labelme = prediction_to_labelme(shown, os.path.join(out, image_name), os.path.join(out, f"{stem}.json"))
    labelme_path = os.path.join(out, f"{stem}.json")
    with open(labelme_path, "w", encoding="utf-8") as f:
        json.dump(labelme, f, indent=2)
    files.append(labelme_path)

    h, w = prediction.image_size
    if prediction.is_semantic:
        msg = f"{w}x{h} px: {len(table)} class(es) present."
    else:
        msg = (f"{w}x{h} px: {len(shown)} of {len(prediction)} instance(s) shown "
               f"(score >= {min_score:.2f}, {len(classes)} of {len(prediction.class_names)} classes).")
    if display is not shown:
        msg += f" Shown at {display.image_size[1]}x{display.image_size[0]} px."
    return overlay, table, files, (note + " " + msg).strip()


def _empty(message, semantic=False):
    return None, pd.DataFrame([], columns=SEMANTIC_HEADERS if semantic else INSTANCE_HEADERS), [], message


# ----------------------------------------------------------------------------- the Blocks


def build_app(weights=DEFAULT_WEIGHTS, device=None, predictor=None):
    """The gr.Blocks of the app (not launched). ``predictor`` may be given instead of ``weights``.
    The AppModel is ``blocks.segkit_model``."""
    model = AppModel(weights, device=device, predictor=predictor)
    workdirs = _Workdirs()
    names = model.class_names
    examples = model.example_images()

    def predict(image_path, min_score, classes):
        """Segment one image: overlay, instance table, downloads, message (and the cache).
        No classes (``[]`` or None, as the API documents it) means all classes."""
        classes = list(classes or names)
        if not model.ready:
            return (*_empty(model.error, model.semantic), None)
        if not image_path:
            return (*_empty("Upload an image (or pick an example).", model.semantic), None)
        name = os.path.basename(str(image_path))
        try:
            image = read_image_rgb(image_path, max_pixels=MAX_UPLOAD_PIXELS)
        except ImageLoadError as e:
            return (*_empty(f"**Cannot use this upload** ({name}): {e.reason}", model.semantic), None)
        except Exception as e:  # anything else about the file: say so, keep serving
            return (*_empty(f"**Cannot use this upload** ({name}): {e.__class__.__name__}: {e}",
                            model.semantic), None)
        note = ""
        h, w = image.shape[:2]
        if max(h, w) > MAX_PREDICT_SIDE:
            s = MAX_PREDICT_SIDE / max(h, w)
            image = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
            note = (f"Large image ({w}x{h} px): predicted at {image.shape[1]}x{image.shape[0]} px, "
                    f"the size of the downloads.")
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="torch.meshgrid")
                prediction = model.predict(image)
        except Exception as e:
            logger.error("prediction failed:\n%s", traceback.format_exc())
            return (*_empty(f"**Prediction failed**: {e.__class__.__name__}: {e}", model.semantic), None)
        prediction.file_name = name
        return (*render(prediction, min_score, classes, workdirs, note), prediction)

    def redraw(prediction, min_score, classes):
        """Filter the cached prediction again: no model call."""
        if prediction is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            return render(prediction, min_score, classes, workdirs)
        except Exception as e:
            logger.error("redraw failed:\n%s", traceback.format_exc())
            return gr.skip(), gr.skip(), gr.skip(), f"**Redraw failed**: {e}"

    with gr.Blocks(title="segkit: segmentation", delete_cache=(3600, 3600)) as blocks:
        gr.Markdown("# segkit: instance and semantic segmentation")
        if not model.ready:
            gr.Markdown(f"## No model loaded\n{model.error}", elem_id="no-model")
        cache = gr.State(None)
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    image_in = UploadImage(label="Image", type="filepath", image_mode=None,
                                           sources=["upload", "clipboard"], elem_id="input-image",
                                           height=420)
                    image_out = gr.Image(label="Result", type="numpy", format="png",
                                         interactive=False, elem_id="result-image", height=420)
                message = gr.Markdown("Upload an image (or pick an example)." if model.ready else
                                      "No model loaded: see the top of the page.", elem_id="message")
                with gr.Row():
                    min_score = gr.Slider(MIN_SCORE, 1.0, value=0.5, step=0.01, label="Confidence",
                                          info="instances below this score are hidden (no re-run)",
                                          elem_id="confidence")
                    classes = gr.CheckboxGroup(choices=names, value=names, label="Classes",
                                               elem_id="classes")
                table = gr.Dataframe(headers=SEMANTIC_HEADERS if model.semantic else INSTANCE_HEADERS,
                                     label="Instances", interactive=False, elem_id="instances",
                                     wrap=True)
                downloads = gr.File(label="Downloads: overlay PNG, masks (zip), COCO results JSON, "
                                          "LabelMe JSON", file_count="multiple", interactive=False,
                                    elem_id="downloads")
                examples_slot = gr.Column()
            with gr.Column(scale=1):
                gr.Markdown(model.info_markdown(), elem_id="model-info")

        outputs = [image_out, table, downloads, message]
        # .upload, not .change: .change fires twice when an upload replaces an image
        image_in.upload(predict, inputs=[image_in, min_score, classes], outputs=outputs + [cache],
                        api_name="predict")
        image_in.clear(lambda: (*_empty("Upload an image (or pick an example).", model.semantic), None),
                       outputs=outputs + [cache], api_visibility="private")
        if examples:
            with examples_slot:
                split = ", ".join(model.predictor.cfg.DATASETS.TEST)
                ex = gr.Examples(examples=[[p] for p in examples], inputs=[image_in],
                                 cache_examples=False, label=f"Examples ({split})",
                                 elem_id="examples")
            ex.load_input_event.then(predict, inputs=[image_in, min_score, classes],
                                     outputs=outputs + [cache], api_visibility="private")
        min_score.release(redraw, inputs=[cache, min_score, classes], outputs=outputs,
                          api_visibility="private", show_progress="minimal")
        classes.change(redraw, inputs=[cache, min_score, classes], outputs=outputs,
                       api_visibility="private", show_progress="minimal")
    blocks.segkit_model = model
    blocks.segkit_predict = predict  # the functions behind the events, for tests and scripting
    blocks.segkit_redraw = redraw
    blocks.segkit_workdirs = workdirs
    blocks.segkit_examples = examples
    return blocks


def launch(blocks, host="127.0.0.1", port=7860, **kwargs):
    """Launch with the example folders allowed; returns what Blocks.launch returns."""
    allowed = sorted({os.path.dirname(os.path.abspath(p)) for p in getattr(blocks, "segkit_examples", [])})
    kwargs.setdefault("max_file_size", MAX_UPLOAD_BYTES)
    return blocks.launch(server_name=host, server_port=port, allowed_paths=allowed or None, **kwargs)


def get_parser():
    p = argparse.ArgumentParser(prog="app.py", description="Gradio app for a trained checkpoint.")
    p.add_argument("--weights", default=DEFAULT_WEIGHTS, help=f"checkpoint (default {DEFAULT_WEIGHTS})")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; 0.0.0.0 exposes the app to your network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    blocks = build_app(args.weights, device=args.device)
    model = blocks.segkit_model
    print(f"model: {args.weights}" if model.ready else f"warning: {model.error}")
    try:
        launch(blocks, host=args.host, port=args.port)
    finally:
        blocks.segkit_workdirs.cleanup()
    return 0
