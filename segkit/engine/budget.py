"""Train to a wall-clock budget (``--time-budget 10m`` / ``SOLVER.TIME_BUDGET`` seconds).

The budget is the wall time of the whole process: start-up, training, periodic and final
evaluation, final checkpoint. ``TimeBudget`` measures a short warm-up, then chooses MAX_ITER, the LR
steps, the evaluation and checkpoint periods (engine/schedule.py's fractions) so that the run ends
within the budget, and says what it chose. It plans again after each evaluation and halfway through
what is left, with the seconds per iteration and per evaluation measured so far; LR steps already
passed stay where they were. Under DDP rank 0 plans and broadcasts. The time spent is stored in
checkpoints, so ``--resume`` counts what earlier runs used (up to their last checkpoint).

Checkpoints: SOLVER.CHECKPOINT_PERIOD given on the command line is kept as given. Otherwise the plan
places one every 10% of MAX_ITER (the schedule's rule) and at least every CHECKPOINT_EVERY_S of
training, with or without evaluation: a run killed or requeued loses at most that much.

The budget plans with the training-length rule (engine/schedule.py): the MAX_ITER that SOLVER.EPOCHS
gives is the longest it plans, since past it AP stops paying (docs "How long to train"); a budget
shortens a run, never lengthens it. SOLVER.MAX_ITER on the command line sets that limit instead.

detectron2's loop iterates over a ``range`` fixed when training starts, so the trainer starts the
loop with ``LOOP_LIMIT`` as its end and this hook ends it at the planned iteration (StopTraining,
which the Trainer turns into the usual final checkpoint; EvalHook's final evaluation runs as always).
"""

import logging
import math
import os
import re
import statistics
import time
import warnings

from detectron2.engine import HookBase, hooks
from detectron2.utils import comm

from segkit.engine.distributed import broadcast_from_main
from segkit.engine.schedule import EVAL_FRACTION, describe_schedule, place_schedule

logger = logging.getLogger(__name__)

PROCESS_START_ENV = "SEGKIT_PROCESS_START"
LOOP_LIMIT = 10**9
# Longest training between two checkpoints a budget plans (unless the user sets the period): what a
# killed or requeued run can lose. Writing a checkpoint takes about a second even for R50-FPN's
# 350 MB, under 1% of it.
CHECKPOINT_EVERY_S = 300

_UNITS = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(text):
    """'90', '90s', '10m', '1.5h', '1h30m' -> seconds (float). Raises ValueError otherwise."""
    text = str(text).strip().lower().replace(" ", "")
    parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)([a-z]*)", text)
    if not parts or "".join(n + u for n, u in parts) != text or any(u not in _UNITS for _, u in parts):
        raise ValueError(f"{text!r}: expected a duration such as 90s, 10m, 1.5h or 1h30m")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"{text!r}: the duration must be positive")
    return seconds


