"""COCO evaluation for Mask R-CNN: detectron2's COCOEvaluator plus what our users need from it.

On top of COCOEvaluator (bbox and segm AP, AP50, AP75, APs/m/l, per-class AP, distributed
gathering) the evaluator built here, on the main process only:

- writes ``<output_dir>/metrics_<dataset>.json``: the summary metrics and per-class AP / AP50 of
  each task, with ``null`` where a number cannot be computed (no predictions at all, a class
  without ground truth in the split, no small objects, ...);
- writes precision-recall curves (cfg.TEST.PR_CURVES): ``pr_<task>_<class>.png`` per class with
  ground truth and ``pr_<task>.png`` with every class;
- matches predictions to ground truth (mask IoU >= 0.5, or box IoU without masks; greedy by
  score, :mod:`segkit.evaluation.matching`) and writes, per class, precision / recall / F1 at the
  score threshold that maximises F1 (``thresholds`` in the metrics JSON, ``f1_<dataset>.png``)
  and the instance confusion matrix at those thresholds (``confusion_matrix_<dataset>.png/json``,
  background row and column);
- prints an aligned table (metric / class, bbox AP, segm AP, best threshold, P, R, F1), "n/a"
  where there is no number.

What it returns is COCOEvaluator's ``{"bbox": {...}, "segm": {...}}`` of floats (NaN where
undefined), which detectron2's EvalHook and BestCheckpointer consume unchanged, plus
``"score_thresholds"`` ({class: best-F1 threshold}) and ``"score_threshold"`` (the best single
threshold for all classes) when there is one: the trainer takes them out and stores them in the
checkpoints it writes (predict.py and the app start from them).
"""

import logging
import math
import os
import sys
from collections import OrderedDict

import numpy as np
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from tabulate import tabulate

from segkit.data.atomic import write_json
from segkit.data.file_names import safe_filename
from segkit.data.run_layout import KEY_SCORE_THRESHOLD, KEY_SCORE_THRESHOLDS
from segkit.evaluation.analysis import CURVE_THRESHOLDS, analyse_detections, group_by_image
from segkit.evaluation.plots import write_confusion_matrix_plot, write_f1_plot, write_pr_plots

__all__ = ["SegkitCOCOEvaluator", "build_coco_evaluator", "format_results_table", "print_results_table"]

logger = logging.getLogger(__name__)

SUMMARY_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
TASKS = ("bbox", "segm")


