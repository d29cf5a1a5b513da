"""What the page shows for one prediction: overlay, table, download files, message. Redraws
filter the cached prediction; the model is not run again."""

import json
import os
import shutil
import tempfile
import threading
import zipfile
from collections import deque

import cv2
import numpy as np
import pandas as pd

MAX_DISPLAY_SIDE = 1600
INSTANCE_HEADERS = ["#", "class", "score", "area (px)", "box (x0, y0, x1, y1)"]
SEMANTIC_HEADERS = ["#", "class", "area (px)", "share"]


class Workdirs:
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
    from segkit.inference.visualization import iter_instance_masks

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, mask in iter_instance_masks(prediction):
            ok, buf = cv2.imencode(".png", mask)
            z.writestr(f"{stem}_{name}.png", buf.tobytes())
    return path


def render(prediction, min_score, classes, workdirs, note=""):
    """(overlay RGB array, table, download paths, message) for the cached ``prediction`` filtered
    by ``min_score`` and ``classes``; no model call."""
    from segkit.inference import visualization as vis
    from segkit.inference.coco_results import coco_results
    from segkit.inference.counts import class_counts, counts_line
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
               f"(score >= {min_score:.2f}, {len(classes)} of {len(prediction.class_names)} classes). "
               f"Counts: {counts_line(class_counts(results, shown.class_names))}.")
    if display is not shown:
        msg += f" Shown at {display.image_size[1]}x{display.image_size[0]} px."
    return overlay, table, files, (note + " " + msg).strip()


def empty_result(message, semantic=False):
    return None, pd.DataFrame([], columns=SEMANTIC_HEADERS if semantic else INSTANCE_HEADERS), [], message
