"""Time-budget benchmark: does ``train_net.py --time-budget`` end in time, and what AP does it reach?

    python benchmarks/budget.py --run 1m      # one run per command (each under the CPU lock)
    python benchmarks/budget.py --run 2m
    python benchmarks/budget.py --run 4m
    python benchmarks/budget.py --run fixed   # the mini config's former fixed 600-iteration schedule
    python benchmarks/budget.py               # only print the table of the runs done so far

Each run trains the mini config (configs/mask_rcnn_R_18_FPN_mini.yaml, from scratch) on the
generated sample set (40 images of 320x240, as scripts/demo.sh makes it) in a fresh train_net.py
process. Reported: the wall time of that whole process (start-up, training, evaluations, final
checkpoint) against the budget, the iterations it chose, and the final COCO AP on the val split.
The fixed run evaluates every 100 iterations, which also gives AP against epochs (the measurement
behind the configs' default SOLVER.EPOCHS). Results accumulate in benchmarks/results/budget.json.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from segkit.engine.budget import parse_duration  # noqa: E402  (after the repo is on the path)
from segkit.engine.hooks import read_metrics  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results", "budget.json")
MINI = os.path.join(ROOT, "configs", "mask_rcnn_R_18_FPN_mini.yaml")
FIXED = ["SOLVER.MAX_ITER", "600", "SOLVER.STEPS", "(480, 560)", "SOLVER.WARMUP_ITERS", "50",
         "TEST.EVAL_PERIOD", "100", "SOLVER.CHECKPOINT_PERIOD", "200"]


def sample_data(work):
    """The demo's sample set, converted once and reused by every run."""
    data = os.path.join(work, "data")
    if not os.path.isfile(os.path.join(data, "val.json")):
        from segkit.data.coco_convert import convert
        from segkit.data.sample import make_instance_sample

        make_instance_sample(os.path.join(work, "labelme"), num_images=40, size=(320, 240), seed=0)
        result = convert(os.path.join(work, "labelme"), data, val_fraction=0.2, seed=0, progress=False)
        if result.exit_code:
            raise SystemExit(f"sample conversion failed: {result.reason}")
    return data


def one_run(name, data, work):
    out = os.path.join(work, f"run_{name}")
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", MINI]
    budget = None
    if name == "fixed":
        opts = FIXED
    else:
        budget = parse_duration(name)
        cmd += ["--time-budget", name]
        opts = []
    cmd += ["--exist-ok", "DATASETS.DATA_DIR", data, "OUTPUT_DIR", out, *opts]
    env = dict(os.environ)
    print(f"{name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.monotonic() - t0
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    import torch

    ckpt = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=True)
    with open(os.path.join(out, "eval", "metrics_mydata_val.json")) as f:
        metrics = json.load(f)
    rows = read_metrics(os.path.join(out, "metrics.json"))
    train_images = len(json.load(open(os.path.join(data, "train.json")))["images"])
    # The final evaluation is stored at iteration MAX_ITER (after the loop), the others at N - 1.
    evals = [{"iteration": min(r["iteration"] + 1, ckpt["iteration"] + 1), "segm_AP": r["segm/AP"],
              "bbox_AP": r["bbox/AP"]}
             for r in rows if "segm/AP" in r]
    with open(os.path.join(out, "log.txt")) as f:
        plan_lines = [line.split("INFO: ", 1)[-1].strip() for line in f if "segkit.engine.budget" in line]
    return {
        "run": name, "budget_s": budget, "wall_s": wall, "iterations": ckpt["iteration"] + 1,
        "epochs": (ckpt["iteration"] + 1) * 2 / train_images, "train_images": train_images,
        "segm_AP": metrics["segm"]["AP"], "bbox_AP": metrics["bbox"]["AP"], "evals": evals,
        "plan": plan_lines,
    }


def print_table(runs):
    print("\n| run | budget | process wall time | wall / budget | iterations (epochs) | segm AP | bbox AP |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(runs.values(), key=lambda r: (r["budget_s"] is None, r["budget_s"] or 0)):
        budget = f"{r['budget_s']:.0f} s" if r["budget_s"] else "none (600 iterations)"
        ratio = f"{r['wall_s'] / r['budget_s']:.2f}" if r["budget_s"] else ""
        print(f"| {r['run']} | {budget} | {r['wall_s']:.0f} s | {ratio} | {r['iterations']} "
              f"({r['epochs']:.1f}) | {r['segm_AP']:.1f} | {r['bbox_AP']:.1f} |")
    fixed = runs.get("fixed")
    if fixed and fixed["evals"]:
        print("\nfixed schedule, AP on the val split against epochs:")
        print("| iteration | epochs | segm AP | bbox AP |\n|---|---|---|---|")
        for e in fixed["evals"]:
            print(f"| {e['iteration']} | {e['iteration'] * 2 / fixed['train_images']:.1f} | "
                  f"{e['segm_AP']:.1f} | {e['bbox_AP']:.1f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="a budget such as 1m, 2m, 4m, or 'fixed'; none: print the table only")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "segkit_bench_budget"),
                   help="folder for the sample data and the runs (kept between commands)")
    args = p.parse_args()
    runs = {}
    if os.path.isfile(RESULTS):
        with open(RESULTS) as f:
            runs = json.load(f)["runs"]
    if args.run:
        os.makedirs(args.work, exist_ok=True)
        data = sample_data(args.work)
        runs[args.run] = one_run(args.run, data, args.work)
        import platform

        import torch

        os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
        with open(RESULTS, "w") as f:
            json.dump({"machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                   "python": platform.python_version(), "torch": torch.__version__},
                       "runs": runs}, f, indent=2)
        print("\n".join(runs[args.run]["plan"]))
    print_table(runs)
    print(f"\nresults in {RESULTS}")


if __name__ == "__main__":
    main()
