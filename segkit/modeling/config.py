"""Our additions to detectron2's config. Every key has a default here, so a typo in a YAML file or a
``KEY VALUE`` override is still an error that names the key (detectron2's CfgNode merge rule)."""

import os

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from segkit.modeling.efficientnet_lite import add_efficientnet_lite_config


def add_segkit_config(cfg):
    # -1 means "take it from the registered training dataset" (resolved in engine.setup).
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = -1
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = -1

    # Folder written by labelme2coco.py; its splits are registered as mydata_<split>.
    cfg.DATASETS.DATA_DIR = "data"

    cfg.INPUT.AUG = CN()
    # detectron2 RandomBrightness / RandomContrast ranges; an empty tuple turns one off.
    cfg.INPUT.AUG.BRIGHTNESS = (0.9, 1.1)
    cfg.INPUT.AUG.CONTRAST = (0.9, 1.1)
    # Photometric albumentations transforms, wrapped as a detectron2 Augmentation.
    cfg.INPUT.AUG.ALBUMENTATIONS = CN()
    cfg.INPUT.AUG.ALBUMENTATIONS.ENABLED = False
    cfg.INPUT.AUG.ALBUMENTATIONS.PROB = 0.5
    cfg.INPUT.AUG.ALBUMENTATIONS.JPEG_QUALITY = (60, 100)
    cfg.INPUT.AUG.ALBUMENTATIONS.NOISE_STD = (0.01, 0.05)  # fraction of the intensity range
    cfg.INPUT.AUG.ALBUMENTATIONS.COLOR_JITTER = 0.2
    # With INPUT.CROP: the share of crops placed to hold an instance (a random one, its box
    # whole when it fits), the rest uniform as detectron2's RandomCrop. On a few objects in a
    # large image, uniform crops are mostly background; 0 keeps detectron2's crop.
    cfg.INPUT.CROP.OBJECT_PROB = 0.0
    # Simple Copy-Paste (data/copy_paste.py): objects of another training image pasted on.
    cfg.INPUT.COPY_PASTE = CN()
    # Share of training images that get a paste; 0 (off) until it wins on measured sets
    # (benchmarks/copy_paste.py, docs/training.md).
    cfg.INPUT.COPY_PASTE.PROB = 0.0
    # Most instances pasted from one source image (a random 1..this many of its instances, as the
    # paper's random subset): bounds how much of the target a paste can hide.
    cfg.INPUT.COPY_PASTE.MAX_OBJECTS = 10
    # An instance left with less than this fraction of its area visible (under pasted objects, or
    # cut by the image edge when pasted) is dropped: a sliver is no longer an example of its class.
    cfg.INPUT.COPY_PASTE.MIN_VISIBLE = 0.1
    # OUTPUT_DIR/train_batch_<i>.png at the start of training: this many batches after
    # augmentation with their ground truth drawn; 0 turns it off.
    cfg.INPUT.AUG.PREVIEW_BATCHES = 3

    cfg.SOLVER.OPTIMIZER = "SGD"  # "SGD", "ADAM" or "ADAMW"
    # Metric that picks model_best.pth, e.g. "segm/AP" (Mask R-CNN) or "sem_seg/mIoU" (U-Net).
    cfg.SOLVER.BEST_METRIC = "segm/AP"
    # Stop after this many evaluations without improvement of BEST_METRIC; 0 turns it off.
    cfg.SOLVER.EARLY_STOP_PATIENCE = 0
    # Training length in epochs (passes over the training images); > 0 sets MAX_ITER, STEPS,
    # WARMUP_ITERS, EVAL_PERIOD and CHECKPOINT_PERIOD from it (engine/schedule.py), so the schedule
    # scales with the dataset. 0 keeps MAX_ITER. SOLVER.MAX_ITER on the command line wins.
    cfg.SOLVER.EPOCHS = 0
    # Fewest iterations SOLVER.EPOCHS may give: a few images need more passes than many (measured
    # on real photos, docs "How long to train"); 0 for no floor.
    cfg.SOLVER.MIN_ITER = 0
    # Wall-clock budget in seconds for the whole run (train_net.py --time-budget 10m); > 0 lets the
    # trainer choose MAX_ITER after a measured warm-up (engine/budget.py). 0 turns it off.
    cfg.SOLVER.TIME_BUDGET = 0
    # Periodic checkpoints (model_<iter>.pth, the full state --resume needs) kept on disk, the newest;
    # 0 keeps all. 1 is Ultralytics' last.pt: with model_best.pth and model_final.pth (weights only)
    # a run keeps "last" and "best" instead of filling the disk.
    cfg.SOLVER.CHECKPOINTS_TO_KEEP = 1

    # Validation loss on DATASETS.TEST every N iterations; 0 means "with TEST.EVAL_PERIOD".
    cfg.TEST.VAL_LOSS_PERIOD = 0
    # Inputs the validation loss scores at most: val images, or with TILE_SIZE > 0 tiles of them.
    cfg.TEST.VAL_LOSS_MAX_IMAGES = 50
    cfg.TEST.PR_CURVES = True
    # Sliced inference (modeling/tiling.py) for large images with small objects: > 0 cuts each test
    # image into TILE_SIZE x TILE_SIZE tiles run at native resolution (no resize), so evaluation
    # measures what predict.py --tile does. 0: whole images at INPUT.MIN/MAX_SIZE_TEST.
    cfg.TEST.TILE_SIZE = 0
    # Fraction of a tile shared with its neighbour: an object narrower than the overlap lies
    # whole in some tile.
    cfg.TEST.TILE_OVERLAP = 0.2
    # Tiles per forward pass: bounds memory by the tile, not by the image.
    cfg.TEST.TILE_BATCH = 4
    # One extra whole-image pass at INPUT.MIN/MAX_SIZE_TEST, for objects larger than a tile
    # (SAHI's perform_standard_pred).
    cfg.TEST.TILE_FULL_PASS = False
    # Detections of one class from different tiles are linked into one object when, where both
    # tiles looked, their masks share at least this fraction of the smaller mask (SAHI's IOS).
    cfg.TEST.TILE_MERGE_IOS = 0.5
    # Instances kept per image after the merge (the best first); DETECTIONS_PER_IMAGE limits each
    # tile. High, as a large image holds hundreds of objects; COCO's maxDets follows it when tiling.
    cfg.TEST.TILE_DETECTIONS_PER_IMAGE = 10000
    # With TILE_SIZE > 0, periodic evaluations (and validation losses) are skipped while they would
    # take more than this share of the training's wall time (engine/hooks.py EvalShare; tiled
    # evaluation of long val images took most of a run); the final one always runs. 0.0: every period.
    cfg.TEST.TILE_EVAL_MAX_SHARE = 0.2

    # U-Net semantic segmentation (modeling/unet.py), segmentation-models-pytorch encoder.
    cfg.MODEL.UNET = CN()
    cfg.MODEL.UNET.ENCODER = "resnet34"
    cfg.MODEL.UNET.ENCODER_DEPTH = 5
    cfg.MODEL.UNET.ENCODER_WEIGHTS = "imagenet"  # "" for none
    cfg.MODEL.UNET.DECODER_CHANNELS = (256, 128, 64, 32, 16)
    cfg.MODEL.UNET.LOSSES = ("ce",)  # any of "ce", "dice"
    cfg.MODEL.UNET.DICE_WEIGHT = 1.0
    cfg.MODEL.UNET.SIZE_DIVISIBILITY = 32
    return add_efficientnet_lite_config(cfg)


