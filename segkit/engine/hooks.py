"""Training hooks detectron2 does not ship: validation loss, live loss curves, a per-iteration
progress bar with ETA, early stopping, pictures of augmented training batches, a checkpoint on
Ctrl-C and on the signal a cluster job gets before it is stopped; and detectron2's
PeriodicCheckpointer with a resumable last checkpoint."""

import contextlib
import json
import logging
import math
import os
import random
import signal
import time

import numpy as np
import torch
from detectron2.data import DatasetMapper, build_detection_test_loader, get_detection_dataset_dicts
from detectron2.data import transforms as T
from detectron2.engine import HookBase, hooks
from detectron2.utils import comm

from segkit.data.atomic import atomic_path
from segkit.data.run_layout import METRICS_JSON
from segkit.engine.distributed import broadcast_from_main
from segkit.modeling.config import is_semantic
from segkit.modeling.tiling import tile_windows

logger = logging.getLogger(__name__)


class StopTraining(BaseException):
    """Raised by a hook to end training early. A BaseException so that detectron2's
    ``TrainerBase.train`` does not log it as a crash; ``Trainer.train`` catches it."""


# The Slurm wrapper (engine/slurm.py) names the signal that asks training to save and stop (submitit's
# preemption signal) in this variable of the training's environment; without it nothing is installed.
SAVE_SIGNAL_ENV = "SEGKIT_SAVE_SIGNAL"
# Exit status of a training that saved and stopped on that signal, so that the wrapper can tell
# "stopped to be requeued" from "finished" (0) and "failed" (anything else). 75 is EX_TEMPFAIL.
REQUEUE_EXIT_STATUS = 75
_save_requested = False


def save_signal():
    """The signal number in SAVE_SIGNAL_ENV, or None."""
    value = os.environ.get(SAVE_SIGNAL_ENV)
    return int(value) if value else None


def install_save_signal_handler():
    """In a training process started by the Slurm wrapper: the save signal only sets a flag that
    SaveOnSignal reads after the current iteration (stopping mid-iteration could leave weights half
    updated). Every process of the training calls it: the signal's default action kills."""
    sig = save_signal()
    if sig is None:
        return

    def request_save(signum, frame):
        global _save_requested
        _save_requested = True

    signal.signal(sig, request_save)


class StopForRequeue(BaseException):
    """Raised by SaveOnSignal on every rank at the same iteration; ``Trainer.train`` saves the full
    state of that iteration and ends with REQUEUE_EXIT_STATUS."""


class SaveOnSignal(HookBase):
    """After each iteration: stop when rank 0 got the save signal. Rank 0 decides and broadcasts
    (one small broadcast per iteration, only in runs the Slurm wrapper started): under
    ``--cluster local`` only the first node's processes get the signal, and on Slurm the ranks
    get it at slightly different iterations."""

    def after_step(self):
        if broadcast_from_main(_save_requested):
            raise StopForRequeue()


class ValidationLoss(HookBase):
    """Loss of the model (in training mode, so every loss term exists) on the val split, on what
    evaluation shows the model: whole images at the test resize, or with TEST.TILE_SIZE > 0 the
    tiles of tiled evaluation (TEST.TILE_SIZE, TEST.TILE_OVERLAP) at native resolution, the scale
    the model trains at on crops and predicts at. (A whole image shrunk to the test size would be
    a scale it never sees: its loss says nothing about the model that tiled evaluation scores.)

    At most ``max_images`` inputs (TEST.VAL_LOSS_MAX_IMAGES): the first images, or tiles spread
    evenly over the split's tiles, the same ones every time so that the curve compares like with
    like. No random augmentation; runs under ``fork_rng`` so the RPN/ROI sampling it does leaves
    the training RNG stream untouched (resume stays bit-identical). Says in one log line what it
    scores.
    """

    def __init__(self, cfg, period, dataset_names, max_images=50, share=None):
        self._period = period
        dicts = get_detection_dataset_dicts(dataset_names, filter_empty=False)
        tile = int(cfg.TEST.TILE_SIZE) if not is_semantic(cfg) else 0
        if tile > 0:
            tiles = [dict(d, tile_window=w) for d in dicts
                     for w in tile_windows(d["height"], d["width"], tile, cfg.TEST.TILE_OVERLAP)]
            if 0 < max_images < len(tiles):
                tiles = [tiles[i] for i in np.unique(np.linspace(0, len(tiles) - 1, max_images).round().astype(int))]
            self.inputs = tiles
            mapper = _TileMapper(cfg)
            what = (f"{len(tiles)} tiles of {tile} px (TEST.TILE_SIZE) of {len({d['file_name'] for d in tiles})} "
                    f"images at native resolution, as tiled evaluation sees them")
        else:
            self.inputs = dicts[:max_images] if max_images > 0 else dicts
            mapper = DatasetMapper(
                cfg,
                is_train=True,
                augmentations=[T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)],
            )
            what = f"{len(self.inputs)} whole images at the test size (INPUT.MIN_SIZE_TEST {cfg.INPUT.MIN_SIZE_TEST})"
        logger.info("Validation loss on %s: %s.", ", ".join(dataset_names), what)
        self._loader = build_detection_test_loader(self.inputs, mapper=mapper, num_workers=0)
        self._run = self._compute
        if share is not None:  # EvalShare: may skip a periodic run
            share.count_inputs("validation loss", len(self.inputs))
            self._run = share.gate("validation loss", self._compute)

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
            losses = self._run()
            if losses and comm.is_main_process():  # {}: EvalShare skipped it
                scalars = {"val_" + k: v for k, v in losses.items()}
                scalars["val_total_loss"] = sum(losses.values())
                self.trainer.storage.put_scalars(**scalars, smoothing_hint=False)
                logger.info("Validation loss: " + ", ".join(f"{k}={v:.4f}" for k, v in scalars.items()))


