"""Training length in the user's units: epochs (``SOLVER.EPOCHS``) instead of iterations.

The rule, applied when SOLVER.EPOCHS > 0 (see docs/training.md, "How long to train"):

    MAX_ITER         = max(ceil(EPOCHS x training images / IMS_PER_BATCH), MIN_ITER)
    STEPS            = 80% and 93.3% of MAX_ITER (LR x GAMMA at each)
    WARMUP_ITERS     = 5% of MAX_ITER, at most the configured WARMUP_ITERS
    TEST.EVAL_PERIOD = SOLVER.CHECKPOINT_PERIOD = 10% of MAX_ITER (0, i.e. off, stays off)

A key given as ``KEY VALUE`` on the command line keeps the user's value; ``SOLVER.MAX_ITER`` there
turns epochs off altogether, so today's iteration-based commands mean what they meant.
"""

import math

from detectron2.data import get_detection_dataset_dicts

STEP_FRACTIONS = (0.8, 14 / 15)
WARMUP_FRACTION = 0.05
EVAL_FRACTION = 0.1


def explicit_keys(opts):
    """The config keys given on the command line (detectron2's ``KEY VALUE`` pairs)."""
    return set(opts[0::2]) if opts else set()


def count_train_images(cfg):
    """Images the training loader draws from: after FILTER_EMPTY_ANNOTATIONS, as the loader does."""
    return len(get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS, min_keypoints=0
    ))


def place_schedule(cfg, max_iter, keep=()):
    """Set MAX_ITER and place STEPS, WARMUP_ITERS, EVAL_PERIOD and CHECKPOINT_PERIOD as fractions of
    it (the module's rule); keys in ``keep`` are left as they are. ``cfg`` must be mutable."""
    max_iter = max(int(max_iter), 1)
    cfg.SOLVER.MAX_ITER = max_iter
    if "SOLVER.STEPS" not in keep:
        steps = sorted({min(max(round(f * max_iter), 1), max_iter) for f in STEP_FRACTIONS})
        cfg.SOLVER.STEPS = tuple(s for s in steps if s < max_iter)
    if "SOLVER.WARMUP_ITERS" not in keep:
        cfg.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, round(WARMUP_FRACTION * max_iter))
    period = max(round(EVAL_FRACTION * max_iter), 1)
    if "TEST.EVAL_PERIOD" not in keep and cfg.TEST.EVAL_PERIOD > 0:
        cfg.TEST.EVAL_PERIOD = period
    if "SOLVER.CHECKPOINT_PERIOD" not in keep:
        cfg.SOLVER.CHECKPOINT_PERIOD = period
    return cfg


def describe_schedule(cfg):
    """'LR drops at 840 and 980; evaluation every 105' for the schedule in ``cfg``."""
    steps = [f"{s:,}" for s in cfg.SOLVER.STEPS if s < cfg.SOLVER.MAX_ITER]
    drops = "LR drops at " + " and ".join(steps) if steps else "no LR drop"
    evals = (f"evaluation every {cfg.TEST.EVAL_PERIOD:,}" if cfg.TEST.EVAL_PERIOD > 0 and cfg.DATASETS.TEST
             else "evaluation at the end" if cfg.DATASETS.TEST else "no evaluation")
    return f"{drops}; {evals}"


def apply_epochs(cfg, opts=(), num_images=None):
    """Turn SOLVER.EPOCHS into an iteration schedule (module docstring); returns the sentence that
    says what was chosen, or None when epochs are off. ``cfg`` must be mutable."""
    explicit = explicit_keys(opts)
    if cfg.SOLVER.EPOCHS <= 0:
        return None
    if "SOLVER.MAX_ITER" in explicit:
        return (f"SOLVER.MAX_ITER {cfg.SOLVER.MAX_ITER:,} from the command line: "
                f"SOLVER.EPOCHS {cfg.SOLVER.EPOCHS:g} is ignored.")
    if num_images is None:
        num_images = count_train_images(cfg)
    if num_images == 0:
        raise SystemExit(f"SOLVER.EPOCHS: the training set {', '.join(cfg.DATASETS.TRAIN)} has no images.")
    batch = cfg.SOLVER.IMS_PER_BATCH
    by_epochs = math.ceil(cfg.SOLVER.EPOCHS * num_images / batch)
    place_schedule(cfg, max(by_epochs, cfg.SOLVER.MIN_ITER), keep=explicit)
    floor = (f", raised to SOLVER.MIN_ITER {cfg.SOLVER.MIN_ITER:,} (small sets need more passes)"
             if cfg.SOLVER.MIN_ITER > by_epochs else "")
    return (f"{cfg.SOLVER.EPOCHS:g} epochs of {num_images:,} images at batch {batch} = "
            f"{by_epochs:,} iterations{floor}; {describe_schedule(cfg)}.")
