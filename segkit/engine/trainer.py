"""``Trainer``: detectron2's DefaultTrainer with what our users need on top (see hooks.py and
checkpoint.py), and nothing it already does written again."""

import logging
import os
import random
import weakref

import numpy as np
import torch
from detectron2.data import DatasetMapper, MetadataCatalog, build_detection_test_loader, get_detection_dataset_dicts
from detectron2.modeling import GeneralizedRCNNWithTTA
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter
from detectron2.utils.logger import setup_logger
from fvcore.nn.precise_bn import get_bn_modules

from segkit.data.augmentation import build_train_mapper
from segkit.data.loader import build_resumable_train_loader
from segkit.data.run_layout import TTA_EVAL_DIR
from segkit.engine.budget import LOOP_LIMIT, TimeBudget
from segkit.engine.checkpoint import SegkitCheckpointer, take_score_thresholds
from segkit.modeling.config import check_test_augmentation, is_semantic
from segkit.modeling.tiling import TiledModel, tile_windows
import segkit.modeling.unet  # noqa: F401  (registers the UNet meta-architecture)
from segkit.engine.hooks import (
    BestCheckpointer,
    EarlyStopping,
    EvalShare,
    LossCurvePlot,
    PeriodicCheckpointer,
    ProgressBar,
    SaveOnSignal,
    StopForRequeue,
    StopTraining,
    TrainingBatchPictures,
    ValidationLoss,
    save_signal,
)

logger = logging.getLogger(__name__)


class HideDivergenceTraceback(logging.Filter):
    """TrainerBase.train logs every exception with a traceback; a NaN loss gets our one sentence
    (TrainingDiverged). The program installs it on detectron2's train-loop logger at start."""

    def filter(self, record):
        return not (record.exc_info and isinstance(record.exc_info[1], FloatingPointError))


def rng_state():
    """Global RNG states as plain types and tensors (loadable with torch.load(weights_only=True))."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def dataset_classes(name, semantic):
    """Class names of a registered dataset: stuff classes for semantic models, thing classes else."""
    meta = MetadataCatalog.get(name)
    return list(meta.get("stuff_classes" if semantic else "thing_classes", None) or [])


def class_names_of(cfg):
    return dataset_classes(cfg.DATASETS.TRAIN[0], is_semantic(cfg))


class MetricPrinter(CommonMetricPrinter):
    """detectron2's console printer, without its crash when it writes twice at one iteration
    before IterationTimer has timed a step: a run resumed with its time budget spent stops at once,
    and the writer's last step and the final write share an iteration (ZeroDivisionError)."""

    def _get_eta(self, storage):
        if self._last_write is not None and self._last_write[0] == storage.iter:
            return None
        return super()._get_eta(storage)


