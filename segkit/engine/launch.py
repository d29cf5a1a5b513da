"""``train_net.py``'s body, in the shape of detectron2's tools/train_net.py: setup, main, launch."""

import logging
import math
import os
import sys
import time

import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from segkit.data.catalog import coco_has_rle_instances, register_coco_dataset, register_data_dir
from segkit.data.layout import SPLITS, dataset_name, image_root
from segkit.data.remote import is_remote
from segkit.data.run_layout import (
    CPU_CONFIG,
    DEFAULT_CONFIG,
    EVAL_DIR,
    NoModelError,
    new_run_dir,
    record_latest_run,
    resolve_weights,
    run_name_of,
    RUNS_ROOT,
)
from segkit.engine.budget import PROCESS_START_ENV, parse_duration, seconds_since_process_start
from segkit.engine.checkpoint import PreloadedCheckpointer, SegkitCheckpointer, WeightsUnavailableError, load_for_inference
from segkit.engine.distributed import check_same_data_everywhere, check_same_resume_everywhere, leave_process_group
from segkit.engine.schedule import apply_epochs, explicit_keys
from segkit.engine.hooks import REQUEUE_EXIT_STATUS, install_save_signal_handler
from segkit.engine.trainer import (
    HideDivergenceTraceback,
    Trainer,
    TrainingDiverged,
    TrainingStoppedForRequeue,
    dataset_classes,
)
from segkit.modeling.config import check_test_augmentation, get_segkit_cfg, is_semantic, resolve_config_file

logger = logging.getLogger("segkit")



def build_argument_parser():
    parser = default_argument_parser(
        epilog=f"Example: python train_net.py --config-file {CPU_CONFIG} "
        "--num-gpus 1 SOLVER.MAX_ITER 200"
    )
    # No default here: training falls back to DEFAULT_CONFIG, evaluation to the checkpoint's own config.
    parser.set_defaults(config_file="")
    parser.add_argument(
        "--time-budget", type=parse_duration, default=None, metavar="DURATION",
        help="wall-clock budget of the whole run, e.g. 90s, 10m, 1.5h (sets SOLVER.TIME_BUDGET); "
        "the trainer measures a short warm-up and picks MAX_ITER to end in time, evaluation included",
    )
    parser.add_argument(
        "--name", default=None,
        help=f"run folder {RUNS_ROOT}/NAME (default: the config's OUTPUT_DIR, else {RUNS_ROOT}/<config file name>)",
    )
    parser.add_argument(
        "--exist-ok", action="store_true",
        help="train into the run folder even when it holds a run (default: a new numbered folder NAME-2, NAME-3, ...)",
    )
    parser.add_argument(
        "--weights", default=None, metavar="CHECKPOINT_OR_RUN",
        help="with --eval-only: the model to evaluate, a checkpoint, run folder or run name (default: the "
        "latest run's best checkpoint; its config comes from the checkpoint); when training: the "
        "weights to start from (MODEL.WEIGHTS)",
    )
    parser.add_argument(
        "--split", default=None, metavar="SPLIT_OR_JSON",
        help=f"with --eval-only: the split of DATASETS.DATA_DIR to evaluate ({', '.join(SPLITS)}) or a COCO "
        "file (images in images/ beside it, else beside the file) (default: the config's DATASETS.TEST)",
    )
    return parser


def register_datasets(cfg):
    """Register the converted data folder (and, for the U-Net, its semantic view)."""
    if not os.path.isdir(cfg.DATASETS.DATA_DIR):
        return
    register_data_dir(cfg.DATASETS.DATA_DIR)
    if is_semantic(cfg):
        from segkit.data.semantic import register_semantic_data_dir

        register_semantic_data_dir(cfg.DATASETS.DATA_DIR)


def use_bitmask_if_needed(cfg):
    """Instances drawn as LabelMe ``mask`` shapes are RLE in COCO; detectron2's default polygon
    mask format cannot hold them."""
    if cfg.INPUT.MASK_FORMAT != "polygon":
        return
    for name in cfg.DATASETS.TRAIN:
        json_file = MetadataCatalog.get(name).get("json_file", None)
        if json_file and coco_has_rle_instances(json_file):
            cfg.INPUT.MASK_FORMAT = "bitmask"
            if comm.is_main_process():
                print(f"{json_file} has mask-shaped (RLE) instances: using INPUT.MASK_FORMAT bitmask.", file=sys.stderr)
            return


