"""What a training run is, in one place and without detectron2 (every command imports it at start-up).

A run is one folder that ``train_net.py`` (``segkit train``) writes and never shares::

    output/<name>/                   the run: <name> is --name, else the config's OUTPUT_DIR, else the
                                     config file's stem; a second run of the same name goes to
                                     <name>-2, <name>-3, ... unless --resume or --exist-ok
    output/<name>/model_best.pth     the checkpoint with the best validation metric (when evaluated)
    output/<name>/model_final.pth    the checkpoint at the end of training
    output/<name>/model_<iter>.pth   periodic checkpoints, what --resume continues from
    output/<name>/last_checkpoint    names the newest periodic checkpoint (detectron2's file)
    output/<name>/config.yaml        the full config of the run
    output/<name>/metrics.json       detectron2's training metrics, one JSON object a line
    output/<name>/eval/              evaluations: metrics_<dataset>.json, plots, thresholds
    output/latest_run                names the newest run in this folder

Every command that needs a model (predict, app, export, evaluation, suspects, review, ranking)
takes ``--weights`` as a checkpoint file, a run folder or a run name, and without it uses the
newest run's best checkpoint (:func:`resolve_weights`), saying in one line which file it took.

Our checkpoints carry what inference needs under the keys below, so the checkpoint alone is
enough to predict with or to evaluate (segkit.engine.checkpoint writes them).
"""

import os
import re
import sys

RUNS_ROOT = "output"
LATEST_RUN = "latest_run"
MODEL_BEST = "model_best.pth"
MODEL_FINAL = "model_final.pth"
LAST_CHECKPOINT = "last_checkpoint"
CONFIG_YAML = "config.yaml"
METRICS_JSON = "metrics.json"
EVAL_DIR = "eval"
TTA_EVAL_DIR = "eval_TTA"  # the evaluation with test-time augmentation (TEST.AUG.ENABLED)
# A folder holding any of these already holds a run: a new training goes to a numbered sibling.
RUN_MARKERS = (MODEL_FINAL, MODEL_BEST, LAST_CHECKPOINT, METRICS_JSON, CONFIG_YAML)

# Checkpoint keys (beside detectron2's "model" and the resumable states).
KEY_CONFIG = "config"
KEY_CLASS_NAMES = "class_names"
KEY_META_ARCHITECTURE = "meta_architecture"
KEY_ITERATION = "iteration"
KEY_SCORE_THRESHOLDS = "score_thresholds"  # {class name: best-F1 score threshold} of the last evaluation
KEY_SCORE_THRESHOLD = "score_threshold"  # one best-F1 threshold for all classes
SCORE_THRESHOLD_KEYS = (KEY_SCORE_THRESHOLDS, KEY_SCORE_THRESHOLD)
# The score threshold when a checkpoint carries no evaluated one (detectron2 demo's default).
DEFAULT_SCORE_THRESHOLD = 0.5
# export_model.py: an export that loses more segm AP (points, 0-100) than this on the val split is
# not written (--max-ap-drop); INT8 calibration images from the training split (--calibration-images)
DEFAULT_MAX_AP_DROP = 1.0
DEFAULT_CALIBRATION_IMAGES = 32

DEFAULT_CONFIG = "configs/mask_rcnn_R_50_FPN_3x.yaml"  # train_net.py's default: fine-tunes R50-FPN from COCO
CPU_CONFIG = "configs/mask_rcnn_lite0_FPN.yaml"  # the default without a GPU: ImageNet-pretrained Lite0
TRAIN_HINT = f"python train_net.py --config-file {CPU_CONFIG}"


class NoModelError(Exception):
    """No checkpoint where the command looked; the message says where and what to run first."""


def run_name_of(output_dir, config_file, runs_root=RUNS_ROOT):
    """The run folder a training writes when no --name is given: the config's OUTPUT_DIR when it names
    a folder of its own, else ``<runs_root>/<config file stem>`` (a config that leaves OUTPUT_DIR at
    the runs root would otherwise write every run into the same folder)."""
    if output_dir and os.path.normpath(output_dir) != os.path.normpath(runs_root):
        return output_dir
    stem = os.path.splitext(os.path.basename(config_file or "run"))[0]
    return os.path.join(runs_root, stem)


def holds_run(folder):
    return os.path.isdir(folder) and any(os.path.exists(os.path.join(folder, m)) for m in RUN_MARKERS)


