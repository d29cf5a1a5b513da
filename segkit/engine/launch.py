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

from segkit.data.catalog import coco_has_rle_instances, register_data_dir
from segkit.engine.budget import PROCESS_START_ENV, parse_duration, seconds_since_process_start
from segkit.engine.checkpoint import SegkitCheckpointer, WeightsUnavailableError
from segkit.engine.distributed import check_same_data_everywhere, leave_process_group
from segkit.engine.schedule import apply_epochs
from segkit.engine.trainer import HideDivergenceTraceback, Trainer, TrainingDiverged, dataset_classes
from segkit.modeling.config import get_segkit_cfg, is_semantic

logger = logging.getLogger("segkit")

DEFAULT_CONFIG = "configs/mask_rcnn_R_50_FPN_3x.yaml"


def build_argument_parser():
    parser = default_argument_parser(
        epilog="Example: python train_net.py --config-file configs/mask_rcnn_lite0_FPN.yaml "
        "--num-gpus 1 SOLVER.MAX_ITER 200"
    )
    parser.set_defaults(config_file=DEFAULT_CONFIG)
    parser.add_argument(
        "--time-budget", type=parse_duration, default=None, metavar="DURATION",
        help="wall-clock budget of the whole run, e.g. 90s, 10m, 1.5h (sets SOLVER.TIME_BUDGET); "
        "the trainer measures a short warm-up and picks MAX_ITER to end in time, evaluation included",
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


def resolve_num_classes(cfg):
    """NUM_CLASSES = -1 means: as many as the training dataset has. Train and test datasets must
    declare the same classes in the same order (the model's outputs are indices into them)."""
    semantic = is_semantic(cfg)
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    from detectron2.data import DatasetCatalog

    missing = [n for n in names if n not in DatasetCatalog.list()]
    if missing:
        raise SystemExit(
            f"Dataset {missing[0]!r} is not registered: run `python labelme2coco.py INPUT_DIR` first "
            f"(it writes {cfg.DATASETS.DATA_DIR}/train.json and val.json), or set DATASETS.DATA_DIR."
        )
    classes = dataset_classes(cfg.DATASETS.TRAIN[0], semantic)
    for n in names[1:]:
        if dataset_classes(n, semantic) != classes:
            raise SystemExit(f"Datasets {cfg.DATASETS.TRAIN[0]!r} and {n!r} declare different class lists; convert them together.")
    head = cfg.MODEL.SEM_SEG_HEAD if semantic else cfg.MODEL.ROI_HEADS
    if head.NUM_CLASSES < 0:
        head.NUM_CLASSES = len(classes)


def setup(args):
    cfg = get_segkit_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if getattr(args, "time_budget", None):
        cfg.SOLVER.TIME_BUDGET = int(math.ceil(args.time_budget))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
        if comm.is_main_process():
            print("No CUDA GPU found: training on the CPU (MODEL.DEVICE cpu).", file=sys.stderr)
    register_datasets(cfg)
    # Before anything can fail on one rank only: a rank that exits alone leaves the others waiting.
    check_same_data_everywhere(cfg.DATASETS.DATA_DIR, list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    resolve_num_classes(cfg)
    use_bitmask_if_needed(cfg)
    schedule = apply_epochs(cfg, args.opts) if not args.eval_only else None
    cfg.freeze()
    # Only rank 0 writes files: the other ranks get no log file (detectron2 would write log.txt.rankN).
    default_setup(cfg if comm.is_main_process() else _without_output(cfg), args)
    setup_logger(cfg.OUTPUT_DIR if comm.is_main_process() else None, distributed_rank=comm.get_rank(), name="segkit")
    if schedule and comm.is_main_process():
        logger.info(schedule)
    return cfg


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
    cfg = setup(args)
    if args.eval_only:
        model = trainer_class.build_model(cfg)
        SegkitCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = trainer_class.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = trainer_class(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def _main_with_clean_errors(args, trainer_class):
    # Each launched process starts here (launch spawns workers for --num-gpus > 1).
    logging.getLogger("detectron2.engine.train_loop").addFilter(HideDivergenceTraceback())
    try:
        return main(args, trainer_class)
    except (WeightsUnavailableError, TrainingDiverged) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        raise SystemExit(1)


def run(trainer_class=Trainer, argv=None):
    args = build_argument_parser().parse_args(argv)
    # The time budget counts from the start of this process (imports included); spawned DDP
    # workers inherit the environment.
    os.environ[PROCESS_START_ENV] = repr(time.time() - seconds_since_process_start())
    if args.num_gpus > 1 and not torch.cuda.is_available():
        print(f"No CUDA GPU found: running {args.num_gpus} CPU processes with the gloo backend.", file=sys.stderr)
    launch(
        _main_with_clean_errors,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args, trainer_class),
    )
