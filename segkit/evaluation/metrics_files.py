"""Reading back the evaluation files our evaluators write: ``metrics_<dataset>.json``
(:class:`~segkit.evaluation.coco.SegkitCOCOEvaluator`) and ``sem_seg_metrics.json``
(:class:`~segkit.evaluation.semantic.SemSegDiceEvaluator`), for pages that show them (the app)."""

import glob
import json
import math
import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

COCO_METRICS_PATTERN = "metrics_*.json"
SEMSEG_METRICS_FILE = "sem_seg_metrics.json"
COCO_SUMMARY_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@dataclass
class MetricsSummary:
    """One evaluation file as tables of numbers (percentages; None where undefined).

    ``rows``: (metric, one value per ``columns`` entry); ``class_rows``: (class, one value per
    ``class_columns`` entry)."""

    dataset: str
    kind: str  # "coco" or "sem_seg"
    columns: List[str]
    rows: List[Tuple[str, list]]
    class_columns: List[str] = field(default_factory=list)
    class_rows: List[Tuple[str, list]] = field(default_factory=list)


def _number(v, scale=1.0):
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return v * scale if ok else None


def find_metrics_files(dirs):
    """Our evaluation files in ``dirs`` (and one level below, e.g. ``eval/inference``)."""
    files = []
    for d in dict.fromkeys(dirs):
        for pattern in (COCO_METRICS_PATTERN, SEMSEG_METRICS_FILE):
            files += sorted(glob.glob(os.path.join(d, pattern)) + glob.glob(os.path.join(d, "*", pattern)))
    return list(dict.fromkeys(files))


def _coco_summary(data, name):
    tasks = [t for t in ("bbox", "segm") if isinstance(data.get(t), dict)]
    if not tasks:
        return None
    rows = [(m, [_number(data[t].get(m)) for t in tasks]) for m in COCO_SUMMARY_METRICS
            if any(m in data[t] for t in tasks)]
    per_class = data.get("segm", {}).get("per_class") or data.get("bbox", {}).get("per_class")
    # at the score threshold that maximises each class's F1 (SegkitCOCOEvaluator's "thresholds")
    best = (data.get("thresholds") or {}).get("per_class") or {}
    class_rows = []
    if isinstance(per_class, dict):
        for c, v in per_class.items():
            if not isinstance(v, dict):
                continue
            b = best.get(c) if isinstance(best.get(c), dict) else {}
            class_rows.append((c, [_number(v.get("AP")), _number(v.get("AP50")), _number(b.get("threshold"), 100)]
                               + [_number(b.get(k), 100) for k in ("precision", "recall", "f1")]))
    return MetricsSummary(name, "coco", tasks, rows, ["AP", "AP50", "best thr %", "P", "R", "F1"], class_rows)


def _semseg_summary(data, name):
    rows = [(label, [_number(data.get(key), 100)])
            for key, label in (("mIoU", "mIoU"), ("mDice", "mDice"), ("pACC", "pixel acc."))]
    classes = data.get("classes") if isinstance(data.get("classes"), list) else []
    class_rows = [(str(c.get("name")), [_number(c.get("dice"), 100), _number(c.get("iou"), 100)])
                  for c in classes if isinstance(c, dict)]
    return MetricsSummary(name, "sem_seg", ["value"], rows, ["Dice", "IoU"], class_rows)


def read_metrics_file(path) -> Optional[MetricsSummary]:
    """The summary of one of our evaluation files; None when it cannot be read or is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    name = str(data.get("dataset") or os.path.splitext(os.path.basename(path))[0])
    if os.path.basename(path) == SEMSEG_METRICS_FILE:
        return _semseg_summary(data, name)
    return _coco_summary(data, name)
