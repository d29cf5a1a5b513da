"""detectron2's SemSegEvaluator plus per-class Dice, a (class, Dice, IoU) table, a JSON report and a
confusion-matrix PNG.

Results keep detectron2's ``{"sem_seg": {"mIoU", "fwIoU", "mACC", "pACC", "IoU-<cls>", ...}}``
(percentages) and add ``"mDice"`` and ``"Dice-<cls>"``. Dice comes from the same confusion matrix
as IoU, so per class ``Dice = 2 IoU / (1 + IoU)``; classes absent from the ground truth get NaN
for both and are left out of the means, as detectron2 does for IoU. With ``output_dir`` set, the
main process writes ``sem_seg_metrics.json`` and ``confusion_matrix.png`` (rows: ground truth,
columns: prediction, each row normalised to 1; pixels labelled ignore are not counted).
"""

import logging
import math
import os

import numpy as np
from tabulate import tabulate

from detectron2.evaluation import SemSegEvaluator
from detectron2.utils.comm import is_main_process

from segkit.data.atomic import atomic_path, write_json

__all__ = ["SemSegDiceEvaluator", "dice_iou_from_confusion", "plot_confusion_matrix"]

logger = logging.getLogger(__name__)


def dice_iou_from_confusion(conf):
    """Per-class (dice, iou, gt_pixels, pred_pixels) from a K x K matrix ``conf[pred, gt]``.

    Dice and IoU are NaN for a class with no ground-truth pixels (detectron2's convention).
    """
    conf = np.asarray(conf, dtype=np.float64)
    tp = conf.diagonal()
    gt = conf.sum(axis=0)
    pred = conf.sum(axis=1)
    valid = gt > 0
    dice = np.full(len(tp), np.nan)
    iou = np.full(len(tp), np.nan)
    dice[valid] = 2 * tp[valid] / (gt[valid] + pred[valid])
    iou[valid] = tp[valid] / (gt[valid] + pred[valid] - tp[valid])
    return dice, iou, gt.astype(np.int64), pred.astype(np.int64)


def plot_confusion_matrix(gt_by_pred, class_names, path, title="Confusion matrix"):
    """Row-normalised confusion matrix (rows ground truth, columns prediction) as a PNG."""
    # An Agg canvas of its own: no display needed, and pyplot's global backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(gt_by_pred, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k = len(class_names)
    size = min(max(4.0, 0.6 * k + 2.5), 20.0)
    fig = Figure(figsize=(size, size * 0.9), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the ground-truth class")
    ax.set_xticks(range(k), labels=class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if rows[i, 0] > 0:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _num(x):
    """JSON-safe float: NaN -> None."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


class SemSegDiceEvaluator(SemSegEvaluator):
    """SemSegEvaluator (same constructor) that also reports per-class Dice; see the module docstring."""

    def evaluate(self):
        results = super().evaluate()  # gathers the confusion matrices; None off the main process
        if results is None:
            return None
        res = results["sem_seg"]
        k = self._num_classes
        conf = self._conf_matrix[:k, :k]  # [pred, gt]; the last row/column is the ignore label
        dice, iou, gt_pixels, pred_pixels = dice_iou_from_confusion(conf)
        valid = ~np.isnan(dice)
        res["mDice"] = 100 * float(dice[valid].mean()) if valid.any() else float("nan")
        for i, name in enumerate(self._class_names):
            res[f"Dice-{name}"] = 100 * float(dice[i])

        table = [(name, _fmt(dice[i]), _fmt(iou[i]), int(gt_pixels[i]))
                 for i, name in enumerate(self._class_names)]
        table.append(("mean", _fmt(res["mDice"] / 100), _fmt(res["mIoU"] / 100), int(gt_pixels.sum())))
        text = tabulate(table, headers=["class", "Dice", "IoU", "GT pixels"], tablefmt="pipe",
                        stralign="left", numalign="right")
        text = f"Per-class semantic segmentation results on {self._dataset_name}:\n{text}"
        if logger.isEnabledFor(logging.INFO) and logger.hasHandlers():
            logger.info(text)
        else:  # nobody set up segkit's logging (a plain script): the table is still shown
            print(text, flush=True)

        if self._output_dir and is_main_process():
            os.makedirs(self._output_dir, exist_ok=True)
            write_json(os.path.join(self._output_dir, "sem_seg_metrics.json"), {
                "dataset": self._dataset_name,
                "mIoU": _num(res["mIoU"] / 100),
                "mDice": _num(res["mDice"] / 100),
                "fwIoU": _num(res["fwIoU"] / 100),
                "mACC": _num(res["mACC"] / 100),
                "pACC": _num(res["pACC"] / 100),
                "classes": [
                    {"name": name, "dice": _num(dice[i]), "iou": _num(iou[i]),
                     "gt_pixels": int(gt_pixels[i]), "pred_pixels": int(pred_pixels[i])}
                    for i, name in enumerate(self._class_names)
                ],
                "ignored_pixels": int(self._conf_matrix[:, k].sum()),
                "confusion_matrix": {"rows": "ground truth", "columns": "prediction",
                                     "counts": conf.T.tolist()},
            })
            plot_confusion_matrix(conf.T, list(self._class_names),
                                  os.path.join(self._output_dir, "confusion_matrix.png"),
                                  title=f"{self._dataset_name}: mIoU {res['mIoU']:.1f}, mDice {res['mDice']:.1f}")
        return results


def _fmt(x):
    return "nan" if x is None or math.isnan(x) else f"{x:.4f}"
