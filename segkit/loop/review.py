"""Error review: which images the model gets wrong, how, and which label file to open.

    python -m segkit.loop.review output/mini/eval            # after train_net.py evaluated
    python -m segkit.loop.review --gt data/val.json --predictions results.json -o review/

Reads the ground truth (a COCO file written by our converters) and the predictions
COCOEvaluator saved (``coco_instances_results.json``), matches them per image
(:mod:`segkit.evaluation.matching`: mask IoU >= 0.5, greedy by score) at the evaluation's best-F1
score thresholds (``metrics_<dataset>.json``; ``--score-threshold`` overrides), and writes into
the output folder (default: ``review/`` beside the eval folder):

- ``review.csv`` / ``review.json``: per image the counts of true positives, false positives,
  misses, class confusions and poor masks (box IoU >= 0.5, mask IoU < 0.5) and the path of the
  annotation file it came from, worst first;
- ``images/<rank>_<name>.png``: ground truth | prediction side by side (detectron2 Visualizer),
  errors marked by colour and tag, and a small ``thumbs/`` copy;
- ``index.html``: all of it on one static page, ranked worst first, that opens from disk.

No model runs here: the predictions are the evaluation's, so the page shows what the metrics saw.
"""

import argparse
import csv
import glob
import html
import io
import json
import logging
import os
import sys
from collections import OrderedDict

import cv2
import numpy as np
from detectron2.data.detection_utils import read_image
from detectron2.utils.visualizer import Visualizer
from pycocotools import mask as mask_util
from tqdm import tqdm

from segkit.data.atomic import atomic_path, write_json, write_text
from segkit.evaluation.analysis import analyse_detections, group_by_image
from segkit.data.coco_masks import segmentation_to_rle
from segkit.data.run_layout import CONFIG_YAML, EVAL_DIR, NoModelError, resolve_run

__all__ = ["annotation_source", "build_review", "main", "rank_images"]

logger = logging.getLogger(__name__)

# Colours (RGB 0-1) of the error kinds, shared by the pictures and the page's legend.
STATUS_COLORS = OrderedDict(
    tp=(0.15, 0.75, 0.25),
    fp=(0.95, 0.1, 0.1),
    missed=(0.95, 0.1, 0.1),
    confusion=(1.0, 0.55, 0.0),
    poor_mask=(0.8, 0.2, 0.9),
    ignored=(0.6, 0.6, 0.6),
)
COUNT_COLUMNS = ("tp", "fp", "missed", "confusions", "poor_masks")
THUMB_WIDTH = 480


def annotation_source(coco, image):
    """Path (or URL) of the file holding an image's annotations (contracts #1): info.source +
    image.source_file, else the LabelMe file the converter recorded, else None."""
    source = (coco.get("info") or {}).get("source")
    rel = image.get("source_file")
    if rel:
        return _join(source, rel) if source else rel
    rel = image.get("labelme_file")
    if rel:
        return _join(source, rel) if source else rel
    return None


def _join(base, rel):
    if "://" in base:
        return base.rstrip("/") + "/" + rel
    return os.path.join(base, *rel.split("/"))


def rank_images(rows):
    """Worst first: most errors, then most misses + confusions (labels the model cannot
    reproduce), then name; images without errors keep their order at the end."""
    return sorted(rows, key=lambda r: (-r["errors"], -(r["missed"] + r["confusions"]), r["file_name"]))


def _masks(items, height, width):
    return [mask_util.decode(segmentation_to_rle(d["segmentation"], height, width, raise_errors=True)).astype(bool) for d in items]


def _xyxy(b):
    return [b[0], b[1], b[0] + b[2], b[1] + b[3]]


def _draw(image, items, labels, colors, height, width, with_masks):
    vis = Visualizer(image)
    if items:
        vis.overlay_instances(
            boxes=np.array([_xyxy(d["bbox"]) for d in items], dtype=float),
            masks=_masks(items, height, width) if with_masks else None,
            labels=labels,
            assigned_colors=colors,
            alpha=0.35,
        )
    out = vis.output.get_image()
    if out.shape[:2] != image.shape[:2]:
        out = cv2.resize(out, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_AREA)
    return out


