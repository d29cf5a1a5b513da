"""``python app.py``: a Gradio app around a trained checkpoint.

    python app.py [--weights CHECKPOINT_OR_RUN] [--host 127.0.0.1] [--port 7860]

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
  MAX_DISPLAY_SIDE px;
- "Tiles" (Mask R-CNN only) predicts the upload at full size on overlapping tiles
  (segkit/modeling/tiling.py), for large images with small objects; masks stay box-sized crops,
  so MAX_PREDICT_SIDE does not apply.

The same prediction is an API endpoint (``api_name="predict"``)::

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    overlay, table, files, message = client.predict(
        handle_file("photo.jpg"), 0.5, ["disc", "square"], False, api_name="/predict")
    # [] = all classes; the last value: tiled prediction (optional, default False)
    # overlay: path of the PNG; table: {"headers": [...], "data": [[...], ...]};
    # files: paths of overlay PNG, masks zip, COCO results JSON, LabelMe JSON; message: text
"""

import argparse
import logging
import os
import traceback
import warnings
from dataclasses import dataclass
from typing import Callable, List

import cv2
import gradio as gr

from segkit.app.model import MIN_SCORE, AppModel
from segkit.app.render import INSTANCE_HEADERS, SEMANTIC_HEADERS, Workdirs, empty_result, render
from segkit.inference.image_io import ImageLoadError, read_image_rgb

logger = logging.getLogger(__name__)

MAX_PREDICT_SIDE = 2048  # larger uploads are downscaled first: the model sees <= 1333 px anyway, and
# masks at input size cost H x W bytes per instance
MAX_UPLOAD_PIXELS = 64_000_000
MAX_UPLOAD_BYTES = "200mb"


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


@dataclass
class SegkitApp:
    """The page (``blocks``, not launched), the model behind it, and the functions behind its
    events (for tests and scripting)."""

    blocks: gr.Blocks
    model: AppModel
    predict: Callable
    redraw: Callable
    workdirs: Workdirs
    examples: List[str]


def build_app(weights=None, device=None, predictor=None):
    """The gr.Blocks of the app (not launched). ``predictor`` may be given instead of ``weights``.
    Returns a :class:`SegkitApp`."""
    model = AppModel(weights, device=device, predictor=predictor)
    workdirs = Workdirs()
    names = model.class_names
    examples = model.example_images()

    def predict(image_path, min_score, classes, tiled=False):
        """Segment one image: overlay, instance table, downloads, message (and the cache).
        No classes (``[]`` or None, as the API documents it) means all classes. ``tiled``: on
        tiles at full size (Mask R-CNN), see the module docstring."""
        classes = list(classes or names)
        if not model.ready:
            return (*empty_result(model.error, model.semantic), None)
        if not image_path:
            return (*empty_result("Upload an image (or pick an example).", model.semantic), None)
        name = os.path.basename(str(image_path))
        try:
            image = read_image_rgb(image_path, max_pixels=MAX_UPLOAD_PIXELS)
        except ImageLoadError as e:
            return (*empty_result(f"**Cannot use this upload** ({name}): {e.reason}", model.semantic), None)
        except Exception as e:  # anything else about the file: say so, keep serving
            return (*empty_result(f"**Cannot use this upload** ({name}): {e.__class__.__name__}: {e}",
                            model.semantic), None)
        note = ""
        h, w = image.shape[:2]
        tiled = bool(tiled) and not model.semantic and model.tile_size > 0
        if tiled:
            note = f"Predicted on {model.tile_size} px tiles at full size ({w}x{h} px)."
        elif max(h, w) > MAX_PREDICT_SIDE:
            s = MAX_PREDICT_SIDE / max(h, w)
            image = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
            note = (f"Large image ({w}x{h} px): predicted at {image.shape[1]}x{image.shape[0]} px, "
                    f"the size of the downloads.")
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="torch.meshgrid")
                prediction = model.predict(image, tiled=tiled)
        except Exception as e:
            logger.error("prediction failed:\n%s", traceback.format_exc())
            return (*empty_result(f"**Prediction failed**: {e.__class__.__name__}: {e}", model.semantic), None)
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
                    min_score = gr.Slider(MIN_SCORE, 1.0, value=model.default_score, step=0.01,
                                          label="Confidence",
                                          info=f"instances below this score are hidden (no re-run); "
                                               f"{model.score_note}",
                                          elem_id="confidence")
                    classes = gr.CheckboxGroup(choices=names, value=names, label="Classes",
                                               elem_id="classes")
                    tiles = gr.Checkbox(value=False, label="Tiles", elem_id="tiles",
                                        visible=model.ready and not model.semantic and model.tile_size > 0,
                                        info=f"large images, small objects: predict at full size on "
                                             f"{model.tile_size} px tiles (the model runs again)")
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
        image_in.upload(predict, inputs=[image_in, min_score, classes, tiles], outputs=outputs + [cache],
                        api_name="predict")
        image_in.clear(lambda: (*empty_result("Upload an image (or pick an example).", model.semantic), None),
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
    return SegkitApp(blocks, model, predict, redraw, workdirs, examples)


def launch(app, host="127.0.0.1", port=7860, **kwargs):
    """Launch ``app`` (a SegkitApp) with the example folders and the report pages' folders allowed
    (their pictures load relative to the page); returns what Blocks.launch returns."""
    allowed = sorted({os.path.dirname(os.path.abspath(p)) for p in app.examples}
                     | {os.path.dirname(page) for _, page in app.model.report_pages()})
    kwargs.setdefault("max_file_size", MAX_UPLOAD_BYTES)
    return app.blocks.launch(server_name=host, server_port=port, allowed_paths=allowed or None, **kwargs)


def get_parser():
    p = argparse.ArgumentParser(prog="app.py", description="Gradio app for a trained checkpoint.")
    p.add_argument("--weights", default=None, metavar="CHECKPOINT_OR_RUN",
                   help="a checkpoint, run folder or run name (default: the latest run's best checkpoint)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; 0.0.0.0 exposes the app to your network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    app = build_app(args.weights, device=args.device)
    model = app.model
    print(f"model: {model.weights}" if model.ready else f"warning: {model.error}")
    try:
        launch(app, host=args.host, port=args.port)
    finally:
        app.workdirs.cleanup()
    return 0
