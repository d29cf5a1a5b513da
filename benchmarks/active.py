"""What to label next: does labelling the images ``predict.py --rank ...`` picks beat labelling
random ones? A pool-based simulation on real photos with the pretrained Lite0 config.

    python benchmarks/active.py                       # controllers, 3 seeds, every arm (2-3 CPU hours)
    python benchmarks/active.py --arms uncertainty random   # some arms only
    python benchmarks/active.py --seeds 0             # one seed; seeds can run as parallel processes
    python benchmarks/active.py --table               # only print the table and plot of stored results

The pool is ../shared/datasets/controllers' 81 training frames (3 classes; a user's unlabelled
folder), val its 11 test frames (recorded later in the video). For each seed: ``--start`` pool
images are "labelled" at random and the Lite0 config is trained on them; then for ``--rounds``
rounds each arm adds ``--k`` images and retrains from the ImageNet weights with the same schedule:

- ``uncertainty``: the arm's previous model ranks the rest of the pool with
  ``predict.py --rank uncertainty`` (as a user would) and its top K are labelled;
- ``diversity``: the same with ``--rank diversity --labelled`` (core-set: k-centre greedy on the
  previous model's backbone features, away from what is labelled);
- ``uncertainty-diversity``: ``--rank uncertainty-diversity --labelled`` (both multiplied);
- ``random``: K images of the rest at random.

A model trained on the whole pool gives the full-set AP; "labels needed" is the number of labelled
images at which an arm first reaches 90% of it. Every training is one ``train_net.py`` process
(``--iters`` iterations, LR drop at 80%). Prints a table, writes benchmarks/results/active.json and
active.png.
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
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from schedule import controllers_data  # noqa: E402  (benchmarks/ is the script's folder)

from segkit.data.atomic import atomic_path, write_json  # noqa: E402  (after the repo is on the path)
from segkit.engine.hooks import read_metrics  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results", "active.json")
PLOT = os.path.join(ROOT, "benchmarks", "results", "active.png")
LITE0 = os.path.join(ROOT, "configs", "mask_rcnn_lite0_FPN.yaml")
ARMS = ("uncertainty", "random", "diversity", "uncertainty-diversity")
COLORS = {"uncertainty": "tab:red", "random": "tab:gray", "diversity": "tab:blue", "uncertainty-diversity": "tab:purple"}
TARGET = 0.9  # share of the full-set AP


def read(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def subset(pool_dir, image_ids, data_dir):
    """A data folder training on ``image_ids`` of the pool, with the pool's val split."""
    os.makedirs(data_dir, exist_ok=True)
    link = os.path.join(data_dir, "images")
    if not os.path.exists(link):
        os.symlink(os.path.abspath(os.path.join(pool_dir, "images")), link)
    pool = read(os.path.join(pool_dir, "train.json"))
    keep = set(image_ids)
    write_json(os.path.join(data_dir, "train.json"),
               dict(pool, images=[im for im in pool["images"] if im["id"] in keep],
                    annotations=[a for a in pool["annotations"] if a["image_id"] in keep]))
    write_json(os.path.join(data_dir, "val.json"), read(os.path.join(pool_dir, "val.json")))


PROGRESS = {"done": 0, "total": 0, "start": time.monotonic()}