# Meta-architectures whose output is a class map (``sem_seg``), not instances.
SEMANTIC_ARCHITECTURES = ("UNet", "SemanticSegmentor")


def is_semantic(cfg):
    """Whether ``cfg``'s model does semantic segmentation (stuff classes, a class map)."""
    return cfg.MODEL.META_ARCHITECTURE in SEMANTIC_ARCHITECTURES


def check_test_augmentation(cfg):
    """One-line refusal of TEST.AUG.ENABLED where detectron2's GeneralizedRCNNWithTTA cannot run:
    it averages Mask R-CNN's boxes and masks over whole resized images."""
    if not cfg.TEST.AUG.ENABLED:
        return
    if is_semantic(cfg):
        raise ValueError(f"TEST.AUG.ENABLED (--tta): test-time augmentation is for Mask R-CNN, not "
                         f"{cfg.MODEL.META_ARCHITECTURE}; set TEST.AUG.ENABLED False")
    if cfg.TEST.TILE_SIZE > 0:
        raise ValueError("TEST.AUG.ENABLED (--tta) and TEST.TILE_SIZE (--tile) do not combine: augmentation "
                         "resizes whole images, tiles keep native resolution; choose one")


def get_segkit_cfg():
    """detectron2's defaults plus ours: the starting point of every config in this project."""
    return add_segkit_config(get_cfg())


def resolve_config_file(path):
    """``path`` itself when it exists, else the config of that name shipped with segkit: the
    installed package carries ``configs/`` as ``segkit/configs/`` (pyproject.toml), a checkout has it
    beside the package. So ``--config-file configs/mask_rcnn_lite0_FPN.yaml`` works from any folder."""
    if not path or os.path.isfile(path):
        return path
    name = os.path.basename(path)
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for folder in (os.path.join(package, "configs"), os.path.join(os.path.dirname(package), "configs")):
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"{path}: no such config file (nor one of that name among segkit's configs).")
