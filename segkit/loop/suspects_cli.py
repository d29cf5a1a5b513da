"""Suspect labels: likely annotation errors, found where a model disagrees with the labels.

    python -m segkit.loop.suspects_cli data --config-file configs/mask_rcnn_lite0_FPN.yaml
    python -m segkit.loop.suspects_cli data --split val [--weights CHECKPOINT_OR_RUN]

Confidence: each model's per-class best-F1 score threshold, measured on the images it judges
against their labels (most labels are right, so the threshold is where the model agrees with them
best); ``--confidence T`` sets one for all, and with ``--weights`` a threshold stored in the
checkpoint by its evaluation is used. Each image's confident predictions are matched to its labels by
``segkit.evaluation.matching.match_image`` (greedy by score, mask IoU >= 0.5, same class first,
then another class, then a same-class box match). Four kinds of suspect come out of it, each with
a score in [0, 1] (higher = more likely an error), ranked together:

- ``missing_label``: a prediction matched to no label; score = its score x (1 - its best mask IoU
  with any label), times score / threshold below the confidence threshold (the threshold is
  calibrated against the labels, so the unlabelled objects themselves push it up: a hard cut-off
  lost a third of them on real photos); of unmatched predictions that overlap (mask IoU >= 0.5,
  any class) only the highest-scoring one is a suspect: one object, one place in the list;
- ``wrong_class``: a label matched only by a confident prediction of another class; score = that
  prediction's score - the best score of a same-class prediction on the label (IoU >= 0.5);
- ``outline``: a label matched by a confident prediction of its class whose mask differs (mask IoU
  < 0.75, or only the boxes match); score = prediction score x min(1, (1 - mask IoU) / 0.5);
- ``uncovered``: a label no confident prediction matches (spurious, or very hard); score = (1 - the
  best IoU x min(1, score / threshold) over all predictions down to score 0.05) x the model's
  recall of that class at its threshold (a miss means little from a model that misses most).

Then the labels' own evidence (:func:`label_losses`, after Schubert et al. 2023, "Identifying Label
Errors in Object Detection Datasets by Loss Inspection"): the model's ROI heads run on each label's
own box as the proposal and give p(label's class | box), the box refinement and the mask head's
mask there. A label suspect's score (wrong_class, outline, uncovered) is multiplied by sqrt(1 -
p(label's class | box)): where the model names the label's class on the label's box, the
disagreement that made it a suspect is more likely the model's mistake than the label's
(``label_probability`` in the outputs). Measured on the label loop's planted errors (3 seeds, the
fold models of weak 200-iteration Lite0 models), this raised the top-N precision from 64 +- 9% to
68 +- 5% with the same top-2N share; the paper's summed cls + box + mask loss as a ranking of its
own, a wrong_class suspect from p(other class) > p(label's class), or an outline suspect from the
mask head's IoU on the label's box did not help (benchmarks/suspects.py ``--step rejudge``).

Suspects scoring under 0.1 are left out.

A model judges badly the images it was trained on (it has learned their labels, errors included),
so for the train split (and trainval) ``--folds K`` (default 3) trains K models with the same
config, each on K-1 folds of the split for ``--iters`` (default: the schedule train_net gives
that many images, SOLVER.EPOCHS with its MIN_ITER floor; LR steps scaled along), through
train_net's own setup and Trainer, and judges each image with the model that did not see it - the
cross-validation label-error finders use. A fold model trained on the same images with the same
settings is reused; ``--reuse-folds`` judges again with the fold models an earlier run left in
``<output>/folds`` and stops rather than train. For the val split, ``--weights`` (default: the
latest run's best checkpoint) judges it directly.

Outputs in ``--output`` (default ``suspects_<split>`` beside the data folder, never inside it):
``suspects.csv``, ``suspects.json``, ``index.html`` (a static page, ranked, with pictures in
``images/``), and ``review/``: one LabelMe JSON per image with suspects - its labels as polygons,
each suspect shape carrying LabelMe ``flags`` (``suspect_<kind>``) and a ``description``, predicted
objects added for missing labels - to open in LabelMe (``labelme <output>/review``), fix, and
convert again. The data folder and the
user's LabelMe files are never written to.
"""

import argparse
import contextlib
import logging
import os
import sys

from segkit.data.run_layout import CPU_CONFIG, NoModelError, resolve_weights
from segkit.loop.folds import DEFAULT_FOLDS, default_iters, fold_coco, make_folds, train_fold
from segkit.loop.judge import (KINDS, calibrate, checkpoint_confidence, coco_labels, image_path, judge_image,
                               load_predictor, predict_image, read_split, without_masks)
from segkit.loop.label_losses import label_losses
from segkit.loop.suspect_outputs import write_outputs


# ---- the command ----------------------------------------------------------------------------------