def numbered_runs(base):
    """``base`` and its numbered siblings ``base-2``, ``base-3``, ... that exist, in number order."""
    parent, name = os.path.split(os.path.normpath(base))
    pattern = re.compile(re.escape(name) + r"-(\d+)$")
    found = [(1, base)] if os.path.isdir(base) else []
    if os.path.isdir(parent or "."):
        for entry in os.listdir(parent or "."):
            m = pattern.match(entry)
            if m and os.path.isdir(os.path.join(parent, entry)):
                found.append((int(m.group(1)), os.path.join(parent, entry)))
    return [path for _, path in sorted(found)]


def new_run_dir(base, resume=False, exist_ok=False):
    """The folder a training writes: ``base`` when it holds no run yet (or ``exist_ok``); with
    ``resume`` the newest of ``base``, ``base-2``, ...; else the next free ``base-N``."""
    runs = numbered_runs(base)
    if resume:
        return runs[-1] if runs else base
    if exist_ok or not holds_run(base):
        return base
    taken = {os.path.normpath(p) for p in runs}
    n = 2
    while os.path.normpath(f"{os.path.normpath(base)}-{n}") in taken:
        n += 1
    return f"{os.path.normpath(base)}-{n}"


def record_latest_run(run_dir):
    """Write ``latest_run`` in the folder that holds ``run_dir``, naming it (atomically). A folder
    that cannot take it (read-only) costs the record, not the training: one line says so."""
    from segkit.data.atomic import write_text

    parent = os.path.dirname(os.path.abspath(run_dir))
    try:
        write_text(os.path.join(parent, LATEST_RUN), os.path.basename(os.path.abspath(run_dir)) + "\n")
    except OSError as e:
        print(f"warning: could not record {run_dir} as the latest run in {parent} ({e.strerror}); later "
              f"commands need --weights {run_dir}", file=sys.stderr)


def latest_run(runs_root=RUNS_ROOT):
    """The newest run under ``runs_root`` (from its ``latest_run`` record), or None."""
    try:
        with open(os.path.join(runs_root, LATEST_RUN), encoding="utf-8") as f:
            name = f.read().strip()
    except OSError:
        return None
    path = os.path.join(runs_root, name)
    return path if name and os.path.isdir(path) else None


def run_checkpoint(run_dir):
    """(path, which) of the checkpoint that stands for a run: best, else final, else the newest
    periodic one (a run still training or stopped early); (None, None) without any."""
    for name, which in ((MODEL_BEST, "best"), (MODEL_FINAL, "final")):
        path = os.path.join(run_dir, name)
        if os.path.isfile(path):
            return path, which
    try:
        with open(os.path.join(run_dir, LAST_CHECKPOINT), encoding="utf-8") as f:
            path = os.path.join(run_dir, f.read().strip())
        if os.path.isfile(path):
            return path, "last periodic"
    except OSError:
        pass
    return None, None


def resolve_run(run=None, runs_root=RUNS_ROOT):
    """(run folder, how it was named) of ``run``: a run folder, a run name under ``runs_root``, or None
    for the newest run. Raises NoModelError saying where it looked and what to run."""
    if run is None:
        found = latest_run(runs_root)
        if found is None:
            raise NoModelError(f"No checkpoint found: no run recorded in {os.path.join(runs_root, LATEST_RUN)}. "
                               f"Train one first ({TRAIN_HINT}) or pass --weights CHECKPOINT_OR_RUN.")
        return found, f"the latest run {found}"
    if os.path.isdir(run):
        return run, f"run {run}"
    if not os.path.isabs(run) and os.path.isdir(os.path.join(runs_root, run)):
        return os.path.join(runs_root, run), f"run {os.path.join(runs_root, run)}"
    raise NoModelError(f"No checkpoint at {run} (no such file, run folder or run name under "
                       f"{runs_root}/): train one first ({TRAIN_HINT}) or pass --weights CHECKPOINT_OR_RUN.")


def resolve_weights(weights=None, runs_root=RUNS_ROOT, announce=True):
    """The checkpoint file a command uses. ``weights``: a checkpoint file, a run folder, a run name
    under ``runs_root``, or None for the newest run. Prints one line saying which file it took
    (unless ``announce`` is False). Raises NoModelError saying where it looked and what to run."""
    if weights and os.path.isfile(weights):
        return weights
    run_dir, how = resolve_run(weights or None, runs_root)
    path, which = run_checkpoint(run_dir)
    if path is None:
        raise NoModelError(f"{run_dir}: no checkpoint in this run folder yet ({MODEL_BEST}, {MODEL_FINAL} or a "
                           f"periodic one); train it first ({TRAIN_HINT}) or pass --weights CHECKPOINT.")
    if announce:
        print(f"Using {path} ({which} checkpoint of {how}).", file=sys.stderr)
    return path