class _TileMapper:
    """Training targets of one tile: the dict's ``tile_window`` (x0, y0, x1, y1) cut out of the
    image at native resolution, its annotations clipped to the tile (boxes recomputed from the
    clipped masks, as INPUT.CROP does in training), by detectron2's DatasetMapper."""

    def __init__(self, cfg):
        # DatasetMapper cannot recompute boxes of an image without objects (it makes no gt_masks)
        self._mappers = {objects: DatasetMapper(cfg, is_train=True, augmentations=[],
                                                recompute_boxes=objects and cfg.MODEL.MASK_ON)
                         for objects in (True, False)}

    def __call__(self, dataset_dict):
        x0, y0, x1, y1 = dataset_dict["tile_window"]
        mapper = self._mappers[any(not a.get("iscrowd", 0) for a in dataset_dict.get("annotations", ()))]
        # the window differs per dict; the loader maps in this process (num_workers=0), one at a time
        mapper.augmentations = T.AugmentationList([T.CropTransform(x0, y0, x1 - x0, y1 - y0)])
        return mapper(dataset_dict)


class PeriodicCheckpointer(hooks.PeriodicCheckpointer):
    """detectron2's hook with ``max_to_keep`` (SOLVER.CHECKPOINTS_TO_KEEP). model_final.pth holds
    weights only now (checkpoint.INFERENCE_ONLY), so the last iteration's full state is written as a
    periodic checkpoint too: ``--resume`` after a finished or stopped run continues from its end, not
    from the last multiple of the period. As in detectron2, only checkpoints this process wrote are
    deleted: the one a run resumed from stays."""

    _saved_iter = None  # iteration of the last full state this process wrote

    def step(self, iteration, **kwargs):
        super().step(iteration, **kwargs)
        iteration = int(iteration)
        if (iteration + 1) % self.period == 0:
            self._saved_iter = iteration  # fvcore's step wrote it
        elif self.max_iter is not None and iteration >= self.max_iter - 1:
            self.save_resumable(iteration)

    def save_resumable(self, iteration):
        """The full state at ``iteration`` as ``model_<iteration>.pth``, unless already written."""
        if iteration == self._saved_iter:
            return
        self.checkpointer.save(f"{self.file_prefix}_{iteration:07d}", iteration=iteration)
        self._saved_iter = iteration
        if self.max_to_keep is not None:  # fvcore's PeriodicCheckpointer.step prunes the same way
            self.recent_checkpoints.append(self.checkpointer.get_checkpoint_file())
            while len(self.recent_checkpoints) > self.max_to_keep:
                old = self.recent_checkpoints.pop(0)
                if self.path_manager.exists(old):
                    self.path_manager.rm(old)


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
        self._metrics = os.path.join(output_dir, METRICS_JSON)
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

    def __init__(self, max_iter, images_per_epoch=0, images_per_iter=1):
        self._max_iter = max_iter
        self._images_per_epoch = images_per_epoch
        self._images_per_iter = images_per_iter
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
        if self._bar.total != self.trainer.max_iter:  # a time budget chose the length
            self._bar.total = self.trainer.max_iter
        if self._images_per_epoch:
            postfix["epoch"] = f"{(self.trainer.iter + 1) * self._images_per_iter / self._images_per_epoch:.1f}"
        for key in ("total_loss", "lr"):
            if key in storage.histories():
                value = storage.history(key).latest()
                postfix[key] = f"{value:.3g}" if key == "lr" else f"{value:.3f}"
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(1)

    def after_train(self):
        if self._bar is not None:
            self._bar.close()


