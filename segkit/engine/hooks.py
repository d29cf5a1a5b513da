"""Training hooks detectron2 does not ship: validation loss, live loss curves, a per-iteration
progress bar with ETA, early stopping, and a checkpoint on Ctrl-C."""

import json
import logging
import math
import os

import torch
from detectron2.data import DatasetMapper, build_detection_test_loader, get_detection_dataset_dicts
from detectron2.data import transforms as T
from detectron2.engine import HookBase
from detectron2.utils import comm

from segkit.data.atomic import atomic_path
from segkit.engine.distributed import broadcast_from_main

logger = logging.getLogger(__name__)


class StopTraining(BaseException):
    """Raised by a hook to end training early. A BaseException so that detectron2's
    ``TrainerBase.train`` does not log it as a crash; ``Trainer.train`` catches it."""


class ValidationLoss(HookBase):
    """Loss of the model (in training mode, so every loss term exists) on the val split.

    Uses the test-time resize only, no random augmentation, and runs under ``fork_rng`` so the
    RPN/ROI sampling it does leaves the training RNG stream untouched (resume stays bit-identical).
    """

    def __init__(self, cfg, period, dataset_names, max_images=50):
        self._period = period
        dicts = get_detection_dataset_dicts(dataset_names, filter_empty=False)
        self._dicts = dicts[:max_images] if max_images > 0 else dicts
        mapper = DatasetMapper(
            cfg,
            is_train=True,
            augmentations=[T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)],
        )
        self._loader = build_detection_test_loader(self._dicts, mapper=mapper, num_workers=0)

    def _compute(self):
        model = self.trainer.model
        sums, count = {}, 0
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            was_training = model.training
            model.train()
            for inputs in self._loader:
                losses = model(inputs)
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                count += len(inputs)
            model.train(was_training)
        gathered = comm.all_gather((sums, count))
        total = sum(c for _, c in gathered)
        merged = {}
        for s, _ in gathered:
            for k, v in s.items():
                merged[k] = merged.get(k, 0.0) + v
        return {k: v / max(total, 1) for k, v in merged.items()}

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if self._period > 0 and (next_iter % self._period == 0 or next_iter == self.trainer.max_iter):
            losses = self._compute()
            if comm.is_main_process():
                scalars = {"val_" + k: v for k, v in losses.items()}
                scalars["val_total_loss"] = sum(losses.values())
                self.trainer.storage.put_scalars(**scalars, smoothing_hint=False)
                logger.info("Validation loss: " + ", ".join(f"{k}={v:.4f}" for k, v in scalars.items()))


def read_metrics(path):
    """detectron2's metrics.json (one JSON object per line); after a resume an iteration can
    appear twice, the later line wins."""
    rows = {}
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written right now
            if "iteration" in row:
                rows.setdefault(row["iteration"], {}).update(row)
    return [rows[i] for i in sorted(rows)]


def plot_loss_curves(metrics_path, out_path):
    """Total loss, each loss term and the validation losses against iteration, as a PNG."""
    # A Figure with its own Agg canvas, as evaluation/plots.py draws: no pyplot, so the program's
    # global matplotlib backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_metrics(metrics_path)
    train_keys = sorted({k for r in rows for k in r if k.startswith("loss_")})
    val_keys = sorted({k for r in rows for k in r if k.startswith("val_")})
    if not rows or not (train_keys or "total_loss" in rows[0]):
        return False
    fig = Figure(figsize=(12, 4.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, keys, title in (
        (axes[0], ["total_loss", "val_total_loss"], "total loss"),
        (axes[1], train_keys + [k for k in val_keys if k != "val_total_loss"], "loss terms"),
    ):
        for k in keys:
            pts = [(r["iteration"], r[k]) for r in rows if k in r and math.isfinite(r[k])]
            if pts:
                x, y = zip(*pts)
                ax.plot(x, y, marker="o" if k.startswith("val_") else None, ms=3,
                        ls="--" if k.startswith("val_") else "-", label=k)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return True


class LossCurvePlot(HookBase):
    """Redraws OUTPUT_DIR/loss_curves.png from metrics.json every ``period`` iterations and at the end.
    Register it after the PeriodicWriter so the JSON already has the latest values."""

    def __init__(self, output_dir, period=20):
        self._metrics = os.path.join(output_dir, "metrics.json")
        self._out = os.path.join(output_dir, "loss_curves.png")
        self._period = period

    def after_step(self):
        if (self.trainer.iter + 1) % self._period == 0:
            plot_loss_curves(self._metrics, self._out)

    def after_train(self):
        plot_loss_curves(self._metrics, self._out)


class ProgressBar(HookBase):
    """tqdm bar that moves every iteration: iteration, total loss, lr and ETA.

    detectron2's console writer prints every 20 iterations, which on a CPU can be minutes apart."""

    def __init__(self, max_iter):
        self._max_iter = max_iter
        self._bar = None

    def before_train(self):
        from tqdm import tqdm

        self._bar = tqdm(
            total=self._max_iter,
            initial=self.trainer.start_iter,
            desc="train",
            unit="it",
            dynamic_ncols=True,
            mininterval=0.5 if os.isatty(2) else 15.0,
        )

    def after_step(self):
        storage = self.trainer.storage
        postfix = {}
        for key in ("total_loss", "lr"):
            if key in storage.histories():
                value = storage.history(key).latest()
                postfix[key] = f"{value:.3g}" if key == "lr" else f"{value:.3f}"
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(1)

    def after_train(self):
        if self._bar is not None:
            self._bar.close()


class EarlyStopping(HookBase):
    """Stops when ``metric`` has not improved for ``patience`` evaluations. Register after EvalHook,
    with its period.

    Every rank runs this at each evaluation; only the main process has the metric, so it decides
    and the decision is broadcast, and all ranks stop at the same iteration."""

    def __init__(self, metric, patience, eval_period, mode="max"):
        self._metric = metric
        self._patience = patience
        self._period = eval_period
        self._sign = 1 if mode == "max" else -1
        self._best = -math.inf
        self._bad = 0

    def _main_process_says_stop(self):
        latest = self.trainer.storage.latest().get(self._metric)
        if latest is None:
            return False
        value, itr = latest
        if itr != self.trainer.iter or not math.isfinite(value):
            return False  # this evaluation did not produce the metric
        if self._sign * value > self._best:
            self._best, self._bad = self._sign * value, 0
            return False
        self._bad += 1
        if self._bad < self._patience:
            return False
        logger.info(f"Early stop at iteration {itr}: {self._metric} has not improved for "
                    f"{self._patience} evaluations (best {self._sign * self._best:.4f}).")
        return True

    def after_step(self):
        next_iter = self.trainer.iter + 1
        # EvalHook's own condition: it evaluates at these iterations (the last one in after_train).
        if self._period <= 0 or next_iter % self._period or next_iter == self.trainer.max_iter:
            return
        stop = self._main_process_says_stop() if comm.is_main_process() else None
        if broadcast_from_main(stop):
            raise StopTraining()

    def state_dict(self):
        return {"best": self._best, "bad": self._bad}

    def load_state_dict(self, state):
        self._best, self._bad = state["best"], state["bad"]
