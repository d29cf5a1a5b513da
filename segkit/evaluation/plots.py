"""Precision-recall curve PNGs from COCOeval's accumulated ``eval["precision"]`` array.

That array has shape (iou thresholds T, recall thresholds R, classes K, area ranges A, max dets M)
and holds -1 where a class has no ground truth. The curves use area "all" and the largest maxDets,
the setting of the headline AP, so the area under each curve is the AP in the metrics JSON.
"""

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from segkit.data.atomic import atomic_path
from segkit.data.file_names import safe_filename, unique_name

__all__ = ["pr_curves", "write_confusion_matrix_plot", "write_f1_plot", "write_pr_plots"]


def pr_curves(precision, iou_thrs, class_index):
    """(precision at IoU 0.5, precision averaged over IoU 0.5:0.95), each over the recall
    thresholds, for one class; None when the class has no ground truth (all -1)."""
    p = precision[:, :, class_index, 0, -1]  # T x R
    if not (p > -1).any():
        return None
    i50 = int(np.argmin(np.abs(np.asarray(iou_thrs) - 0.5)))
    return np.clip(p[i50], 0, None), np.clip(p, 0, None).mean(axis=0)


def _save(fig, path):
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _style(ax, title):
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)


def write_pr_plots(precision, iou_thrs, rec_thrs, class_names, task, output_dir):
    """Write ``pr_<task>_<class>.png`` per class with ground truth and the combined ``pr_<task>.png``.

    Returns the written paths. Classes without ground truth get no per-class file and show in the
    combined plot's legend as "n/a".
    """
    rec = np.asarray(rec_thrs)
    paths = []
    curves = {}
    used = set()
    for k, name in enumerate(class_names):
        c = pr_curves(precision, iou_thrs, k)
        curves[name] = c
        if c is None:
            continue
        p50, pmean = c
        fig = Figure(figsize=(5, 4.2))
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(rec, p50, label=f"IoU 0.50 (AP50 {100 * p50.mean():.1f})", lw=2)
        ax.plot(rec, pmean, label=f"IoU 0.50:0.95 mean (AP {100 * pmean.mean():.1f})", lw=2)
        _style(ax, f"{task}: {name}")
        ax.legend(loc="lower left", fontsize=8)
        fig.tight_layout()
        # two names that sanitise alike must not overwrite each other
        path = os.path.join(output_dir, unique_name(f"pr_{task}_{safe_filename(name, 'class')}", used, ".png"))
        _save(fig, path)
        paths.append(path)

    fig = Figure(figsize=(10, 4.4))
    for i, (title, which) in enumerate((("IoU 0.50", 0), ("IoU 0.50:0.95 mean", 1))):
        ax = fig.add_subplot(1, 2, i + 1)
        for name, c in curves.items():
            if c is None:
                ax.plot([], [], ls="none", label=f"{name} (n/a: no ground truth)")
            else:
                ax.plot(rec, c[which], label=f"{name} ({100 * c[which].mean():.1f})", lw=1.5)
        _style(ax, f"{task}, {title}")
        ax.legend(loc="lower left", fontsize=7, ncol=1 + len(curves) // 12)
    fig.tight_layout()
    path = os.path.join(output_dir, f"pr_{task}.png")
    _save(fig, path)
    paths.append(path)
    return paths


def write_confusion_matrix_plot(matrix, labels, path, title="instance confusion matrix"):
    """The (K+1) x (K+1) counts (rows ground truth, columns prediction, last = background) as a
    heat map, each row also shaded by its share so that rare classes stay readable."""
    m = np.asarray(matrix, dtype=float)
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    n = len(labels)
    size = 2.5 + 0.55 * n
    fig = Figure(figsize=(size + 1.2, size))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for r in range(n):
        for c in range(n):
            if m[r, c]:
                ax.text(c, r, f"{int(m[r, c])}", ha="center", va="center", fontsize=8,
                        color="white" if share[r, c] > 0.5 else "black")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    fig.tight_layout()
    _save(fig, path)
    return path


def write_f1_plot(thresholds, curves, best, path, title="F1 vs score threshold"):
    """F1 against the score threshold per class (``curves``: name -> (precision, recall, f1)),
    each class's best threshold marked (``best``: name -> {"threshold", "f1"})."""
    fig = Figure(figsize=(6.5, 4.4))
    ax = fig.add_subplot(1, 1, 1)
    for name, (_, _, f1) in curves.items():
        b = best.get(name) or {}
        label = name if b.get("threshold") is None else f"{name} (F1 {b['f1']:.2f} at {b['threshold']:.2f})"
        (line,) = ax.plot(thresholds, f1, lw=1.5, label=label)
        if b.get("threshold") is not None:
            ax.plot([b["threshold"]], [b["f1"]], "o", color=line.get_color())
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("score threshold")
    ax.set_ylabel("F1")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(loc="lower left", fontsize=7, ncol=1 + len(curves) // 12)
    fig.tight_layout()
    _save(fig, path)
    return path