def resolve_num_classes(cfg, checkpoint_classes=None):
    """NUM_CLASSES = -1 means: as many as the training dataset has. Train and test datasets must
    declare the same classes in the same order (the model's outputs are indices into them). A
    model evaluated from its checkpoint (``checkpoint_classes``) needs only the test datasets,
    with the checkpoint's classes."""
    semantic = is_semantic(cfg)
    names = list(cfg.DATASETS.TEST) if checkpoint_classes else list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    from detectron2.data import DatasetCatalog

    missing = [n for n in names if n not in DatasetCatalog.list()]
    if missing:
        raise SystemExit(
            f"Dataset {missing[0]!r} is not registered: run `python labelme2coco.py INPUT_DIR` first "
            f"(it writes {cfg.DATASETS.DATA_DIR}/train.json and val.json), or set DATASETS.DATA_DIR."
        )
    if not names:
        return
    classes = list(checkpoint_classes) if checkpoint_classes else dataset_classes(names[0], semantic)
    reference = "the checkpoint" if checkpoint_classes else repr(names[0])
    for n in names[0 if checkpoint_classes else 1:]:
        if dataset_classes(n, semantic) != classes:
            raise SystemExit(f"{reference} and dataset {n!r} declare different class lists "
                             f"({classes} against {dataset_classes(n, semantic)}); convert them together.")
    head = cfg.MODEL.SEM_SEG_HEAD if semantic else cfg.MODEL.ROI_HEADS
    if head.NUM_CLASSES < 0:
        head.NUM_CLASSES = len(classes)


def evaluation_dataset(cfg, split):
    """The registered dataset name of ``--split``: a split of DATASETS.DATA_DIR, or a COCO file
    registered here (its images in ``images/`` beside it, else beside the file)."""
    semantic = is_semantic(cfg)
    if split in SPLITS:
        return dataset_name(split, semantic=semantic)
    if not (split.endswith(".json") and os.path.isfile(split)):
        raise SystemExit(f"--split {split}: neither a split ({', '.join(SPLITS)}) nor a COCO .json file.")
    if semantic:
        raise SystemExit(f"--split {split}: a COCO file works for instance models; evaluate a U-Net on a split of "
                         "its DATASETS.DATA_DIR.")
    folder = os.path.dirname(os.path.abspath(split))
    images = image_root(folder) if os.path.isdir(image_root(folder)) else folder
    name = "eval_" + os.path.splitext(os.path.basename(split))[0]
    register_coco_dataset(name, os.path.abspath(split), images)
    return name


def _weights_in_opts(opts):
    """MODEL.WEIGHTS given as a KEY VALUE override (detectron2's ``--eval-only MODEL.WEIGHTS path``)."""
    pairs = dict(zip(opts[0::2], opts[1::2]))
    return pairs.get("MODEL.WEIGHTS")


def evaluation_config(args):
    """(cfg, checkpoint class names, checkpoint dict) of ``--eval-only``, the evaluation written to
    the checkpoint's run. Without --config-file the model is built from the config stored in the
    checkpoint, read here once (the dict goes on to load the weights). With it, as in detectron2,
    the config file builds the model and the checkpointer alone reads MODEL.WEIGHTS, which may then
    be any checkpoint it loads: a model-zoo URL, a .pkl."""
    given = args.weights or _weights_in_opts(args.opts)
    args.config_file = resolve_config_file(args.config_file)
    if given and is_remote(given):
        if not args.config_file:
            raise SystemExit(f"{given}: a URL as weights needs --config-file (only our own checkpoints carry their config).")
        weights = given
    else:
        try:
            weights = resolve_weights(given, announce=comm.is_main_process())
        except NoModelError as e:
            raise SystemExit(str(e))
    if args.config_file:
        cfg, class_names, state = get_segkit_cfg(), None, None
        cfg.merge_from_file(args.config_file)
    else:
        loaded = load_for_inference(weights)
        # A plain detectron2 checkpoint names no classes: the test dataset's then count.
        cfg, class_names, state = loaded.cfg, (loaded.class_names if loaded.names_stored else None), loaded.state
    if not is_remote(weights):
        cfg.OUTPUT_DIR = os.path.dirname(weights) or "."
    cfg.merge_from_list(args.opts)
    cfg.MODEL.WEIGHTS = weights
    register_datasets(cfg)
    if args.split:
        cfg.DATASETS.TEST = (evaluation_dataset(cfg, args.split),)
    return cfg, class_names, state


def training_config(args):
    cfg = get_segkit_cfg()
    # default_setup logs the file's text: it gets the path that exists (a shipped config from elsewhere)
    config_file = args.config_file = resolve_config_file(args.config_file or DEFAULT_CONFIG)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(args.opts)
    if args.weights:  # a run or checkpoint to start from; URLs (imagenet://, detectron2://) as they are
        try:
            cfg.MODEL.WEIGHTS = args.weights if is_remote(args.weights) else resolve_weights(args.weights)
        except NoModelError as e:
            raise SystemExit(str(e))
    if getattr(args, "time_budget", None):
        cfg.SOLVER.TIME_BUDGET = int(math.ceil(args.time_budget))
    register_datasets(cfg)
    base = os.path.join(RUNS_ROOT, args.name) if args.name else run_name_of(cfg.OUTPUT_DIR, config_file)
    # Rank 0 decides (the other machines may not see its disk) and every rank takes its folder.
    run_dir = new_run_dir(base, resume=args.resume, exist_ok=args.exist_ok) if comm.is_main_process() else None
    cfg.OUTPUT_DIR = comm.all_gather(run_dir)[0]
    if comm.is_main_process():
        if os.path.normpath(cfg.OUTPUT_DIR) != os.path.normpath(base):
            why = "the newest run of that name" if args.resume else f"{base} holds a run already (--exist-ok reuses it)"
            print(f"Run folder {cfg.OUTPUT_DIR}: {why}.", file=sys.stderr)
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        record_latest_run(cfg.OUTPUT_DIR)
    return cfg