def seconds_since_process_start():
    """Age of this process (Linux: from /proc, so interpreter start-up and imports count); 0 where
    that is not available."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return 0.0


def process_started_at():
    value = os.environ.get(PROCESS_START_ENV)
    return float(value) if value else time.time() - seconds_since_process_start()


class TimeBudget(HookBase):
    """Chooses MAX_ITER so the run ends within ``budget_s`` seconds (module docstring).

    Register it LAST: it times each step including the other hooks' work and may end the loop."""

    WARMUP_ITERS = 5  # timed iterations before the first plan (after one untimed)
    SAFETY = 0.04  # fraction of the budget kept free for what is not measured (exit, last log lines)
    EVAL_SHARE = 0.1  # periodic evaluations use at most this fraction of the remaining time

    def __init__(self, budget_s, cfg, started_at=None, keep=()):
        """``keep``: config keys the user gave on the command line; of those the plan keeps
        SOLVER.CHECKPOINT_PERIOD as given."""
        self.budget_s = float(budget_s)
        self._cfg = cfg
        self._keep_checkpoint_period = "SOLVER.CHECKPOINT_PERIOD" in keep
        self._started_at = process_started_at() if started_at is None else started_at
        self._spent_before = 0.0
        self._plan = None
        self._replan_at = None
        self._step_s = []  # wall seconds of steps without an evaluation
        self._eval_s = []  # extra seconds of steps with one
        self._last = None
        self._first_step_s = 0.0
        # The training-length rule's MAX_ITER (or the user's): a budget shortens it, never lengthens it.
        self._longest = int(cfg.SOLVER.MAX_ITER) if cfg.SOLVER.EPOCHS > 0 else None

    # ---- time ---------------------------------------------------------------------------------
    def spent(self):
        return self._spent_before + time.time() - self._started_at

    def state_dict(self):
        return {"spent_s": self.spent(), "plan": self._plan or {}}

    def load_state_dict(self, state):
        self._spent_before = float(state.get("spent_s", 0.0))
        self._plan = dict(state.get("plan") or {}) or None

    # ---- hook ---------------------------------------------------------------------------------
    def before_train(self):
        start = self.trainer.start_iter
        if self._plan and self._plan["max_iter"] > start:
            self._apply(self._plan, announce=False)  # a resumed run keeps its plan until it re-plans
        else:
            self._apply(self._cfg_plan(self._cfg), announce=False)
        # A resumed run with little of its budget left plans after one iteration, without a warm-up.
        # Decided on rank 0: every rank must plan at the same iteration.
        little_left = broadcast_from_main(self.spent() > 0.75 * self.budget_s)
        warmup = 0 if little_left else self.WARMUP_ITERS
        self._replan_at = start + 1 + warmup
        self._last = time.perf_counter()
        if comm.is_main_process():
            spent = f", {self._spent_before:.0f} s of it used by earlier runs" if self._spent_before else ""
            logger.info(f"Time budget {self.budget_s:.0f} s{spent}: measuring {warmup + 1} "
                        f"iteration(s) before choosing the schedule.")

    def after_step(self):
        now = time.perf_counter()
        duration, self._last = now - self._last, now
        it = self.trainer.iter
        if it == self.trainer.start_iter:
            self._first_step_s = duration
        else:  # the first step pays for start-up: timed, but only used when nothing else is
            period = self._plan["eval_period"] if self._plan else 0
            if period and (it + 1) % period == 0 and it + 1 != self.trainer.max_iter:
                self._eval_s.append(max(duration - self._typical_step(), 0.0))
                self._replan_at = it  # re-plan with the evaluation's cost known
            else:
                self._step_s.append(duration)
        if it + 1 >= self._replan_at and it + 1 < self.trainer.max_iter:
            plan = broadcast_from_main(self._choose(it) if comm.is_main_process() else None)
            self._apply(plan, announce=True)
            self._last = time.perf_counter()  # planning and broadcasting are not a step
        if it + 1 >= self.trainer.max_iter:
            from segkit.engine.hooks import StopTraining

            raise StopTraining()

    # ---- planning -----------------------------------------------------------------------------
    def _typical_step(self):
        return statistics.mean(self._step_s[-50:]) if self._step_s else self._first_step_s

    def _estimated_eval_s(self):
        if self._eval_s:
            return max(self._eval_s)
        if not self._cfg.DATASETS.TEST:
            return 0.0
        # Before the first evaluation: inference costs about a third of a training step per image
        # on the test split; COCO evaluation and its plots add a few seconds.
        from detectron2.data import DatasetCatalog

        images = sum(len(DatasetCatalog.get(n)) for n in self._cfg.DATASETS.TEST)
        per_image = self._typical_step() / max(self._cfg.SOLVER.IMS_PER_BATCH, 1) / 3
        return images * per_image / comm.get_world_size() + 3.0

    @staticmethod
    def _final_save_estimate():
        # The last iteration writes model_final.pth twice (PeriodicCheckpointer, then the Trainer) and
        # its full state once (model_<iter>.pth, for --resume).
        return 2.0

    def _choose(self, it):
        """The plan for iterations after ``it`` (main process only)."""
        step = self._typical_step()
        eval_s = self._estimated_eval_s()
        left = self.budget_s * (1 - self.SAFETY) - self.spent() - eval_s - self._final_save_estimate()
        evals = 0
        if self._cfg.TEST.EVAL_PERIOD > 0 and self._cfg.DATASETS.TEST and eval_s > 0:
            evals = min(int(1 / EVAL_FRACTION) - 1, int(self.EVAL_SHARE * max(left, 0) / eval_s))
        more = max(int((left - evals * eval_s) / max(step, 1e-6)), 0)
        max_iter = it + 1 + more
        limited = self._longest is not None and max_iter > self._longest
        if limited:
            max_iter = max(self._longest, it + 1)
            more = max_iter - it - 1
        plan = self._schedule(max_iter, it, evals)
        plan["replan_at"] = it + 1 + max(more // 2, 1) if more > 2 * self.WARMUP_ITERS else LOOP_LIMIT
        plan["words"] = (
            f"Time budget: {self.spent():.0f} of {self.budget_s:.0f} s used at iteration {it + 1:,} "
            f"({step:.2f} s/iteration, evaluation {eval_s:.1f} s{'' if self._eval_s else ' estimated'}): "
            f"training to iteration {max_iter:,}"
            f"{' (the length SOLVER.EPOCHS gives; the budget allows more)' if limited else ''}; "
        )
        return plan

    def _schedule(self, max_iter, it, evals):
        cfg = self._cfg.clone()
        cfg.defrost()
        place_schedule(cfg, max_iter, keep={"TEST.EVAL_PERIOD", "SOLVER.CHECKPOINT_PERIOD"})
        cfg.TEST.EVAL_PERIOD = math.ceil(max_iter / (evals + 1)) if evals else 0
        if not self._keep_checkpoint_period:
            by_time = max(int(CHECKPOINT_EVERY_S / max(self._typical_step(), 1e-6)), 1)
            cfg.SOLVER.CHECKPOINT_PERIOD = min(max(round(EVAL_FRACTION * max_iter), 1), by_time)
        old = self._plan
        if old and old["steps"] and it + 1 >= min(old["steps"]):
            cfg.SOLVER.STEPS = tuple(s for s in old["steps"] if s < max_iter)  # the LR already dropped
        if old and it + 1 > old["warmup_iters"]:
            cfg.SOLVER.WARMUP_ITERS = old["warmup_iters"]  # warm-up is over; do not start another
        return self._cfg_plan(cfg)

    @staticmethod
    def _cfg_plan(cfg):
        return {"max_iter": cfg.SOLVER.MAX_ITER, "steps": list(cfg.SOLVER.STEPS),
                "warmup_iters": cfg.SOLVER.WARMUP_ITERS, "eval_period": cfg.TEST.EVAL_PERIOD,
                "checkpoint_period": cfg.SOLVER.CHECKPOINT_PERIOD, "replan_at": LOOP_LIMIT}

    def _apply(self, plan, announce):
        """Make the trainer, its hooks and its LR scheduler follow ``plan``."""
        trainer = self.trainer
        plan = dict(plan)
        words = plan.pop("words", "")
        cfg = trainer.cfg.clone()
        cfg.defrost()
        cfg.SOLVER.MAX_ITER = plan["max_iter"]
        cfg.SOLVER.STEPS = tuple(plan["steps"])
        cfg.SOLVER.WARMUP_ITERS = plan["warmup_iters"]
        cfg.TEST.EVAL_PERIOD = plan["eval_period"]
        cfg.SOLVER.CHECKPOINT_PERIOD = plan["checkpoint_period"]
        cfg.freeze()
        trainer.cfg = cfg
        if hasattr(trainer.checkpointer, "cfg"):
            trainer.checkpointer.cfg = cfg  # model_final.pth records the schedule that was run
        trainer.max_iter = plan["max_iter"]
        for h in trainer._hooks:
            if isinstance(h, hooks.PeriodicCheckpointer):
                h.max_iter, h.period = plan["max_iter"], plan["checkpoint_period"]
            elif isinstance(h, (hooks.EvalHook, hooks.BestCheckpointer, hooks.PreciseBN)):
                h._period = plan["eval_period"]  # PreciseBN: fresh statistics before each evaluation
            elif type(h).__name__ == "ValidationLoss" and not cfg.TEST.VAL_LOSS_PERIOD:
                h._period = plan["eval_period"]
            elif type(h).__name__ == "EarlyStopping":
                h._period = plan["eval_period"]  # it judges the evaluations EvalHook now runs
            elif isinstance(h, hooks.PeriodicWriter):
                for writer in h._writers:
                    if hasattr(writer, "_max_iter"):
                        writer._max_iter = plan["max_iter"]  # CommonMetricPrinter's ETA
        self._rebuild_scheduler(cfg)
        self._replan_at = plan["replan_at"]
        self._plan = plan
        if announce and comm.is_main_process():
            logger.info(words + describe_schedule(cfg) + ".")

    def _rebuild_scheduler(self, cfg):
        """detectron2's own builder with the new MAX_ITER/STEPS, continued at the current iteration
        (its LRMultiplier computes the LR from iteration / MAX_ITER, so it cannot be stretched)."""
        trainer = self.trainer
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()"
            scheduler = trainer.build_lr_scheduler(cfg, trainer.optimizer)
            # Continue from the LR hook's position: it has stepped for the next iteration already.
            scheduler.last_epoch = trainer.scheduler.last_epoch - 1
            scheduler.step()
        trainer.scheduler = scheduler

    def after_train(self):
        if comm.is_main_process():
            logger.info(f"Time budget: training ended at iteration {self.trainer.iter + 1:,} after "
                        f"{self.spent():.0f} of {self.budget_s:.0f} s (final evaluation included).")