def get_parser():
    p = argparse.ArgumentParser(
        prog="python -m segkit.loop.suspects_cli",
        description="Rank likely annotation errors of a converted data folder (see the module docstring).")
    p.add_argument("data", nargs="?", default="data", help="folder written by labelme2coco.py (default data)")
    p.add_argument("--split", default="train", help="train, val or trainval (default train)")
    p.add_argument("--config-file", default=CPU_CONFIG,
                   help="config the fold models train with (default the pretrained Lite0 Mask R-CNN)")
    p.add_argument("--folds", type=int, default=None,
                   help="cross-validation folds (default 3 for train/trainval, 0 = judge with --weights)")
    p.add_argument("--iters", type=int, default=None,
                   help="iterations per fold model (default: what train_net trains on the fold's images)")
    p.add_argument("--weights", default=None, metavar="CHECKPOINT_OR_RUN",
                   help="with --folds 0: the checkpoint, run folder or run name that judges (default: the "
                        "latest run's best checkpoint)")
    p.add_argument("--confidence", type=float, default=None,
                   help="score from which a prediction counts as confident, for every class (default: "
                        "each class's best-F1 threshold on the judged images; with --weights the "
                        "checkpoint's stored one when it has one)")
    p.add_argument("--seed", type=int, default=0, help="fold assignment seed (default 0)")
    p.add_argument("--output", default=None, help="output folder (default <data>/../suspects_<split>)")
    p.add_argument("--reuse-folds", action="store_true",
                   help="judge again with the fold models an earlier run left in <output>/folds (same "
                        "images, config, --iters and --opts); stop instead of training any")
    p.add_argument("--num-gpus", type=int, default=1, help="processes per fold training (default 1)")
    p.add_argument("--opts", default=[], nargs=argparse.REMAINDER, metavar="KEY VALUE",
                   help="config overrides for the fold models, last on the line (e.g. --opts SOLVER.IMS_PER_BATCH 4)")
    return p


def read_image_judged(predictor, coco, data_dir, image):
    """(labels, predictions, label losses) of one image, the masks as compressed RLEs: the full-size
    masks of one image at a time are all the finder holds, whatever the number and size of the
    images (a fold of a few hundred 12 MP photos held as full masks took tens of GB)."""
    path = image_path(data_dir, image)
    labels = coco_labels(coco, image)
    losses = label_losses(predictor, path, labels)
    return without_masks(labels), predict_image(predictor, path), losses


def run(args):
    from tqdm import tqdm

    from segkit.modeling.config import resolve_config_file

    args.config_file = resolve_config_file(args.config_file)
    coco = read_split(args.data, args.split)
    folds = args.folds if args.folds is not None else (0 if args.split in ("val", "test") else DEFAULT_FOLDS)
    out_dir = args.output or os.path.join(os.path.dirname(os.path.abspath(args.data)), f"suspects_{args.split}")
    if os.path.abspath(out_dir).startswith(os.path.abspath(args.data) + os.sep):
        raise SystemExit(f"--output {out_dir} is inside the data folder; choose another (inputs are never written).")
    images = coco["images"]
    if folds == 1 or folds > len(images):
        raise SystemExit(f"--folds {folds}: use 0 or 2..{len(images)} for {len(images)} image(s).")

    plan = []  # (weights, images, fold)
    if folds:
        for f, held_out in enumerate(make_folds([im["id"] for im in images], folds, args.seed)):
            train_ids = [im["id"] for im in images if im["id"] not in set(held_out)]
            plan.append((f, train_ids, [im for im in images if im["id"] in set(held_out)]))
    else:
        try:
            args.weights = resolve_weights(args.weights)
        except NoModelError as e:
            raise SystemExit(f"{e} (Or use --folds K.)")
        plan.append((None, None, images))

    judged, fold_iters = [], set()
    for fold, train_ids, held in plan:
        if fold is None:
            weights = args.weights
        else:
            iters = args.iters or default_iters(args.config_file, args.opts, len(train_ids))
            fold_iters.add(iters)
            print(f"fold {fold + 1}/{folds}: training on {len(train_ids)} image(s) for {iters} iterations, "
                  f"judging {len(held)}", file=sys.stderr)
            weights = train_fold(args.config_file, os.path.join(out_dir, "folds", f"fold{fold}"),
                                 fold_coco(coco, train_ids, args.data), iters, args.opts, args.num_gpus,
                                 reuse_only=args.reuse_folds)
        predictor = load_predictor(weights)
        seen = [read_image_judged(predictor, coco, args.data, im)
                for im in tqdm(held, desc="judging", unit="img", file=sys.stderr, dynamic_ncols=True)]
        thresholds, recall = calibrate([(lab, preds) for lab, preds, _ in seen])
        confidence = args.confidence or (checkpoint_confidence(predictor) if fold is None else None) or thresholds
        print(f"confidence: {confidence if not isinstance(confidence, dict) else ', '.join(f'{c} {t:.2f}' for c, t in sorted(confidence.items()))}; "
              f"recall there: {', '.join(f'{c} {r:.2f}' for c, r in sorted(recall.items()))}", file=sys.stderr)
        for im, (lab, preds, loss) in zip(held, seen):
            suspects = judge_image(lab, preds, confidence, recall, loss)
            # what the outputs draw stays: the labels and the suspects' predictions of images with suspects
            shown = {s["prediction_index"]: preds[s["prediction_index"]] for s in suspects
                     if s["prediction_index"] is not None}
            judged.append((im, lab if suspects else [], shown, suspects, fold))
    judged.sort(key=lambda t: t[0]["id"])
    how = f"{folds}-fold cross-validation, {'/'.join(map(str, sorted(fold_iters)))} iterations per fold" if folds else f"judged by {args.weights}"
    records = write_outputs(out_dir, args.data, coco, judged, f"Suspect labels: {args.data} {args.split} ({how})")
    counts = {k: sum(s["kind"] == k for s in records) for k in KINDS}
    print(f"{len(records)} suspect(s) in {sum(bool(t[3]) for t in judged)} of {len(judged)} image(s) "
          f"({', '.join(f'{v} {k}' for k, v in counts.items())}); ranked list {out_dir}/suspects.csv, "
          f"page {out_dir}/index.html, LabelMe review files {out_dir}/review/")
    for s in records[:10]:
        print(f"  #{s['rank']:<3} {s['score']:.2f} {s['kind']:<13} {s['file_name']} "
              f"{s['label_class'] or ''} -> {s['predicted_class'] or ''}")
    return records


def main(argv=None):
    logging.basicConfig(level=logging.WARNING)
    args = get_parser().parse_args(argv)
    with contextlib.suppress(BrokenPipeError):
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