def train(pool_dir, ids, out, seed, args):
    """segm/bbox AP on val of the config trained on ``ids``; a finished run is read, not repeated."""
    rows = [r for r in read_metrics(os.path.join(out, "metrics.json")) if "segm/AP" in r]
    if not rows or not os.path.isfile(os.path.join(out, "model_final.pth")):
        p = PROGRESS
        eta = (time.monotonic() - p["start"]) / p["done"] * (p["total"] - p["done"]) / 60 if p["done"] else None
        print(f"  [{p['done'] + 1}/{p['total']}] training on {len(ids)} images"
              + (f", ETA {eta:.0f} min" if eta is not None else ""), flush=True)
        subset(pool_dir, ids, os.path.join(out, "data"))
        it = args.iters
        proc = subprocess.run(
            [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", args.config_file,
             "--exist-ok", "DATASETS.DATA_DIR", os.path.join(out, "data"), "OUTPUT_DIR", out, "SEED", str(seed),
             "SOLVER.MAX_ITER", str(it), "SOLVER.STEPS", f"({int(it * 0.8)},)", "TEST.EVAL_PERIOD", str(it),
             "SOLVER.CHECKPOINT_PERIOD", str(10 * it), "INPUT.AUG.PREVIEW_BATCHES", "0",
             "TEST.PR_CURVES", "False", "TEST.VAL_LOSS_PERIOD", str(10 * it)],
            cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(proc.stderr[-3000:])
        rows = [r for r in read_metrics(os.path.join(out, "metrics.json")) if "segm/AP" in r]
        PROGRESS["done"] += 1
    else:
        PROGRESS["total"] -= 1
    return {"images": len(ids), "segm_AP": rows[-1]["segm/AP"], "bbox_AP": rows[-1]["bbox/AP"]}


def rank_by(method, pool_dir, rest, weights, labelled_json, work):
    """``rest`` (pool image ids) in the order ``predict.py --rank method`` picks them; the diversity
    methods keep away from the images of ``labelled_json``."""
    pool = read(os.path.join(pool_dir, "train.json"))
    file_of = {im["id"]: im["file_name"] for im in pool["images"]}
    unlabelled = os.path.join(work, "unlabelled")
    os.makedirs(unlabelled, exist_ok=True)
    for name in os.listdir(unlabelled):
        os.remove(os.path.join(unlabelled, name))
    for i in rest:  # flat names: frames of train/ and test/ share numbers
        os.symlink(os.path.abspath(os.path.join(pool_dir, "images", file_of[i])),
                   os.path.join(unlabelled, f"{i}_{os.path.basename(file_of[i])}"))
    out = os.path.join(work, "ranking")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "predict.py"), "--input", unlabelled,
                           "--rank", method, "--top", "0", "--output", out, "--quiet", "--weights", weights]
                          + (["--labelled", labelled_json] if "diversity" in method else []),
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    with open(os.path.join(out, f"ranking_{method}.csv"), newline="") as f:
        return [int(os.path.basename(r["file"]).split("_", 1)[0]) for r in csv.DictReader(f)]


def run_seed(pool_dir, seed, args, stored, save):
    key = f"seed{seed}"
    run = stored.setdefault(key, {"seed": seed, "iters": args.iters, "k": args.k, "start": args.start, "curves": {}})
    work = os.path.join(args.work, key)
    ids = sorted(im["id"] for im in read(os.path.join(pool_dir, "train.json"))["images"])
    start = random.Random(seed).sample(ids, args.start)
    if "full" not in run:
        print(f"  seed {seed}: the whole pool ({len(ids)} images)", flush=True)
        run["full"] = train(pool_dir, ids, os.path.join(work, "full"), seed, args)
        save()
    first = train(pool_dir, start, os.path.join(work, "round0"), seed, args)
    for arm in args.arms:
        curve = run["curves"].setdefault(arm, [dict(first, round=0)])
        labelled = list(start)
        for entry in curve[1:]:
            labelled += entry["added"]
        for r in range(len(curve), args.rounds + 1):
            rest = [i for i in ids if i not in set(labelled)]
            if arm == "random":
                added = random.Random(seed * 100 + r).sample(rest, args.k)
            else:
                prev = os.path.join(work, "round0" if r == 1 else f"{arm}_round{r - 1}")
                added = rank_by(arm, pool_dir, rest, os.path.join(prev, "model_final.pth"),
                                os.path.join(prev, "data", "train.json"), os.path.join(work, f"{arm}_round{r}"))[:args.k]
            labelled += added
            print(f"  seed {seed} {arm} round {r}: {len(labelled)} labelled images", flush=True)
            result = train(pool_dir, labelled, os.path.join(work, f"{arm}_round{r}"), seed, args)
            curve.append(dict(result, round=r, added=added))
            print(f"    segm AP {result['segm_AP']:.1f}", flush=True)
            save()


def labels_needed(curve, full_ap):
    """Labelled images at which ``curve`` first reaches TARGET x the full-set AP, else None."""
    return next((c["images"] for c in curve if c["segm_AP"] >= TARGET * full_ap), None)


def summary(stored):
    rows = {}
    for run in stored.values():
        for arm, curve in run.get("curves", {}).items():
            for c in curve:
                rows.setdefault((arm, c["images"]), []).append(c["segm_AP"])
    return rows