def draw_side_by_side(image, gts, preds, match, names, with_masks=True):
    """RGB uint8: ground truth (left; misses red, confused / poorly outlined objects in their
    error colour) | predictions above the threshold (right; TP green, FP red, confusions orange,
    poor masks violet)."""
    h, w = image.shape[:2]
    gt_status = {g: "tp" for _, g, _ in match.tp}
    gt_status.update({g: "confusion" for _, g, _ in match.confusions})
    gt_status.update({g: "poor_mask" for _, g, *_ in match.poor_masks})
    gt_status.update({g: "missed" for g in match.missed})
    gt_items, gt_labels, gt_colors = [], [], []
    for g, a in enumerate(gts):
        status = "ignored" if a.get("iscrowd", 0) else gt_status.get(g, "tp")
        tag = {"missed": "MISSED ", "confusion": "CONFUSED ", "poor_mask": "POOR MASK ", "ignored": "crowd "}.get(status, "")
        gt_items.append(a)
        gt_labels.append(tag + names.get(a["category_id"], str(a["category_id"])))
        gt_colors.append(STATUS_COLORS[status])
    pred_status = {p: ("tp", None) for p, _, _ in match.tp}
    pred_status.update({p: ("confusion", g) for p, g, _ in match.confusions})
    pred_status.update({p: ("poor_mask", g) for p, g, *_ in match.poor_masks})
    pred_status.update({p: ("fp", None) for p in match.fp})
    pred_status.update({p: ("ignored", None) for p in match.ignored})
    p_items, p_labels, p_colors = [], [], []
    for p, d in enumerate(preds):
        if p not in pred_status:
            continue  # below the score threshold
        status, g = pred_status[p]
        name = names.get(d["category_id"], str(d["category_id"]))
        if status == "confusion":
            label = f"{name} (is {names.get(gts[g]['category_id'], '?')}) {d['score']:.2f}"
        else:
            tag = {"fp": "FP ", "poor_mask": "POOR MASK "}.get(status, "")
            label = f"{tag}{name} {d['score']:.2f}"
        p_items.append(d)
        p_labels.append(label)
        p_colors.append(STATUS_COLORS[status])
    left = _draw(image, gt_items, gt_labels, gt_colors, h, w, with_masks)
    right = _draw(image, p_items, p_labels, p_colors, h, w, with_masks)
    gap = np.full((h, 6, 3), 255, dtype=np.uint8)
    return np.concatenate([left, gap, right], axis=1)


def _write_png(path, rgb):
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: could not encode the PNG")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.tobytes())


def _safe_stem(name, rank):
    stem = os.path.splitext(os.path.basename(str(name)))[0]
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:80] or "image"
    return f"{rank:04d}_{stem}"


