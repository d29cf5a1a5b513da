"""Cross-validated models of the suspect finder: the folds of a split, and one model trained on
the other folds for each (train_net's setup and our Trainer), reused when nothing changed."""

import json
import os
import random
import sys

from segkit.data.atomic import write_json
from segkit.data.run_layout import MODEL_FINAL
from segkit.loop.judge import image_path

DEFAULT_FOLDS = 3


def make_folds(image_ids, k, seed=0):
    """K disjoint, nearly equal folds of ``image_ids`` (shuffled with ``seed``)."""
    ids = sorted(image_ids)
    random.Random(seed).shuffle(ids)
    return [sorted(ids[f::k]) for f in range(k)]


def fold_coco(coco, keep_ids, data_dir):
    """COCO dict of the images in ``keep_ids``; file names made absolute so the fold's data folder
    needs no copy of the images."""
    keep = set(keep_ids)
    images = []
    for im in coco["images"]:
        if im["id"] in keep:
            im = dict(im, file_name=os.path.abspath(image_path(data_dir, im)))
            images.append(im)
    return {"info": coco.get("info", {}), "licenses": [], "images": images,
            "annotations": [a for a in coco["annotations"] if a["image_id"] in keep],
            "categories": coco["categories"]}


def fold_schedule(cfg, iters):
    """KEY VALUE overrides that shrink the config's schedule to ``iters`` iterations."""
    scale = iters / max(cfg.SOLVER.MAX_ITER, 1)
    steps = tuple(sorted({k for k in (max(1, int(round(s * scale))) for s in cfg.SOLVER.STEPS) if k < iters}))
    steps = steps or (iters + 1,)  # no LR step (detectron2 drops steps beyond MAX_ITER)
    return ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", str(steps),
            "SOLVER.WARMUP_ITERS", str(min(cfg.SOLVER.WARMUP_ITERS, max(1, iters // 5))),
            "SOLVER.CHECKPOINT_PERIOD", str(iters + 1), "TEST.EVAL_PERIOD", "0",
            "TEST.VAL_LOSS_PERIOD", "0"]


def default_iters(config_file, opts=(), num_images=1):
    """The schedule train_net gives ``num_images`` training images (SOLVER.EPOCHS with its
    MIN_ITER floor, else SOLVER.MAX_ITER): a fold model judges labels only as well as it has
    learnt the rest, and on real photos longer folds ranked planted errors higher (docs/data-loop.md)."""
    from segkit.engine.schedule import apply_epochs
    from segkit.modeling.config import get_segkit_cfg

    cfg = get_segkit_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    apply_epochs(cfg, list(opts), num_images=max(1, num_images))
    return max(1, cfg.SOLVER.MAX_ITER)


def train_fold(config_file, fold_dir, coco_subset, iters, opts=(), num_gpus=1, reuse_only=False):
    """Train one fold model with train_net's setup and our Trainer; returns model_final.pth.

    A fold whose model exists and was trained on the same images with the same settings is
    reused, so a long run can be split into several commands. ``reuse_only``: stop instead of
    training when there is no such model."""
    from detectron2.engine import launch

    from segkit.engine.launch import build_argument_parser, main
    from segkit.engine.trainer import Trainer
    from segkit.modeling.config import get_segkit_cfg

    data_dir = os.path.join(fold_dir, "data")
    out_dir = os.path.join(fold_dir, "model")
    model = os.path.join(out_dir, MODEL_FINAL)
    recipe = {"images": [im["file_name"] for im in coco_subset["images"]], "iters": iters,
              "config_file": os.path.abspath(config_file), "opts": list(opts)}
    recipe_file = os.path.join(fold_dir, "recipe.json")
    if os.path.isfile(model) and os.path.isfile(recipe_file):
        with open(recipe_file, encoding="utf-8") as f:
            if json.load(f) == recipe:
                print(f"{fold_dir}: reusing its model (same images and settings)", file=sys.stderr)
                return model
    if reuse_only:
        raise SystemExit(f"{fold_dir}: no model trained on these images with these settings "
                         f"(config {recipe['config_file']}, {iters} iterations, opts {recipe['opts']}); "
                         "run without --reuse-folds to train it.")
    write_json(os.path.join(data_dir, "train.json"), coco_subset)
    cfg = get_segkit_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    # --exist-ok: a fold retrained with other settings replaces its model (the recipe above decides).
    argv = ["--config-file", config_file, "--num-gpus", str(num_gpus), "--exist-ok", *opts,
            "DATASETS.DATA_DIR", data_dir, "DATASETS.TRAIN", "('mydata_train',)", "DATASETS.TEST", "()",
            "OUTPUT_DIR", out_dir, *fold_schedule(cfg, iters)]
    args = build_argument_parser().parse_args(argv)
    launch(main, num_gpus, dist_url=args.dist_url, args=(args, Trainer))
    write_json(recipe_file, recipe)
    return model