def print_table(stored):
    runs = list(stored.values())
    if not runs:
        return
    rows = summary(stored)
    full = [r["full"]["segm_AP"] for r in runs if "full" in r]
    sizes = sorted({n for _, n in rows})

    def cell(values):
        text = f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"
        return text if len(values) == len(runs) else f"{text} ({len(values)} seed{'s' if len(values) > 1 else ''})"

    print(f"\nsegm AP on val against labelled images (mean ± stdev over {len(runs)} seed(s)); "
          f"the whole pool ({runs[0]['full']['images'] if 'full' in runs[0] else '?'} images): {cell(full) if full else '-'}")
    arms = [a for a in ARMS if any(a in r.get("curves", {}) for r in runs)]
    print("| labelled images | " + " | ".join(arms) + " |")
    print("|---" * (len(arms) + 1) + "|")
    for n in sizes:
        print(f"| {n} | " + " | ".join(cell(rows[(a, n)]) if (a, n) in rows else "-" for a in arms) + " |")
    for arm in arms:
        done = [r for r in runs if "full" in r and len(r["curves"].get(arm, [])) > 1]
        needed = [(r["seed"], labels_needed(r["curves"][arm], r["full"]["segm_AP"])) for r in done]
        print(f"{arm}: {TARGET:.0%} of the full-set AP reached with "
              + ", ".join(f"seed {s}: " + ("not within the rounds" if n is None else f"{n} images") for s, n in needed))
    # Paired by seed (same start, same val): the mean AP of rounds 1..R minus random's.
    for arm in arms:
        if arm == "random":
            continue
        gains = []
        for r in runs:
            mine, theirs = r["curves"].get(arm, [])[1:], r["curves"].get("random", [])[1:]
            k = min(len(mine), len(theirs))
            if k:
                gains.append(statistics.mean(c["segm_AP"] for c in mine[:k]) - statistics.mean(c["segm_AP"] for c in theirs[:k]))
        if gains:
            spread = f" ± {statistics.stdev(gains):.1f}" if len(gains) > 1 else ""
            print(f"{arm} - random, mean segm AP over the rounds, paired by seed: "
                  f"{statistics.mean(gains):+.1f}{spread} ({len(gains)} seed(s): {', '.join(f'{g:+.1f}' for g in gains)})")


def plot(stored, path):
    from matplotlib.figure import Figure

    rows = summary(stored)
    if not rows:
        return
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for arm, color in COLORS.items():
        pts = sorted((n, statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0)
                     for (a, n), v in rows.items() if a == arm)
        if pts:
            x, m, s = zip(*pts)
            ax.errorbar(x, m, yerr=s, marker="o", capsize=3, color=color, label="random picks" if arm == "random" else f"--rank {arm}")
    full = [r["full"]["segm_AP"] for r in stored.values() if "full" in r]
    if full:
        ax.axhline(statistics.mean(full), color="tab:green", ls="--", lw=1, label="whole pool labelled")
        ax.axhline(TARGET * statistics.mean(full), color="tab:green", ls=":", lw=1, label=f"{TARGET:.0%} of it")
    ax.set_xlabel("labelled images")
    ax.set_ylabel("segm AP on val")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("What to label next (Lite0, mean ± stdev over seeds)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--start", type=int, default=8, help="pool images labelled at the start (default 8, 10%%)")
    ap.add_argument("--k", type=int, default=8, help="images added per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="ways of picking (default: all)")
    ap.add_argument("--iters", type=int, default=200, help="iterations of every training")
    ap.add_argument("--config-file", default=LITE0)
    ap.add_argument("--table", action="store_true", help="only print the table and plot of stored results")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "segkit_bench_active"))
    args = ap.parse_args()
    stored = read(RESULTS).get("runs", {}) if os.path.isfile(RESULTS) else {}
    if not args.table:
        import torch

        pool_dir = controllers_data(args.work, 1, 0)
        mine = {f"seed{s}" for s in args.seeds}

        def save():
            # other seeds may have been stored meanwhile by another process of this script
            runs = read(RESULTS).get("runs", {}) if os.path.isfile(RESULTS) else {}
            runs.update({k: stored[k] for k in mine if k in stored})
            write_json(RESULTS, {"machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                             "python": platform.python_version(), "torch": torch.__version__},
                                 "config": os.path.relpath(args.config_file, ROOT), "pool": "controllers-81",
                                 "runs": runs})

        PROGRESS["total"] = len(args.seeds) * (2 + len(args.arms) * args.rounds)
        for seed in args.seeds:
            print(f"seed {seed}", flush=True)
            run_seed(pool_dir, seed, args, stored, save)
        stored = read(RESULTS)["runs"]
    print_table(stored)
    plot(stored, PLOT)
    print(f"\nresults in {RESULTS}, plot {PLOT}")


if __name__ == "__main__":
    main()