def build_review(gt_json, predictions_json, output_dir, image_root=None, *, score_thresholds=None,
                 threshold_note="", iou=0.5, max_images=None, progress=True):
    """Write the review (see the module docstring) and return its rows, worst first.

    ``score_thresholds``: as :func:`segkit.evaluation.matching.score_threshold_of` takes it, or
    None for the best-F1 thresholds computed here from the same predictions.
    ``max_images`` limits the pictures (the worst ones); every image is still counted."""
    with open(gt_json, encoding="utf-8") as f:
        coco = json.load(f)
    with open(predictions_json, encoding="utf-8") as f:
        results = json.load(f)
    image_root = image_root or os.path.join(os.path.dirname(os.path.abspath(gt_json)), "images")
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    category_ids = [c["id"] for c in cats]
    names = {c["id"]: c["name"] for c in cats}
    gt_ids = {im["id"] for im in coco["images"]}
    foreign = sorted({r["image_id"] for r in results} - gt_ids)
    if foreign:
        print(f"{predictions_json}: {len(foreign)} image id(s) not in {gt_json} (another split?): ignored",
              file=sys.stderr)
    with_masks = all("segmentation" in r for r in results)
    grouped = group_by_image(coco["images"], coco["annotations"], [r for r in results if r["image_id"] in gt_ids])
    analysis = analyse_detections(
        grouped, category_ids, [names[c] for c in category_ids], iou=iou,
        iou_type="segm" if with_masks else "bbox", score_thresholds=score_thresholds,
    )
    if not threshold_note:
        applied = analysis.applied_thresholds
        threshold_note = "best-F1 thresholds of these predictions: " + ", ".join(
            f"{names[c]} {applied[c]:.2f}" for c in category_ids if applied.get(c) is not None
        )

    rows = []
    for image, gts, preds, m in analysis.images:
        row = OrderedDict(file_name=image["file_name"], image_id=image["id"])
        row.update(m.counts())
        row["errors"] = m.errors
        row["annotation_file"] = annotation_source(coco, image)
        rows.append((row, image, gts, preds, m))
    order = rank_images([r for r, *_ in rows])
    by_id = {r["image_id"]: rest for r, *rest in rows}

    os.makedirs(output_dir, exist_ok=True)
    drawn = order if max_images is None else order[:max_images]
    for rank, row in enumerate(tqdm(drawn, desc="review", unit="img", disable=not progress), start=1):
        image, gts, preds, m = by_id[row["image_id"]]
        path = os.path.join(image_root, image["file_name"])
        try:
            rgb = read_image(path, format="RGB")
        except (OSError, ValueError) as e:
            print(f"{path}: cannot read the image ({e.__class__.__name__}); no picture", file=sys.stderr)
            continue
        picture = draw_side_by_side(rgb, gts, preds, m, names, with_masks)
        stem = _safe_stem(image["file_name"], rank)
        _write_png(os.path.join(output_dir, "images", stem + ".png"), picture)
        scale = THUMB_WIDTH / picture.shape[1]
        thumb = cv2.resize(picture, (THUMB_WIDTH, max(1, round(picture.shape[0] * scale))), interpolation=cv2.INTER_AREA) if scale < 1 else picture
        _write_png(os.path.join(output_dir, "thumbs", stem + ".png"), thumb)
        row["picture"] = f"images/{stem}.png"
        row["thumbnail"] = f"thumbs/{stem}.png"

    totals = OrderedDict((k, sum(r[k] for r in order)) for k in COUNT_COLUMNS)
    summary = OrderedDict(
        ground_truth=os.path.abspath(gt_json),
        predictions=os.path.abspath(predictions_json),
        iou_type=analysis.iou_type,
        iou=iou,
        thresholds=threshold_note,
        num_images=len(order),
        totals=totals,
    )
    write_json(os.path.join(output_dir, "review.json"), OrderedDict(summary=summary, images=order))
    _write_csv(os.path.join(output_dir, "review.csv"), order)
    write_text(os.path.join(output_dir, "index.html"), render_html(summary, order, output_dir))
    return order