class BestCheckpointer(hooks.BestCheckpointer):
    """detectron2's, looking only at a metric stored by this iteration's evaluation: when EvalShare
    skipped one, the metric in storage is an older evaluation's, already looked at."""

    def _best_checking(self):
        latest = self.trainer.storage.latest().get(self._val_metric)
        if latest is not None and latest[1] != self.trainer.storage.iter:
            return
        super()._best_checking()


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


@contextlib.contextmanager
def _untouched_rng():
    """Run a block that draws random numbers without moving the training's RNG streams, so a
    run with pictures trains exactly like one without (and resume stays bit-identical)."""
    import numpy as np

    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def draw_training_sample(mapped, class_names, input_format="BGR"):
    """RGB uint8 picture of one mapped training dict (DatasetMapper output): the augmented image
    with its ground-truth boxes, masks and class names, or its class map (detectron2 Visualizer)."""
    import numpy as np
    from detectron2.data.detection_utils import convert_image_to_rgb
    from detectron2.utils.visualizer import Visualizer

    from detectron2.data.catalog import Metadata

    image = convert_image_to_rgb(mapped["image"].permute(1, 2, 0).numpy(), input_format)
    vis = Visualizer(image, metadata=Metadata(stuff_classes=list(class_names)))
    if "sem_seg" in mapped:  # U-Net: the class map (ignored pixels, 255, stay undrawn)
        vis.draw_sem_seg(mapped["sem_seg"].numpy(), alpha=0.4)
    inst = mapped.get("instances")
    if inst is not None and len(inst):
        classes = inst.gt_classes.tolist()
        masks = None
        if inst.has("gt_masks"):
            m = inst.gt_masks
            masks = list(m.polygons) if hasattr(m, "polygons") else [x.numpy() for x in m.tensor]
        vis.overlay_instances(
            boxes=inst.gt_boxes.tensor.numpy(),
            masks=masks,
            labels=[class_names[c] if 0 <= c < len(class_names) else str(c) for c in classes],
            alpha=0.4,
        )
    out = vis.output.get_image()
    return np.ascontiguousarray(out[: image.shape[0], : image.shape[1]])


def _tile(pictures, columns=None, gap=4):
    import numpy as np

    columns = columns or min(len(pictures), 4)
    rows = math.ceil(len(pictures) / columns)
    h = max(p.shape[0] for p in pictures)
    w = max(p.shape[1] for p in pictures)
    sheet = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for i, p in enumerate(pictures):
        r, c = divmod(i, columns)
        sheet[r * (h + gap): r * (h + gap) + p.shape[0], c * (w + gap): c * (w + gap) + p.shape[1]] = p
    return sheet


class TrainingBatchPictures(HookBase):
    """Writes OUTPUT_DIR/train_batch_<i>.png before training: ``num_batches`` batches of
    IMS_PER_BATCH training images after the training mapper's augmentation, ground truth drawn,
    so augmentation and labels can be checked before waiting for a model.

    The images are drawn at random from the training set through the same mapper, with the RNG
    state restored afterwards: the training stream itself is not consumed. Main process only."""

    def __init__(self, cfg, mapper, dataset_dicts, class_names, num_batches=3):
        self._cfg = cfg
        self._mapper = mapper
        self._dicts = dataset_dicts
        self._class_names = list(class_names)
        self._num_batches = num_batches

    def write(self):
        import cv2

        per_batch = max(1, self._cfg.SOLVER.IMS_PER_BATCH)
        paths = []
        with _untouched_rng():
            rng = random.Random(self._cfg.SEED if self._cfg.SEED >= 0 else 0)
            for b in range(self._num_batches):
                chosen = [rng.randrange(len(self._dicts)) for _ in range(per_batch)] if self._dicts else []
                pictures = []
                for i in chosen:
                    mapped = self._mapper(dict(self._dicts[i]))
                    if mapped is not None:
                        pictures.append(draw_training_sample(mapped, self._class_names, self._cfg.INPUT.FORMAT))
                if not pictures:
                    continue
                path = os.path.join(self._cfg.OUTPUT_DIR, f"train_batch_{b}.png")
                ok, data = cv2.imencode(".png", cv2.cvtColor(_tile(pictures), cv2.COLOR_RGB2BGR))
                if ok:
                    with atomic_path(path) as tmp:
                        with open(tmp, "wb") as f:
                            f.write(data.tobytes())
                    paths.append(path)
        if paths:
            logger.info(f"Wrote {len(paths)} picture(s) of augmented training batches: {paths[0]} ...")
        return paths

    def before_train(self):
        try:
            self.write()
        except Exception as e:  # a picture must never stop a training
            logger.warning(f"Could not draw training batches ({e.__class__.__name__}: {e}).")