def _number(value):
    """A finite float, or None (JSON null / "n/a") for NaN, inf, -1 sentinels and missing values."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class SegkitCOCOEvaluator(COCOEvaluator):
    """COCOEvaluator that also writes a metrics JSON and PR-curve PNGs and prints a table.

    Keeps the accumulated COCOeval precision array of each task (``_derive_coco_results`` receives
    the COCOeval object and detectron2 drops it afterwards).
    """

    def __init__(self, dataset_name, tasks, output_dir, *, distributed=True, max_dets_per_image=None, pr_curves=True):
        super().__init__(
            dataset_name,
            tasks=tuple(tasks),
            distributed=distributed,
            output_dir=output_dir,
            max_dets_per_image=max_dets_per_image,
        )
        self._dataset_name = dataset_name
        self._pr_curves = pr_curves
        self._accumulated = {}
        self._coco_results = None
        self._image_ids = None
        self._ensure_category_mapping()

    def _ensure_category_mapping(self):
        # COCOEvaluator maps predicted class indices back to COCO category ids through
        # thing_dataset_id_to_contiguous_id, which load_coco_json sets only once the dataset has
        # been loaded. Evaluating before that (a custom loader) would silently score class i as
        # category id i. Set it the way load_coco_json does: sorted category ids -> 0..K-1.
        if self._metadata.get("thing_dataset_id_to_contiguous_id") is None:
            cat_ids = sorted(self._coco_api.getCatIds())
            self._metadata.thing_dataset_id_to_contiguous_id = {c: i for i, c in enumerate(cat_ids)}

    def _class_names(self):
        names = self._metadata.get("thing_classes")
        if names:
            return list(names)
        return [c["name"] for c in sorted(self._coco_api.loadCats(self._coco_api.getCatIds()), key=lambda c: c["id"])]

    def reset(self):
        super().reset()
        self._accumulated = {}
        self._coco_results = None
        self._image_ids = None

    def _eval_predictions(self, predictions, img_ids=None):
        super()._eval_predictions(predictions, img_ids=img_ids)
        # The gathered predictions of every process, their category ids mapped back to the
        # dataset's by COCOEvaluator: what the matching needs, kept for evaluate().
        self._coco_results = [r for p in predictions for r in p.get("instances", [])]
        self._image_ids = list(dict.fromkeys(p["image_id"] for p in predictions))

    def analyse(self):
        """Best-F1 thresholds, confusion matrix and per-image matches of the last evaluation
        (None before one, or without predictions)."""
        if self._coco_results is None:
            return None
        category_ids = sorted(self._metadata.thing_dataset_id_to_contiguous_id, key=self._metadata.thing_dataset_id_to_contiguous_id.get)
        data = self._coco_api.dataset
        grouped = group_by_image(data.get("images", []), data.get("annotations", []), self._coco_results, self._image_ids)
        iou_type = "segm" if "segm" in self._tasks else "bbox"
        return analyse_detections(grouped, category_ids, self._class_names(), iou_type=iou_type)

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        results = super()._derive_coco_results(coco_eval, iou_type, class_names=class_names)
        if coco_eval is None:
            return results
        params = coco_eval.params
        precision = np.array(coco_eval.eval["precision"])
        self._accumulated[iou_type] = {
            "precision": precision,
            "iou_thrs": np.array(params.iouThrs),
            "rec_thrs": np.array(params.recThrs),
        }
        names = class_names or self._class_names()
        if len(names) == 1:  # detectron2 leaves per-class AP out for one class; keep the keys uniform
            results["AP-" + names[0]] = results["AP"]
        return results

    def evaluate(self, img_ids=None):
        results = super().evaluate(img_ids)
        # Non-main processes return {} from COCOEvaluator (distributed) or evaluate a shard of their
        # own (not distributed): either way only the main process writes and prints.
        if not comm.is_main_process() or not self._do_evaluation:
            return results
        report = self.report(results)
        analysis = self.analyse()
        if analysis is not None:
            report["thresholds"] = analysis.thresholds_json()
            report["confusion_matrix"] = analysis.confusion_json()
            if analysis.score_threshold is not None:
                results[KEY_SCORE_THRESHOLDS] = dict(analysis.score_thresholds())
                results[KEY_SCORE_THRESHOLD] = analysis.score_threshold
        if self._output_dir:
            name = safe_filename(self._dataset_name)
            if analysis is not None:
                self._write_analysis(analysis, name)
            path = os.path.join(self._output_dir, f"metrics_{name}.json")
            write_json(path, report)
            logger.info("Wrote %s", path)
            if self._pr_curves:
                for task in self._tasks:
                    acc = self._accumulated.get(task)
                    if acc is None:
                        logger.info("No %s precision-recall curves: there were no predictions.", task)
                        continue
                    write_pr_plots(
                        acc["precision"], acc["iou_thrs"], acc["rec_thrs"], self._class_names(), task, self._output_dir
                    )
        table = {task: report[task] for task in self._tasks}
        if "thresholds" in report:
            table["thresholds"] = report["thresholds"]
        print_results_table(table, title=f"COCO evaluation on {self._dataset_name}")
        return results

    def _write_analysis(self, analysis, name):
        path = os.path.join(self._output_dir, f"confusion_matrix_{name}.json")
        write_json(path, analysis.confusion_json())
        write_confusion_matrix_plot(
            analysis.confusion,
            analysis.confusion_json()["labels"],
            os.path.join(self._output_dir, f"confusion_matrix_{name}.png"),
            title=f"{self._dataset_name}: instances, {analysis.iou_type} IoU >= {analysis.iou:g}, best-F1 thresholds",
        )
        write_f1_plot(
            CURVE_THRESHOLDS,
            analysis.curves,
            analysis.per_class,
            os.path.join(self._output_dir, f"f1_{name}.png"),
            title=f"{self._dataset_name}: F1 vs score threshold ({analysis.iou_type} IoU >= {analysis.iou:g})",
        )
        logger.info("Wrote %s and the confusion matrix / F1 plots", path)

    def report(self, results):
        """The JSON-able summary: per task, the summary metrics and per-class AP, AP50 and number
        of ground-truth instances (None where undefined)."""
        names = self._class_names()
        num_gt = self._num_gt_per_class()
        report = OrderedDict(dataset=self._dataset_name, num_images=len(self._coco_api.getImgIds()))
        for task in self._tasks:
            res = results.get(task, {})
            acc = self._accumulated.get(task)
            entry = OrderedDict((m, _number(res.get(m))) for m in SUMMARY_METRICS)
            per_class = OrderedDict()
            for k, name in enumerate(names):
                ap = ap50 = None
                if acc is not None:
                    p = acc["precision"][:, :, k, 0, -1]
                    if (p > -1).any():
                        i50 = int(np.argmin(np.abs(acc["iou_thrs"] - 0.5)))
                        ap = 100 * float(p[p > -1].mean())
                        ap50 = 100 * float(p[i50][p[i50] > -1].mean())
                per_class[name] = OrderedDict(AP=ap, AP50=ap50, num_gt=num_gt.get(k, 0))
            entry["per_class"] = per_class
            report[task] = entry
        return report

    def _num_gt_per_class(self):
        id_map = self._metadata.thing_dataset_id_to_contiguous_id
        counts = {}
        for ann in self._coco_api.dataset.get("annotations", []):
            if not ann.get("iscrowd", 0) and ann["category_id"] in id_map:
                k = id_map[ann["category_id"]]
                counts[k] = counts.get(k, 0) + 1
        return counts


def build_coco_evaluator(cfg, dataset_name, output_dir):
    """COCOEvaluator for bbox (and segm when cfg.MODEL.MASK_ON) on a registered dataset, writing
    ``metrics_<dataset>.json`` and, with cfg.TEST.PR_CURVES, PR-curve PNGs into ``output_dir``.
    maxDets is the detections an image can have: TEST.DETECTIONS_PER_IMAGE, or with TEST.TILE_SIZE
    TEST.TILE_DETECTIONS_PER_IMAGE."""
    tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
    # On tiles TEST.DETECTIONS_PER_IMAGE limits each tile; an image keeps up to
    # TEST.TILE_DETECTIONS_PER_IMAGE, and all of those must count.
    tiled = cfg.TEST.TILE_SIZE > 0
    max_dets = int(cfg.TEST.TILE_DETECTIONS_PER_IMAGE if tiled else cfg.TEST.DETECTIONS_PER_IMAGE)
    return SegkitCOCOEvaluator(
        dataset_name,
        tasks=tasks,
        output_dir=output_dir,
        distributed=True,
        # COCO's limit is 100 detections per image; only a larger one needs detectron2's
        # (slower, official-API) custom-maxDets path.
        max_dets_per_image=max_dets if max_dets > 100 else None,
        pr_curves=bool(cfg.TEST.PR_CURVES),
    )


def _is_task_results(results):
    # Our metrics JSON also carries "dataset" and "num_images" beside the task dicts.
    return any(isinstance(v, dict) and "AP" in v for v in results.values())


def _per_class(task_results):
    """{class: AP} from either detectron2's flat ``AP-<class>`` keys or our report's ``per_class``."""
    if "per_class" in task_results:
        return OrderedDict((name, v.get("AP")) for name, v in task_results["per_class"].items())
    return OrderedDict((k[3:], v) for k, v in task_results.items() if k.startswith("AP-"))


def format_results_table(results):
    """Aligned text tables of COCO results: summary metrics, then per-class AP, one column per task.

    ``results`` is what COCOEvaluator / ``inference_on_dataset`` return (``{"bbox": {...}, "segm":
    {...}}``), our metrics JSON, or ``{dataset: results}`` for several datasets.
    """
    if not results:
        return "No COCO results (no images were evaluated)."
    if not _is_task_results(results):
        blocks = []
        for dataset, sub in results.items():
            if isinstance(sub, dict) and (_is_task_results(sub) or not sub):
                blocks.append(f"{dataset}:\n{format_results_table(sub)}")
        return "\n\n".join(blocks) if blocks else "No COCO results."
    tasks = [t for t in TASKS if isinstance(results.get(t), dict)] + [
        t for t, v in results.items() if t not in TASKS and isinstance(v, dict) and "AP" in v
    ]
    headers = ["metric"] + [f"{t} AP" if t in TASKS else t for t in tasks]
    summary = [[m] + [_number(results[t].get(m)) for t in tasks] for m in SUMMARY_METRICS]
    text = tabulate(summary, headers=headers, floatfmt=".1f", missingval="n/a", numalign="right")
    per_class = {t: _per_class(results[t]) for t in tasks}
    names = list(OrderedDict.fromkeys(n for t in tasks for n in per_class[t]))
    thresholds = results.get("thresholds") if isinstance(results.get("thresholds"), dict) else {}
    best = thresholds.get("per_class") or {}
    if names:
        rows = [[n] + [_number(per_class[t].get(n)) for t in tasks] for n in names]
        headers = ["class"] + headers[1:]
        floatfmt = [".1f"] * len(headers)
        if best:
            # Precision, recall and F1 (%) at the class's F1-maximising score threshold.
            headers += ["best thr", "P", "R", "F1"]
            floatfmt += [".2f", ".1f", ".1f", ".1f"]
            for row, n in zip(rows, names):
                b = best.get(n) or {}
                row += [_number(b.get("threshold"))] + [_percent(b.get(k)) for k in ("precision", "recall", "f1")]
        text += "\n\n" + tabulate(rows, headers=headers, floatfmt=floatfmt, missingval="n/a", numalign="right")
    overall = thresholds.get("all_classes") or {}
    if _number(overall.get("threshold")) is not None:
        text += (
            f"\n\nOne threshold for all classes: score > {overall['threshold']:.2f} gives precision "
            f"{100 * overall['precision']:.1f}, recall {100 * overall['recall']:.1f}, F1 {100 * overall['f1']:.1f} "
            f"({thresholds.get('iou_type', 'segm')} IoU >= {thresholds.get('iou', 0.5):g})."
        )
    return text


def _percent(value):
    value = _number(value)
    return None if value is None else 100 * value


def print_results_table(results, title=None, file=None):
    """Print :func:`format_results_table` (the eval-only path calls this); returns the text."""
    text = format_results_table(results)
    if title:
        text = f"{title}\n{text}"
    print(text, file=file or sys.stdout, flush=True)
    return text


def main(argv=None):
    """``python -m segkit.evaluation.coco OUTPUT_DIR/eval/metrics_<dataset>.json``: the AP table."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("metrics_json")
    path = parser.parse_args(argv).metrics_json
    try:
        with open(path, encoding="utf-8") as f:
            metrics = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"{path}: cannot read the metrics file ({e.__class__.__name__}: {e}).")
    print_results_table(metrics, title=f"COCO evaluation ({os.path.basename(path)})")


if __name__ == "__main__":
    main()