class Trainer(DefaultTrainer):
    def __init__(self, cfg, user_keys=()):
        """``user_keys``: the config keys given on the command line (KEY VALUE); a time budget's
        plan leaves SOLVER.CHECKPOINT_PERIOD as given there."""
        # Mirrors DefaultTrainer.__init__ of detectron2 0.7.2 (upstream commit a59f0563; the
        # DefaultTrainer tests in tests/test_train.py fail when it changes), with three changes:
        # create_ddp_model gets device_ids=None on CPU (detectron2 passes [local_rank], which DDP
        # rejects for CPU modules), the train loader is resumable, the checkpointer is ours.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        # The stream seed is fixed now and stored in checkpoints, so a resume replays the same data
        # even when SEED is -1 (random).
        self.data_seed = cfg.SEED if cfg.SEED >= 0 else int(np.random.randint(2**31))
        data_loader, self._batch_sampler = self.build_resumable_train_loader(cfg, self.data_seed)

        on_gpu = cfg.MODEL.DEVICE.startswith("cuda")
        model = create_ddp_model(
            model, broadcast_buffers=False, device_ids=[comm.get_local_rank()] if on_gpu else None
        )
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SegkitCheckpointer(
            model, cfg.OUTPUT_DIR, cfg=cfg, class_names=class_names_of(cfg), trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self._last_completed_iter = -1
        self.user_keys = frozenset(user_keys)
        self.register_hooks(self.build_hooks())

    # ---- data -------------------------------------------------------------------------------
    @classmethod
    def build_train_mapper(cls, cfg, dataset_dicts=None):
        """``dataset_dicts``: the training records (copy-paste draws its source images from them)."""
        return build_train_mapper(cfg, dataset_dicts)

    @classmethod
    def build_resumable_train_loader(cls, cfg, seed):
        dicts = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=0,
            proposal_files=None,
        )
        return build_resumable_train_loader(cfg, dicts, cls.build_train_mapper(cfg, dicts), seed)

    @classmethod
    def build_train_loader(cls, cfg):
        return cls.build_resumable_train_loader(cfg, cfg.SEED if cfg.SEED >= 0 else 0)[0]

    @classmethod
    def build_batch_pictures(cls, cfg):
        dicts = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS, min_keypoints=0, proposal_files=None
        )
        return TrainingBatchPictures(
            cfg, cls.build_train_mapper(cfg, dicts), dicts, class_names_of(cfg), cfg.INPUT.AUG.PREVIEW_BATCHES
        )

    # ---- model and solver ---------------------------------------------------------------------
    @classmethod
    def build_optimizer(cls, cfg, model):
        name = cfg.SOLVER.OPTIMIZER.upper()
        if name == "SGD":
            return super().build_optimizer(cfg, model)
        if name not in ("ADAM", "ADAMW"):
            raise ValueError(f"SOLVER.OPTIMIZER {cfg.SOLVER.OPTIMIZER!r}: expected SGD, ADAM or ADAMW.")
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        optim = torch.optim.AdamW if name == "ADAMW" else torch.optim.Adam
        return maybe_add_gradient_clipping(cfg, optim)(params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)

    # ---- evaluation ---------------------------------------------------------------------------
    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        if cfg.TEST.TILE_SIZE > 0:
            # Tiled evaluation cuts the image at its original size: the loader must not resize.
            return build_detection_test_loader(cfg, dataset_name, mapper=DatasetMapper(cfg, False, augmentations=[]))
        return super().build_test_loader(cfg, dataset_name)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """DefaultTrainer.test; with TEST.TILE_SIZE > 0 the model runs on tiles (modeling/tiling.py),
        so the AP a user is shown is measured the way predict.py --tile predicts."""
        if cfg.TEST.TILE_SIZE > 0:
            if is_semantic(cfg):
                raise ValueError(f"TEST.TILE_SIZE: tiled evaluation is for instance models, not "
                                 f"{cfg.MODEL.META_ARCHITECTURE}; set TEST.TILE_SIZE 0")
            model = TiledModel.from_config(getattr(model, "module", model), cfg)
        return super().test(cfg, model, evaluators)

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """detectron2's tools/train_net.py test_with_TTA: the evaluation with TEST.AUG (its sizes and
        flip) through GeneralizedRCNNWithTTA; results keyed ``segm_TTA`` / ``bbox_TTA``, files in
        OUTPUT_DIR/inference_TTA."""
        check_test_augmentation(cfg)
        logger.info("Evaluating with test-time augmentation: sizes %s, max %d, flip %s",
                    tuple(cfg.TEST.AUG.MIN_SIZES), cfg.TEST.AUG.MAX_SIZE, cfg.TEST.AUG.FLIP)
        model = GeneralizedRCNNWithTTA(cfg, getattr(model, "module", model))
        evaluators = [cls.build_evaluator(cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, TTA_EVAL_DIR))
                      for name in cfg.DATASETS.TEST]
        results = super().test(cfg, model, evaluators)
        return {f"{task}_TTA": metrics for task, metrics in results.items()}

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        # Evaluation is a later stage than the engine: train_net.py plugs it in, as detectron2's
        # tools/train_net.py does.
        raise NotImplementedError(
            "Trainer.build_evaluator: subclass Trainer with one (train_net.py uses "
            "segkit.evaluation.build.build_evaluator), or set DATASETS.TEST to ()."
        )

    # ---- hooks --------------------------------------------------------------------------------
    def build_writers(self):
        """DefaultTrainer's writers, with :class:`MetricPrinter` for its console printer."""
        return [MetricPrinter(self.max_iter) if type(w) is CommonMetricPrinter else w for w in super().build_writers()]

    def build_hooks(self):
        cfg = self.cfg
        main = comm.is_main_process()
        eval_period = cfg.TEST.EVAL_PERIOD if cfg.DATASETS.TEST else 0
        val_period = cfg.TEST.VAL_LOSS_PERIOD or eval_period

        def test_and_save_results():
            # Inference draws no random numbers today; fork_rng keeps it that way for resume.
            with torch.random.fork_rng(devices=[]):
                results = self.test(self.cfg, self.model)
            self._store_score_thresholds(take_score_thresholds(results), evaluated=bool(results))
            self._last_eval_results = results
            return results

        ret = [hooks.IterationTimer(), hooks.LRScheduler()]
        precise_bn = self.build_precise_bn(eval_period)
        if precise_bn is not None:
            ret.append(precise_bn)  # where DefaultTrainer has it: before the checkpointer and EvalHook
        if main and cfg.INPUT.AUG.PREVIEW_BATCHES > 0:
            ret.append(self.build_batch_pictures(cfg))
        if main:
            ret.append(ProgressBar(self.max_iter, images_per_epoch=len(self._batch_sampler.stream.dataset_dicts),
                                   images_per_iter=cfg.SOLVER.IMS_PER_BATCH))
            ret.append(PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD,
                                            max_to_keep=cfg.SOLVER.CHECKPOINTS_TO_KEEP or None))
        share = self.build_eval_share(cfg)
        if val_period > 0 and cfg.DATASETS.TEST:
            ret.append(ValidationLoss(cfg, val_period, cfg.DATASETS.TEST, cfg.TEST.VAL_LOSS_MAX_IMAGES, share=share))
        ret.append(hooks.EvalHook(eval_period, share.gate("evaluation", test_and_save_results)))
        if cfg.TEST.AUG.ENABLED and cfg.DATASETS.TEST:
            # As detectron2's tools/train_net.py: once, after the last iteration (period 0).
            ret.append(hooks.EvalHook(0, lambda: self.test_with_TTA(self.cfg, self.model)))
        if main and eval_period > 0:
            # After EvalHook: it reads the metric EvalHook just stored.
            ret.append(BestCheckpointer(eval_period, self.checkpointer, cfg.SOLVER.BEST_METRIC, "max"))
        ret.append(share)  # after EvalHook: its summary counts the final evaluation
        if main:
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=20))
            ret.append(LossCurvePlot(cfg.OUTPUT_DIR, period=20))
        if eval_period > 0 and cfg.SOLVER.EARLY_STOP_PATIENCE > 0:
            ret.append(EarlyStopping(cfg.SOLVER.BEST_METRIC, cfg.SOLVER.EARLY_STOP_PATIENCE, eval_period))
        if save_signal() is not None:
            ret.append(SaveOnSignal())  # after the iteration's evaluation and checkpoint, before TimeBudget
        if cfg.SOLVER.TIME_BUDGET > 0:
            # last: it times the other hooks too
            ret.append(TimeBudget(cfg.SOLVER.TIME_BUDGET, cfg, keep=self.user_keys))
        return ret

    @staticmethod
    def build_eval_share(cfg):
        """EvalShare for this run: with TEST.TILE_SIZE > 0 periodic evaluations are kept within
        TEST.TILE_EVAL_MAX_SHARE of the wall time (a budget run, SOLVER.TIME_BUDGET, plans its own
        evaluations); otherwise it only reports what evaluation cost."""
        tiled = cfg.TEST.TILE_SIZE > 0 and not is_semantic(cfg)
        share = cfg.TEST.TILE_EVAL_MAX_SHARE if tiled and cfg.SOLVER.TIME_BUDGET <= 0 else 0.0
        hook = EvalShare(share)
        if share > 0 and cfg.DATASETS.TEST:
            dicts = get_detection_dataset_dicts(cfg.DATASETS.TEST, filter_empty=False)
            hook.count_inputs("evaluation", sum(
                len(tile_windows(d["height"], d["width"], cfg.TEST.TILE_SIZE, cfg.TEST.TILE_OVERLAP)) for d in dicts))
        return hook

    def build_precise_bn(self, eval_period):
        """detectron2's PreciseBN hook as DefaultTrainer.build_hooks makes it, for TEST.PRECISE_BN:
        the batch norm statistics recomputed on NUM_ITER training batches before each evaluation
        and at the end, ahead of the checkpointer so that checkpoints hold them. Made here rather
        than taken from super().build_hooks(), which also builds the checkpointer, EvalHook and
        writers we build our own way (its writers open the run's metrics files).

        None when off, or when no batch norm trains: FrozenBN (the ResNets' default, EfficientNet-Lite
        with FREEZE_BN) and GN keep no running statistics that training moves, so there is nothing to
        recompute; the U-Net encoders' batch norm trains, at small batches, where it helps. When the
        key is set for such a model, one warning says it does nothing (detectron2 says nothing)."""
        cfg = self.cfg
        if not cfg.TEST.PRECISE_BN.ENABLED:
            return None
        if not get_bn_modules(self.model):
            if comm.is_main_process():
                logger.warning("TEST.PRECISE_BN.ENABLED does nothing for this model: its batch norm is frozen or it "
                               "has none (GN), so there are no statistics to recompute.")
            return None
        loader_cfg = cfg.clone()
        loader_cfg.defrost()
        loader_cfg.DATALOADER.NUM_WORKERS = 0  # as detectron2: no worker processes for a few batches
        # Our seeded stream (its augmentation restores the global RNGs). The forward passes may draw
        # random numbers (R-CNN's proposal sampling), but at the same iterations in every run and
        # before the checkpointer saves the RNG states, so --resume still replays the run.
        return hooks.PreciseBN(eval_period, self.model, self.build_train_loader(loader_cfg), cfg.TEST.PRECISE_BN.NUM_ITER)

    def _store_score_thresholds(self, thresholds, evaluated):
        """Later checkpoints (model_best, model_final) carry the thresholds of the model they hold
        (none when its evaluation found none: an older model's would mislead).

        The final evaluation runs after PeriodicCheckpointer wrote model_final, so model_final is
        written again with them."""
        if not evaluated or not comm.is_main_process():
            return  # only the main process gets evaluation results
        self.checkpointer.score_thresholds = thresholds
        if not thresholds:
            return
        if self.iter >= self.max_iter - 1 and os.path.isfile(os.path.join(self.cfg.OUTPUT_DIR, "model_final.pth")):
            self.checkpointer.save("model_final", iteration=self.max_iter - 1)

    # ---- state: what detectron2's checkpoints lack for a bit-identical resume ------------------
    def state_dict(self):
        ret = super().state_dict()
        ret["rng"] = rng_state()
        ret["data_seed"] = self.data_seed
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "rng" in state_dict:
            set_rng_state(state_dict["rng"])
        if "data_seed" in state_dict:
            self.data_seed = state_dict["data_seed"]
            self._batch_sampler.stream.seed = self.data_seed

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        # The data stream continues where the checkpoint left it: one batch per iteration.
        self._batch_sampler.start_batch = self.start_iter

    def _save_resumable(self, iteration):
        """The full state at ``iteration`` for --resume, through the periodic hook so that it counts
        towards SOLVER.CHECKPOINTS_TO_KEEP (main process: the only one with the hook)."""
        for h in self._hooks:
            if isinstance(h, PeriodicCheckpointer):
                h.save_resumable(iteration)

    # ---- the loop -----------------------------------------------------------------------------
    def after_step(self):
        # Before the hooks: a hook that ends training (StopTraining) does so after a completed step.
        self._last_completed_iter = self.iter
        super().after_step()

    def train(self):
        if any(isinstance(h, TimeBudget) for h in self._hooks):
            self.max_iter = LOOP_LIMIT  # detectron2's loop range is fixed at the start; TimeBudget ends it
        try:
            return super().train()
        except StopTraining:
            # Raised by a hook after this iteration's step: the weights are those of self.iter.
            self._save_resumable(self.iter)
            self.checkpointer.save("model_final", iteration=self.iter)
            return getattr(self, "_last_eval_results", None)
        except StopForRequeue:
            # Every rank stops after the same iteration (SaveOnSignal); rank 0 writes its full state.
            self._save_resumable(self.iter)
            if comm.is_main_process():
                logger.warning(f"Stopped for a requeue after iteration {self.iter}: saved "
                               f"{self.checkpointer.get_checkpoint_file()}.")
            raise TrainingStoppedForRequeue(self.iter) from None
        except KeyboardInterrupt:
            if comm.is_main_process() and self._last_completed_iter >= 0:
                self.iter = self._last_completed_iter
                self._save_resumable(self.iter)
                logger.warning(
                    f"Interrupted: saved {self.checkpointer.get_checkpoint_file()}; "
                    f"continue with the same command and --resume."
                )
            raise
        except FloatingPointError as e:
            last = self.checkpointer.get_checkpoint_file() if self.checkpointer.has_checkpoint() else None
            raise TrainingDiverged(
                f"Training stopped: the loss became NaN or infinite at iteration {self.iter} "
                f"({e}); the last good checkpoint is {last or 'none (none was saved yet)'}. "
                f"Lower SOLVER.BASE_LR or enable SOLVER.CLIP_GRADIENTS."
            ) from None


class TrainingDiverged(RuntimeError):
    pass


class TrainingStoppedForRequeue(Exception):
    """Training saved its state on the save signal and stopped (launch.py exits with
    hooks.REQUEUE_EXIT_STATUS); ``args[0]`` is the last iteration done."""