def _write_csv(path, rows):
    fields = ["rank", "file_name", *COUNT_COLUMNS, "errors", "annotation_file", "picture"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for rank, row in enumerate(rows, start=1):
        writer.writerow({"rank": rank, **row})
    write_text(path, buf.getvalue())


def _href(path, output_dir):
    """A link that works from the page on disk: relative for local files, URLs unchanged."""
    if "://" in path:
        return path
    if not os.path.isabs(path):
        return None  # relative to a folder we do not know (older COCO files): text only
    return os.path.relpath(path, os.path.abspath(output_dir)).replace(os.sep, "/")


def _hex(rgb):
    return "#" + "".join(f"{int(round(255 * c)):02x}" for c in rgb)


def render_html(summary, rows, output_dir):
    e = html.escape
    legend = " ".join(
        f'<span class="chip" style="background:{_hex(STATUS_COLORS[k])}">{label}</span>'
        for k, label in (("tp", "true positive"), ("fp", "false positive / missed"), ("confusion", "class confusion"),
                         ("poor_mask", "poor mask"), ("ignored", "crowd / ignored"))
    )
    totals = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in summary["totals"].items())
    body = []
    for rank, r in enumerate(rows, start=1):
        thumb = (
            f'<a href="{e(r["picture"])}"><img src="{e(r["thumbnail"])}" loading="lazy" alt="{e(r["file_name"])}"></a>'
            if r.get("thumbnail") else "(no picture)"
        )
        source = r.get("annotation_file")
        if source:
            href = _href(source, output_dir)
            source_html = f'<a href="{e(href)}">{e(source)}</a>' if href else e(source)
        else:
            source_html = "(not recorded)"
        cells = "".join(f'<td class="n {k}{" bad" if r[k] and k != "tp" else ""}">{r[k]}</td>' for k in COUNT_COLUMNS)
        body.append(
            f'<tr class="image-row" data-errors="{r["errors"]}"><td class="n">{rank}</td><td>{thumb}</td>'
            f'<td class="name">{e(r["file_name"])}<div class="source">{source_html}</div></td>{cells}'
            f'<td class="n errors">{r["errors"]}</td></tr>'
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>segkit error review</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 8px; vertical-align: top; }}
th {{ position: sticky; top: 0; background: #f4f4f4; text-align: left; }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
td.bad {{ color: #c00; font-weight: bold; }}
td img {{ max-width: {THUMB_WIDTH}px; }}
.source {{ font-size: 0.85em; color: #555; word-break: break-all; max-width: 28em; }}
.chip {{ color: white; padding: 1px 6px; border-radius: 3px; font-size: 0.85em; }}
</style></head><body>
<h1>Error review</h1>
<p id="summary">{summary["num_images"]} image(s), worst first. {e(totals)}.<br>
Matching: {e(summary["iou_type"])} IoU &ge; {summary["iou"]:g}, greedy by score; {e(summary["thresholds"])}.<br>
Ground truth <code>{e(summary["ground_truth"])}</code>, predictions <code>{e(summary["predictions"])}</code>.</p>
<p>Each picture: ground truth (left) | prediction (right). {legend}
Fix a label in the annotation file named under the image, convert again and retrain.</p>
<table id="review"><thead><tr><th>#</th><th>ground truth | prediction</th><th>image / annotation file</th>
<th>TP</th><th>FP</th><th>missed</th><th>confused</th><th>poor mask</th><th>errors</th></tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
</body></html>
"""


def _find_eval_inputs(eval_dir, dataset=None):
    """(gt json, predictions json, metrics json or None) for an eval folder of train_net.py:
    the dataset named by its metrics file, the data folder named by the run's config.yaml."""
    predictions = os.path.join(eval_dir, "coco_instances_results.json")
    if not os.path.isfile(predictions):
        raise SystemExit(f"{eval_dir}: no coco_instances_results.json (run train_net.py with an evaluation first).")
    metrics_files = sorted(glob.glob(os.path.join(eval_dir, "metrics_*.json")))
    if dataset:
        metrics_files = [m for m in metrics_files if os.path.basename(m) == f"metrics_{dataset}.json"]
    if not metrics_files:
        raise SystemExit(f"{eval_dir}: no metrics_{dataset or '<dataset>'}.json; pass --gt and --predictions.")
    # the most recent evaluation wrote coco_instances_results.json
    metrics = max(metrics_files, key=os.path.getmtime)
    with open(metrics, encoding="utf-8") as f:
        name = json.load(f).get("dataset", "")
    config = os.path.join(os.path.dirname(os.path.abspath(eval_dir)), CONFIG_YAML)
    data_dir = "data"
    if os.path.isfile(config):
        from detectron2.config import CfgNode

        with open(config, encoding="utf-8") as f:
            cfg = CfgNode.load_cfg(f)
        data_dir = cfg.get("DATASETS", {}).get("DATA_DIR", data_dir)
    split = name.rsplit("_", 1)[-1]
    gt = os.path.join(data_dir, f"{split}.json")
    if not os.path.isfile(gt):
        raise SystemExit(f"{gt}: not found (dataset {name!r} of {metrics}); pass --gt.")
    return gt, predictions, metrics


def _thresholds_from_metrics(metrics_json, category_names):
    """{category id: best-F1 threshold, None: all-classes one} from a metrics JSON, or None."""
    try:
        with open(metrics_json, encoding="utf-8") as f:
            t = json.load(f).get("thresholds") or {}
    except (OSError, ValueError):
        return None, ""
    if t.get("score_threshold") is None:
        return None, ""
    ids = {n: c for c, n in category_names.items()}
    out = {None: t["score_threshold"]}
    for name, v in (t.get("per_class") or {}).items():
        if name in ids and v.get("threshold") is not None:
            out[ids[name]] = v["threshold"]
    note = f"each class's best-F1 threshold from {os.path.basename(metrics_json)}: " + ", ".join(
        f"{n} {v['threshold']:.2f}" for n, v in t["per_class"].items() if v.get("threshold") is not None
    )
    return out, note


def get_parser():
    p = argparse.ArgumentParser(prog="python -m segkit.loop.review", description=__doc__.split("\n\n")[0])
    p.add_argument("eval_dir", nargs="?",
                   help="a run's eval/ folder, or a run folder or name (finds the rest itself; default: the "
                        "latest run's, unless --gt and --predictions are given)")
    p.add_argument("--gt", help="ground-truth COCO file (default: the evaluated split of the run's DATA_DIR)")
    p.add_argument("--predictions", help="COCO results JSON (default: EVAL_DIR/coco_instances_results.json)")
    p.add_argument("--image-root", help="folder of the images (default: images/ beside the COCO file)")
    p.add_argument("--dataset", help="with EVAL_DIR: which metrics_<dataset>.json (default: the newest)")
    p.add_argument("--score-threshold", type=float,
                   help="one score threshold for every class (default: the evaluation's best-F1 ones)")
    p.add_argument("--iou", type=float, default=0.5, help="IoU of a match (default 0.5)")
    p.add_argument("-o", "--output", help="output folder (default: review/ beside EVAL_DIR)")
    p.add_argument("--max-images", type=int, help="draw only the N worst images (all are counted)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    metrics = None
    if args.eval_dir or not (args.gt and args.predictions):
        try:  # an eval/ folder, a run folder or name, or the latest run
            run, _ = resolve_run(args.eval_dir)
        except NoModelError as e:
            get_parser().error(f"{e} Or give --gt and --predictions.")
        args.eval_dir = os.path.join(run, EVAL_DIR) if os.path.isdir(os.path.join(run, EVAL_DIR)) else run
        print(f"Reviewing {args.eval_dir}.", file=sys.stderr)
        gt, predictions, metrics = _find_eval_inputs(args.eval_dir, args.dataset)
        gt, predictions = args.gt or gt, args.predictions or predictions
        output = args.output or os.path.join(os.path.dirname(os.path.abspath(args.eval_dir)), "review")
    else:
        gt, predictions, output = args.gt, args.predictions, args.output or "review"
    for path in (gt, predictions):
        if not os.path.isfile(path):
            raise SystemExit(f"{path}: file not found.")
    thresholds, note = None, ""
    if args.score_threshold is not None:
        thresholds, note = args.score_threshold, f"score threshold {args.score_threshold:g} for every class, as asked"
    elif metrics:
        with open(gt, encoding="utf-8") as f:
            names = {c["id"]: c["name"] for c in json.load(f)["categories"]}
        thresholds, note = _thresholds_from_metrics(metrics, names)
    rows = build_review(gt, predictions, output, args.image_root, score_thresholds=thresholds, threshold_note=note,
                        iou=args.iou, max_images=args.max_images, progress=not args.quiet)
    worst = rows[0] if rows else None
    print(f"Error review of {len(rows)} image(s) ({note or 'best-F1 thresholds'}): "
          f"{os.path.join(os.path.abspath(output), 'index.html')}")
    if worst and worst["errors"]:
        print(f"worst: {worst['file_name']} ({worst['errors']} error(s)); annotation file: {worst['annotation_file']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
