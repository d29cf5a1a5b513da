"""The checkpoint behind the app and what the page says about it (classes, evaluation)."""

import glob
import json
import logging
import os
import threading

from segkit.data.run_layout import DEFAULT_SCORE_THRESHOLD, EVAL_DIR, KEY_SCORE_THRESHOLD, NoModelError, resolve_weights
from segkit.evaluation.metrics_files import read_metrics_file, find_metrics_files
from segkit.modeling.tiling import default_tile_size

logger = logging.getLogger(__name__)

# Gradio serves files under allowed_paths inline at this route (segkit.app.gradio_app.launch allows them).
FILE_ROUTE = "/gradio_api/file="
MIN_SCORE = 0.05  # the model keeps instances from here; the slider filters above it


def load_predictor(weights, device=None):
    """The app's predictor of a checkpoint or of an exported model (``.onnx``, its sidecar beside
    it: segkit.inference.runtime.BACKENDS says which suffixes), keeping instances from MIN_SCORE."""
    from segkit.inference.runtime import is_exported

    if is_exported(weights):
        from segkit.inference.onnx_predictor import load_exported_predictor

        return load_exported_predictor(weights, confidence_threshold=MIN_SCORE)
    from segkit.inference.predictor import Predictor

    return Predictor.from_checkpoint(weights, device=device, confidence_threshold=MIN_SCORE)