def setup(args):
    return _setup(args)[0]


def _setup(args):
    """(cfg, the checkpoint dict ``--eval-only`` read already, or None)."""
    if args.eval_only:
        cfg, checkpoint_classes, state = evaluation_config(args)
    else:
        cfg, checkpoint_classes, state = training_config(args), None, None
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
        if comm.is_main_process():
            print("No CUDA GPU found: training on the CPU (MODEL.DEVICE cpu).", file=sys.stderr)
    # Before anything can fail on one rank only: a rank that exits alone leaves the others waiting.
    check_same_data_everywhere(cfg.DATASETS.DATA_DIR, list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    resolve_num_classes(cfg, checkpoint_classes)
    use_bitmask_if_needed(cfg)
    schedule = apply_epochs(cfg, args.opts) if not args.eval_only else None
    check_test_augmentation(cfg)  # before training, not after it
    cfg.freeze()
    if args.eval_only:
        # The run's config.yaml and log.txt stay those of its training: the evaluation logs to eval/.
        default_setup(_without_output(cfg), args)
        setup_logger(os.path.join(cfg.OUTPUT_DIR, EVAL_DIR) if comm.is_main_process() else None,
                     distributed_rank=comm.get_rank(), name="segkit")
        return cfg, state
    # Only rank 0 writes files: the other ranks get no log file (detectron2 would write log.txt.rankN).
    default_setup(cfg if comm.is_main_process() else _without_output(cfg), args)
    setup_logger(cfg.OUTPUT_DIR if comm.is_main_process() else None, distributed_rank=comm.get_rank(), name="segkit")
    if schedule and comm.is_main_process():
        logger.info(schedule)
    return cfg, None


def _without_output(cfg):
    cfg = cfg.clone()
    cfg.defrost()
    cfg.OUTPUT_DIR = None  # default_setup and setup_logger then write no file
    cfg.freeze()
    return cfg


def main(args, trainer_class=Trainer):
    result = _train_or_evaluate(args, trainer_class)
    leave_process_group()  # only when every rank finished: after an error on one rank it would wait
    return result


def _train_or_evaluate(args, trainer_class):
    cfg, state = _setup(args)
    if args.eval_only:
        model = trainer_class.build_model(cfg)
        if state is not None:  # the checkpoint setup read for its config: not read again
            PreloadedCheckpointer(model, state).load(cfg.MODEL.WEIGHTS)
        else:
            SegkitCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = trainer_class.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:  # beside the plain evaluation, as detectron2's tools/train_net.py
            res.update(trainer_class.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = trainer_class(cfg, user_keys=explicit_keys(args.opts))
    trainer.resume_or_load(resume=args.resume)
    if args.resume:
        checkpointer = trainer.checkpointer
        check_same_resume_everywhere(trainer.start_iter,
                                     checkpointer.get_checkpoint_file() if checkpointer.has_checkpoint() else None)
    return trainer.train()


def _main_with_clean_errors(args, trainer_class):
    # Each launched process starts here (launch spawns workers for --num-gpus > 1). launch's own
    # process, when it spawns workers, keeps the Slurm wrapper's "ignore the save signal", and so do
    # the helpers it starts (multiprocessing's resource tracker), which a handler would not cover.
    install_save_signal_handler()
    logging.getLogger("detectron2.engine.train_loop").addFilter(HideDivergenceTraceback())
    try:
        return main(args, trainer_class)
    except (WeightsUnavailableError, TrainingDiverged) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        raise SystemExit(1)
    except TrainingStoppedForRequeue:
        # Every rank stopped after the same iteration and rank 0 has written its state: they leave
        # together (a gloo group alive at exit can abort the process, which would hide the status).
        leave_process_group()
        raise SystemExit(REQUEUE_EXIT_STATUS)


def run(trainer_class=Trainer, argv=None):
    args = build_argument_parser().parse_args(argv)
    # The time budget counts from the start of this process (imports included); spawned DDP
    # workers inherit the environment.
    os.environ[PROCESS_START_ENV] = repr(time.time() - seconds_since_process_start())
    if args.num_gpus > 1 and not torch.cuda.is_available():
        print(f"No CUDA GPU found: running {args.num_gpus} CPU processes with the gloo backend.", file=sys.stderr)
    from torch.multiprocessing import ProcessExitedException

    try:
        launch(
            _main_with_clean_errors,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args, trainer_class),
        )
    except ProcessExitedException as e:
        if e.exit_code == REQUEUE_EXIT_STATUS:  # the spawned workers stopped for a requeue
            raise SystemExit(REQUEUE_EXIT_STATUS) from None
        raise