class EvalShare(HookBase):
    """Keeps the periodic evaluations (EvalHook's function, ValidationLoss) within ``share`` of the
    training's wall time, and says at the end what evaluation cost.

    Tiled evaluation (TEST.TILE_SIZE) runs every tile of every val image: on long strips one
    evaluation costs about as much as the 10% of training between two of them (on dense strips of
    real photos evaluation took 47% of the recipe's run, docs/large-images.md). ``gate(kind, fn)`` wraps an evaluation function: at a
    period it runs only when the time evaluations took so far, plus this one and the final one of
    each kind, stays within ``share`` of the run's projected wall time; otherwise it is skipped and
    returns ``{}`` (EvalHook stores nothing, so BestCheckpointer and EarlyStopping see no new
    metric). The final evaluation always runs. A kind not yet measured is estimated from the
    training step time: an input it scores (tile or image) at ``ESTIMATE`` training images.
    ``share`` 0 runs every evaluation and only reports. Rank 0 decides; the decision is broadcast.
    """

    ESTIMATE = {"evaluation": 1 / 3, "validation loss": 1 / 2}  # of one training image's step

    def __init__(self, share):
        self._share = share
        self._inputs = {}  # kind -> inputs one run of it scores (tiles or images)
        self._last = {}  # kind -> seconds of its last run
        self._spent = 0.0
        self._runs = {}  # kind -> [ran, skipped]
        self._start = None

    def count_inputs(self, kind, inputs):
        self._inputs[kind] = inputs

    def before_train(self):
        self._start = time.perf_counter()
        self._start_iter = self.trainer.iter

    def _cost(self, kind, step_s):
        if kind in self._last:
            return self._last[kind]
        per_image = step_s / max(self.trainer.cfg.SOLVER.IMS_PER_BATCH, 1)
        return self._inputs.get(kind, 0) * per_image * self.ESTIMATE.get(kind, 1.0)

    def _allowed(self, kind):
        trainer = self.trainer
        elapsed = time.perf_counter() - self._start
        done = max(trainer.iter + 1 - self._start_iter, 1)
        step_s = max(elapsed - self._spent, 0.0) / done
        projected_train = step_s * max(trainer.max_iter - self._start_iter, done)
        final = sum(self._cost(k, step_s) for k in set(self._inputs) | set(self._last))
        allowed = self._share / (1 - self._share) * projected_train
        return self._spent + self._cost(kind, step_s) + final <= allowed

    def gate(self, kind, fn):
        def gated(*args, **kwargs):
            trainer = self.trainer
            final = trainer.iter + 1 >= trainer.max_iter
            run = True
            if self._share > 0 and not final and self._start is not None:
                run = broadcast_from_main(self._allowed(kind) if comm.is_main_process() else None)
            counts = self._runs.setdefault(kind, [0, 0])
            if not run:
                counts[1] += 1
                return {}
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                took = time.perf_counter() - started
                self._last[kind] = took
                self._spent += took
                counts[0] += 1

        return gated

    def summary(self):
        total = time.perf_counter() - self._start if self._start is not None else 0.0
        parts = [f"{kind} {ran} run(s)" + (f", {skipped} skipped" if skipped else "")
                 for kind, (ran, skipped) in self._runs.items()]
        limit = (f"TEST.TILE_EVAL_MAX_SHARE {self._share:g}" if self._share > 0 else "no limit")
        return (f"Evaluation took {self._spent:.0f} s of the training's {total:.0f} s "
                f"({100 * self._spent / max(total, 1e-9):.0f}%; {'; '.join(parts) or 'none'}; {limit}).")

    def after_train(self):
        if comm.is_main_process() and self._runs:
            logger.info(self.summary())