class AppModel:
    """The checkpoint behind the app (or the reason there is none) and what the page shows of it."""

    def __init__(self, weights=None, device=None, predictor=None):
        """``weights``: a checkpoint, run folder, run name or exported model (``.onnx``); None: the
        latest run's best checkpoint."""
        self.weights = os.fspath(weights) if weights is not None else (predictor.weights if predictor else "")
        self.predictor = predictor
        self.error = None
        if predictor is None:
            try:
                self.weights = resolve_weights(weights and os.fspath(weights))
            except NoModelError as e:
                self.error = f"{e} (The app takes `--weights CHECKPOINT_OR_RUN`.)"
            else:
                try:
                    self.predictor = load_predictor(self.weights, device)
                except Exception as e:  # the page says why; the server still starts
                    logger.exception("could not load %s", self.weights)
                    self.error = f"Could not load `{self.weights}`: {e.__class__.__name__}: {e}"
        self.lock = threading.Lock()
        self._tiled = None  # the predictor on tiles, made at the first tiled request
        self.calls = 0  # model runs (not redraws)
        self.default_score, self.score_note = self._default_score()

    def _default_score(self):
        """The slider's start and the one line saying why: the checkpoint's best-F1 threshold
        for all classes when its evaluation stored one, else 0.5."""
        stored = getattr(self.predictor, "stored_thresholds", {}).get(KEY_SCORE_THRESHOLD) if self.ready else None
        if stored is None:
            return DEFAULT_SCORE_THRESHOLD, (f"starts at {DEFAULT_SCORE_THRESHOLD:g} (default: the checkpoint carries "
                                             "no evaluated threshold)")
        value = min(max(round(float(stored), 2), MIN_SCORE), 1.0)
        return value, f"starts at {value:.2f}, the best-F1 threshold of the checkpoint's evaluation"

    @property
    def ready(self):
        return self.predictor is not None

    @property
    def class_names(self):
        return list(self.predictor.class_names) if self.ready else []

    @property
    def semantic(self):
        return bool(self.ready and self.predictor.semantic)

    @property
    def tile_size(self):
        """The tile size of the "Tiles" option; 0: no tiling (no model, or an exported one: tiles
        run on the checkpoint)."""
        if not self.ready or not getattr(self.predictor, "supports_tiles", True):
            return 0
        return default_tile_size(self.predictor.cfg)

    def predict(self, image_rgb, tiled=False):
        with self.lock:
            self.calls += 1
            if tiled:
                if self._tiled is None:
                    self._tiled = self.predictor.with_tiles(self.tile_size, self.predictor.cfg.TEST.TILE_OVERLAP)
                return self._tiled(image_rgb, rgb=True)
            return self.predictor(image_rgb, rgb=True)

    def example_images(self, limit=8):
        """Up to ``limit`` images of the test split named by the checkpoint's config."""
        if not self.ready:
            return []
        from detectron2.data import MetadataCatalog

        from segkit.engine.launch import register_datasets

        cfg = self.predictor.cfg
        register_datasets(cfg)
        found = []
        for name in cfg.DATASETS.TEST:
            meta = MetadataCatalog.get(name)
            json_file, images_dir = meta.get("json_file", None), meta.get("image_root", None)
            if not json_file or not images_dir:
                continue
            try:
                with open(json_file, encoding="utf-8") as f:
                    images = json.load(f).get("images", [])
            except (OSError, ValueError):
                continue
            for im in images:
                path = os.path.join(images_dir, str(im.get("file_name", "")))
                if os.path.isfile(path) and path not in found:
                    found.append(path)
                if len(found) >= limit:
                    return found
        return found

    def eval_files(self):
        """Evaluation files beside the checkpoint (``eval/``) and under OUTPUT_DIR/eval."""
        dirs = [os.path.join(os.path.dirname(os.path.abspath(self.weights)), EVAL_DIR)]
        if self.ready:
            dirs.append(os.path.abspath(os.path.join(self.predictor.cfg.OUTPUT_DIR, EVAL_DIR)))
        return find_metrics_files(dirs)

    def report_pages(self):
        """``[(title, index.html)]`` of the error review and suspect-label pages beside the checkpoint
        (its folder or OUTPUT_DIR): ``review/`` (segkit.loop.review) and ``suspects*/``
        (segkit.loop.suspects_cli ``--output``)."""
        dirs = [os.path.dirname(os.path.abspath(self.weights))]
        if self.ready:
            dirs.append(os.path.abspath(self.predictor.cfg.OUTPUT_DIR))
        pages = {}
        for d in dict.fromkeys(dirs):
            review = os.path.join(d, "review", "index.html")
            if os.path.isfile(review):
                pages.setdefault(review, "Error review: the worst images first")
            for page in sorted(glob.glob(os.path.join(d, "suspects*", "index.html"))):
                pages.setdefault(page, f"Suspect labels ({os.path.basename(os.path.dirname(page))}): "
                                       "likely annotation errors, ranked")
        return [(title, path) for path, title in pages.items()]

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
        pages = self.report_pages()
        if pages:
            lines += ["", "**Reports**", ""] + [f"- [{title}]({FILE_ROUTE}{path})" for title, path in pages]
        return "\n".join(lines)


def _fmt(v):
    return "n/a" if v is None else f"{v:.1f}"


def eval_markdown(files):
    """Markdown lines summarising our evaluation files among ``files``."""
    lines = []
    for summary in filter(None, map(read_metrics_file, files)):
        title = f"**Evaluation on `{summary.dataset}`**"
        if summary.kind == "coco":
            lines += ["", title, "", "| metric | " + " | ".join(summary.columns) + " |",
                      "|---|" + "---|" * len(summary.columns)]
            lines += [f"| {m} | " + " | ".join(map(_fmt, values)) + " |" for m, values in summary.rows]
        else:
            lines += ["", title + ": " + ", ".join(f"{m} {_fmt(v[0])}" for m, v in summary.rows)]
        if summary.class_rows:
            lines += ["", "| class | " + " | ".join(summary.class_columns) + " |",
                      "|---|" + "---|" * len(summary.class_columns)]
            lines += [f"| {c} | " + " | ".join(map(_fmt, values)) + " |" for c, values in summary.class_rows]
    if not lines:
        lines = ["", "No evaluation results next to the checkpoint (train_net.py writes them to "
                     "`OUTPUT_DIR/eval/` when it evaluates)."]
    return lines
