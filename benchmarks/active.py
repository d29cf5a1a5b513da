"""Does labelling the most uncertain images first beat labelling random ones? A simulation on the
generated sample set.

    python benchmarks/active.py                          # everything (about 15 CPU minutes)
    python benchmarks/active.py --step prepare           # or one training per command:
    python benchmarks/active.py --step train --seed 0 --arm start        # the small labelled subset
    python benchmarks/active.py --step train --seed 0 --arm uncertainty  # + K ranked by the start model
    python benchmarks/active.py --step train --seed 0 --arm random       # + K at random
    python benchmarks/active.py --step report

The sample generator makes a pool (default 56 images of 256x192, 3 classes) that labelme2coco.py
splits into train (the pool a user could label) and val (kept for AP). For each seed: START images of
the pool are "labelled" at random and the mini config is trained on them; ``predict.py --rank
uncertainty`` with that model ranks the rest of the pool; two models are trained from scratch with
the same schedule, one on the start set + the top K, one on the start set + K random images; both
are evaluated (segm/bbox AP on val). Every training is train_net.py in its own process, the mini
config at 192 px with a short schedule. Prints a table, writes benchmarks/results/active.json.
"""

import argparse
import csv
import json
import os
import platform
import random
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from segkit.data.atomic import write_json  # noqa: E402  (after the repo is on the path)
from segkit.engine.hooks import read_metrics  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results", "active.json")
MINI = os.path.join(ROOT, "configs", "mask_rcnn_R_18_FPN_mini.yaml")
ARMS = ("start", "uncertainty", "random")


def train_overrides(iters):
    return ["INPUT.MIN_SIZE_TRAIN", "(176, 192, 208)", "INPUT.MAX_SIZE_TRAIN", "280",
            "INPUT.MIN_SIZE_TEST", "192", "INPUT.MAX_SIZE_TEST", "256",
            "SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", f"({int(iters * 0.8)},)",
            "SOLVER.WARMUP_ITERS", str(max(1, iters // 6)), "SOLVER.CHECKPOINT_PERIOD", str(iters),
            "TEST.EVAL_PERIOD", str(iters), "TEST.VAL_LOSS_PERIOD", str(iters),
            "DATALOADER.NUM_WORKERS", "1"]


def prepare(work, num_images):
    from segkit.data.coco_convert import convert
    from segkit.data.sample import make_instance_sample

    make_instance_sample(os.path.join(work, "labelme"), num_images=num_images, size=(256, 192), seed=1)
    result = convert(os.path.join(work, "labelme"), os.path.join(work, "pool"), val_fraction=0.25, seed=0,
                     progress=False)
    assert result.exit_code == 0, result.reason
    pool = read(os.path.join(work, "pool", "train.json"))
    print(f"pool of {len(pool['images'])} images to label from, "
          f"{len(read(os.path.join(work, 'pool', 'val.json'))['images'])} for val")


def read(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def subset(work, image_ids, data_dir):
    """A data folder training on ``image_ids`` of the pool, with the pool's val split."""
    pool = read(os.path.join(work, "pool", "train.json"))
    keep = set(image_ids)
    images_dir = os.path.abspath(os.path.join(work, "pool", "images"))
    coco = dict(pool, images=[dict(im, file_name=os.path.join(images_dir, im["file_name"]))
                              for im in pool["images"] if im["id"] in keep],
                annotations=[a for a in pool["annotations"] if a["image_id"] in keep])
    write_json(os.path.join(data_dir, "train.json"), coco)
    val = read(os.path.join(work, "pool", "val.json"))
    val["images"] = [dict(im, file_name=os.path.join(images_dir, im["file_name"])) for im in val["images"]]
    write_json(os.path.join(data_dir, "val.json"), val)


def run_dir(work, seed, arm):
    return os.path.join(work, f"seed{seed}", arm)


def chosen_images(work, seed, arm, start, k):
    pool = read(os.path.join(work, "pool", "train.json"))
    ids = sorted(im["id"] for im in pool["images"])
    rng = random.Random(seed)
    labelled = rng.sample(ids, start)
    rest = [i for i in ids if i not in set(labelled)]
    if arm == "start":
        return labelled
    if arm == "random":
        return labelled + random.Random(seed + 1000).sample(rest, k)
    # uncertainty: rank the rest with the start model, as a user would (predict.py --rank uncertainty)
    file_of = {im["id"]: im["file_name"] for im in pool["images"]}
    images = os.path.join(work, "pool", "images")
    unlabelled = os.path.join(run_dir(work, seed, arm), "unlabelled")
    os.makedirs(unlabelled, exist_ok=True)
    for i in rest:
        link = os.path.join(unlabelled, file_of[i])
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(os.path.join(images, file_of[i])), link)
    out = os.path.join(run_dir(work, seed, arm), "ranking")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "predict.py"), "--input", unlabelled,
                           "--rank", "uncertainty", "--top", "0", "--output", out, "--quiet",
                           "--weights", os.path.join(run_dir(work, seed, "start"), "model_final.pth")],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    with open(os.path.join(out, "ranking_uncertainty.csv"), newline="") as f:
        ranked = [os.path.basename(r["file"]) for r in csv.DictReader(f)]
    id_of = {v: k for k, v in file_of.items()}
    return labelled + [id_of[name] for name in ranked[:k]]


