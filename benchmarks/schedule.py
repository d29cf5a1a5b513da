"""How long to train: segm AP against iterations of the pretrained Lite0 Mask R-CNN on real sets of
different sizes, mean ± spread over seeds. The measurement behind the default schedule
(``SOLVER.EPOCHS`` and ``SOLVER.MIN_ITER`` in configs/Base-mydata.yaml).

    python benchmarks/schedule.py                       # the two real sets, 3 seeds (about 40 min on 2 cores)
    python benchmarks/schedule.py --sets sample --seeds 0
    python benchmarks/schedule.py --table               # only print what benchmarks/results holds

Sets (real photos first; the sample is synthetic):
- ``controllers-81``: ../shared/datasets/controllers, the author's split by time: 81 training frames,
  the 11 later frames as val (3 classes, 640x352).
- ``controllers-20``: every 4th of those 81 frames (the seed picks the offset), same val.
- ``sample-32``: the demo's generated sample, 32 train / 8 val images.

Each run is one ``train_net.py`` process: configs/mask_rcnn_lite0_FPN.yaml, ``--max-iter`` iterations
at a constant learning rate after warm-up (no LR drop, so AP at iteration k is not shaped by where a
longer schedule would drop it: a lower bound of a k-iteration schedule with drops), COCO evaluation
on val every ``--eval-period``. Written: benchmarks/results/schedule.json, schedule.png, a table.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from budget import sample_data  # noqa: E402  (benchmarks/ is the script's folder)

from segkit.data.atomic import atomic_path, write_json  # noqa: E402  (after the repo is on the path)
from segkit.engine.hooks import read_metrics  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results", "schedule.json")
PLOT = os.path.join(ROOT, "benchmarks", "results", "schedule.png")
LITE0 = os.path.join(ROOT, "configs", "mask_rcnn_lite0_FPN.yaml")
CONTROLLERS = os.path.join(ROOT, "..", "shared", "datasets", "controllers")
SETS = ("controllers-20", "controllers-81", "sample-32")


def controllers_data(work, every, offset):
    """A data folder: the controllers' train frames (every ``every``-th from ``offset``) and its
    test frames as val, converted once with labelme2coco and split by the source folder."""
    from segkit.data.coco_convert import convert

    full = os.path.join(work, "controllers")
    if not os.path.isfile(os.path.join(full, "trainval.json")):
        if not os.path.isdir(CONTROLLERS):
            raise SystemExit(f"{CONTROLLERS}: not found (the shared real photos)")
        result = convert(CONTROLLERS, full, val_fraction=0.2, seed=0, progress=False)
        if result.exit_code:
            raise SystemExit(f"controllers conversion failed: {result.reason}")
    with open(os.path.join(full, "trainval.json"), encoding="utf-8") as f:
        coco = json.load(f)
    by_split = {"train": [], "val": []}
    for im in coco["images"]:
        by_split["val" if im["source_file"].startswith("test/") else "train"].append(im)
    train = sorted(by_split["train"], key=lambda im: int(os.path.splitext(os.path.basename(im["file_name"]))[0]))
    by_split["train"] = train[offset::every]
    out = os.path.join(work, f"controllers_every{every}_from{offset}")
    os.makedirs(out, exist_ok=True)
    if not os.path.exists(os.path.join(out, "images")):
        os.symlink(os.path.join(full, "images"), os.path.join(out, "images"))
    for split, images in by_split.items():
        ids = {im["id"] for im in images}
        write_json(os.path.join(out, f"{split}.json"), {
            **{k: v for k, v in coco.items() if k not in ("images", "annotations")},
            "images": images, "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]})
    return out


def data_for(name, seed, work):
    if name == "controllers-81":
        return controllers_data(work, 1, 0)
    if name == "controllers-20":
        return controllers_data(work, 4, seed % 4)
    if name == "sample-32":
        return sample_data(work)
    raise SystemExit(f"unknown set {name!r}; one of {', '.join(SETS)}")


def one_run(config, name, seed, data, work, max_iter, eval_period):
    out = os.path.join(work, f"run_{os.path.basename(config)}_{name}_seed{seed}")
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", config,
           "--exist-ok", "DATASETS.DATA_DIR", data, "OUTPUT_DIR", out, "SEED", str(seed),
           "SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", "()", "TEST.EVAL_PERIOD", str(eval_period),
           "SOLVER.CHECKPOINT_PERIOD", str(10 * max_iter), "INPUT.AUG.PREVIEW_BATCHES", "0",
           "TEST.PR_CURVES", "False", "TEST.VAL_LOSS_PERIOD", str(10 * max_iter)]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode:
        raise SystemExit(f"{name} seed {seed} failed:\n{proc.stderr[-3000:]}")
    rows = read_metrics(os.path.join(out, "metrics.json"))
    train_images = len(json.load(open(os.path.join(data, "train.json")))["images"])
    # EvalHook stores an evaluation at iteration N - 1 (N a multiple of the period), the final one
    # at MAX_ITER (after the loop).
    evals = {}
    for r in rows:
        if "segm/AP" in r:
            it = min(r["iteration"] + 1, max_iter)
            evals[it] = {"iteration": it, "segm_AP": r["segm/AP"], "bbox_AP": r["bbox/AP"]}
    times = [r["time"] for r in rows if "time" in r]
    return {"config": os.path.basename(config), "set": name, "seed": seed, "train_images": train_images,
            "wall_s": wall, "s_per_iter": statistics.median(times) if times else None,
            "evals": [evals[k] for k in sorted(evals)]}


def curves(runs):
    """{(config, set): [(iteration, epochs, mean AP, stdev AP, n)]} over seeds."""
    grouped = {}
    for r in runs:
        grouped.setdefault((r["config"], r["set"]), []).append(r)
    out = {}
    for key, rs in grouped.items():
        iters = sorted(set.intersection(*[{e["iteration"] for e in r["evals"]} for r in rs]))
        rows = []
        for it in iters:
            aps = [next(e["segm_AP"] for e in r["evals"] if e["iteration"] == it) for r in rs]
            n_img = statistics.mean(r["train_images"] for r in rs)
            rows.append((it, it * 2 / n_img, statistics.mean(aps), statistics.stdev(aps) if len(aps) > 1 else 0.0, len(aps)))
        out[key] = rows
    return out


def print_table(runs):
    for (config, name), rows in sorted(curves(runs).items()):
        print(f"\n{config} on {name}: segm AP on val (mean ± stdev over seeds)")
        print("| iteration | epochs | segm AP | seeds |\n|---|---|---|---|")
        for it, ep, mean, sd, n in rows:
            print(f"| {it} | {ep:.1f} | {mean:.1f} ± {sd:.1f} | {n} |")


def plot(runs, path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    ax_it, ax_ep = fig.subplots(1, 2)
    for (config, name), rows in sorted(curves(runs).items()):
        it, ep, mean, sd = ([r[i] for r in rows] for i in range(4))
        for ax, x in ((ax_it, it), (ax_ep, ep)):
            line, = ax.plot(x, mean, marker="o", label=f"{name} ({config.replace('.yaml', '')})")
            ax.fill_between(x, [m - s for m, s in zip(mean, sd)], [m + s for m, s in zip(mean, sd)],
                            color=line.get_color(), alpha=0.2)
    ax_it.set_xlabel("iterations (batch 2)")
    ax_ep.set_xlabel("epochs (passes over the training images)")
    ax_ep.set_xscale("log")
    for ax in (ax_it, ax_ep):
        ax.set_ylabel("segm AP on val")
        ax.grid(alpha=0.3)
    ax_it.legend(fontsize=8)
    fig.suptitle("Pretrained Lite0 Mask R-CNN: AP against training length (mean ± stdev over seeds)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", nargs="+", default=list(SETS[:2]), choices=SETS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--config", default=LITE0)
    p.add_argument("--max-iter", type=int, default=480)
    p.add_argument("--eval-period", type=int, default=80)
    p.add_argument("--table", action="store_true", help="only print the table and plot of stored results")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "segkit_bench_schedule"))
    args = p.parse_args()
    stored = json.load(open(RESULTS))["runs"] if os.path.isfile(RESULTS) else []
    if not args.table:
        import torch

        os.makedirs(args.work, exist_ok=True)
        os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
        todo = [(s, seed) for seed in args.seeds for s in args.sets]
        t_start = time.monotonic()
        for i, (name, seed) in enumerate(todo):
            done = time.monotonic() - t_start
            eta = f", ETA {done / i * (len(todo) - i) / 60:.0f} min" if i else ""
            print(f"[{i + 1}/{len(todo)}] {name} seed {seed}{eta}", flush=True)
            run = one_run(args.config, name, seed, data_for(name, seed, args.work), args.work,
                          args.max_iter, args.eval_period)
            aps = " ".join(f"{e['segm_AP']:.1f}" for e in run["evals"])
            print(f"    segm AP {aps} "
                  f"({run['wall_s']:.0f} s)", flush=True)
            stored = [r for r in stored if (r["config"], r["set"], r["seed"]) != (run["config"], name, seed)] + [run]
            write_json(RESULTS, {"machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                             "python": platform.python_version(), "torch": torch.__version__},
                                 "runs": stored})
    print_table(stored)
    if stored:
        plot(stored, PLOT)
        print(f"\nresults in {RESULTS}, plot {PLOT}")


if __name__ == "__main__":
    main()