def train(work, seed, arm, args):
    out = run_dir(work, seed, arm)
    data_dir = os.path.join(out, "data")
    ids = chosen_images(work, seed, arm, args.start, args.k)
    subset(work, ids, data_dir)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", args.config_file,
                           "DATASETS.DATA_DIR", data_dir, "OUTPUT_DIR", out, "SEED", str(seed),
                           *train_overrides(args.iters)],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    ap = result_of(work, seed, arm)
    write_json(os.path.join(out, "chosen.json"), {"image_ids": ids})
    print(f"seed {seed} {arm}: {len(ids)} labelled images, segm AP {ap['segm_AP']:.1f}, bbox AP {ap['bbox_AP']:.1f}")


def result_of(work, seed, arm):
    rows = [r for r in read_metrics(os.path.join(run_dir(work, seed, arm), "metrics.json")) if "segm/AP" in r]
    if not rows:
        return None
    last = rows[-1]
    return {"segm_AP": last["segm/AP"], "bbox_AP": last["bbox/AP"], "segm_AP50": last["segm/AP50"]}


def report(work, args):
    per_seed, table = {}, {arm: [] for arm in ARMS}
    for seed in args.seeds:
        per_seed[seed] = {arm: result_of(work, seed, arm) for arm in ARMS}
        for arm in ARMS:
            if per_seed[seed][arm]:
                table[arm].append(per_seed[seed][arm])
    print(f"\nstart {args.start} labelled images, + K = {args.k}; mini config, {args.iters} iterations, "
          f"192 px; AP on {len(read(os.path.join(work, 'pool', 'val.json'))['images'])} val images\n")
    print("| seed | start segm AP | + K uncertain | + K random |")
    print("|---|---|---|---|")
    for seed, r in per_seed.items():
        cells = [f"{r[a]['segm_AP']:.1f}" if r[a] else "-" for a in ARMS]
        print(f"| {seed} | " + " | ".join(cells) + " |")
    summary = {}
    for arm in ARMS:
        vals = [r["segm_AP"] for r in table[arm]]
        box = [r["bbox_AP"] for r in table[arm]]
        if vals:
            summary[arm] = {"segm_AP_mean": statistics.mean(vals), "segm_AP_sd": statistics.pstdev(vals),
                            "bbox_AP_mean": statistics.mean(box), "runs": len(vals)}
    print("| mean (sd) | " + " | ".join(
        f"{summary[a]['segm_AP_mean']:.1f} ({summary[a]['segm_AP_sd']:.1f})" if a in summary else "-" for a in ARMS) + " |")
    wins = sum(1 for r in per_seed.values() if r["uncertainty"] and r["random"]
               and r["uncertainty"]["segm_AP"] > r["random"]["segm_AP"])
    both = sum(1 for r in per_seed.values() if r["uncertainty"] and r["random"])
    print(f"\nuncertainty beat random in {wins} of {both} seed(s)")
    write_json(RESULTS, {"start": args.start, "k": args.k, "iters": args.iters, "seeds": per_seed,
                         "summary": summary, "uncertainty_wins": wins, "compared_seeds": both,
                         "pool_images": len(read(os.path.join(work, "pool", "train.json"))["images"]),
                         "python": platform.python_version(), "cpu_count": os.cpu_count()})
    print(f"wrote {RESULTS}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--step", default="all", choices=["all", "prepare", "train", "report"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arm", choices=ARMS, default="start")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--images", type=int, default=56, help="pool + val images generated")
    ap.add_argument("--start", type=int, default=8, help="images labelled at the start")
    ap.add_argument("--k", type=int, default=8, help="images added")
    ap.add_argument("--iters", type=int, default=150)
    ap.add_argument("--config-file", default=MINI)
    ap.add_argument("--work", default=os.path.join(ROOT, "output", "bench_active"))
    args = ap.parse_args()
    if args.step in ("all", "prepare"):
        prepare(args.work, args.images)
    if args.step == "train":
        train(args.work, args.seed, args.arm, args)
    if args.step == "all":
        for seed in args.seeds:
            for arm in ARMS:
                train(args.work, seed, arm, args)
    if args.step in ("all", "report"):
        report(args.work, args)


if __name__ == "__main__":
    main()
