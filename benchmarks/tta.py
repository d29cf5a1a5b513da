"""Test-time augmentation: what it gives (segm / bbox AP) and what it costs (seconds per image).

    python benchmarks/tta.py                                   # controllers-20, seeds 0 1 2 (~25 min)
    python benchmarks/tta.py --sets controllers-20 sample-32 --seeds 0
    python benchmarks/tta.py --table                           # print what benchmarks/results holds

For every set and seed (sets as in benchmarks/schedule.py: controllers = real photos, val = the
author's test frames; sample-32 = synthetic), Lite0 (configs/mask_rcnn_lite0_FPN.yaml) trains with
its default schedule, then ``train_net.py --eval-only`` evaluates the run on val in two fresh
processes: with ``TEST.AUG.ENABLED True`` (the config's TEST.AUG sizes and flip; that process
evaluates plainly first, as detectron2's tools/train_net.py does, then with TTA), and plain alone.
Seconds per image: detectron2's inference_on_dataset "pure compute" time of each evaluation, over
the val images. Prints a table and writes benchmarks/results/tta.json.
"""

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from schedule import LITE0, data_for  # noqa: E402  (benchmarks/ is the script's folder)

from segkit.data.atomic import write_json  # noqa: E402  (after the repo is on the path)
from segkit.data.run_layout import EVAL_DIR, TTA_EVAL_DIR  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results", "tta.json")
# detectron2.evaluation.evaluator logs one per evaluation, in the order they ran.
COMPUTE = re.compile(r"Total inference pure compute time: .*?\(([\d.]+) s / iter per device")


def run(cmd):
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return proc, time.monotonic() - t0


def train(data, seed, out):
    run([sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", LITE0, "--exist-ok",
         "DATASETS.DATA_DIR", data, "OUTPUT_DIR", out, "SEED", str(seed), "INPUT.AUG.PREVIEW_BATCHES", "0",
         "TEST.PR_CURVES", "False"])
    return os.path.join(out, "model_final.pth")


def evaluate(weights, data, out, tta):
    extra = ["TEST.AUG.ENABLED", "True"] if tta else []
    proc, wall = run([sys.executable, os.path.join(ROOT, "train_net.py"), "--eval-only", "--weights", weights,
                      "DATASETS.DATA_DIR", data, "OUTPUT_DIR", out, "TEST.PR_CURVES", "False", *extra])
    seconds = [float(s) for s in COMPUTE.findall(proc.stdout + proc.stderr)]
    result = {}
    for key, folder, s in zip(("plain", "tta"), (EVAL_DIR, TTA_EVAL_DIR), seconds):
        with open(os.path.join(out, folder, "metrics_mydata_val.json"), encoding="utf-8") as f:
            metrics = json.load(f)
        result[key] = {"segm_AP": metrics["segm"]["AP"], "bbox_AP": metrics["bbox"]["AP"], "s_per_image": s}
    return result, wall


def spread(values):
    return (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


def print_table(stored):
    print(f"{'set':16} {'seeds':>5} | {'segm AP plain':>14} {'segm AP TTA':>14} | {'bbox AP plain':>14} "
          f"{'bbox AP TTA':>14} | {'s/img plain':>11} {'s/img TTA':>10} {'x':>5}")
    for name in sorted({r["set"] for r in stored["runs"]}):
        runs = [r for r in stored["runs"] if r["set"] == name]
        cols = {}
        for key in ("plain", "tta"):
            for m in ("segm_AP", "bbox_AP", "s_per_image"):
                cols[key, m] = spread([r[key][m] for r in runs])
        ratio = statistics.mean(r["tta"]["s_per_image"] / r["plain"]["s_per_image"] for r in runs)
        f = lambda ms: f"{ms[0]:6.1f} +- {ms[1]:4.1f}"  # noqa: E731
        print(f"{name:16} {len(runs):5d} | {f(cols['plain', 'segm_AP']):>14} {f(cols['tta', 'segm_AP']):>14} | "
              f"{f(cols['plain', 'bbox_AP']):>14} {f(cols['tta', 'bbox_AP']):>14} | "
              f"{cols['plain', 's_per_image'][0]:11.3f} {cols['tta', 's_per_image'][0]:10.3f} {ratio:5.1f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", nargs="+", default=["controllers-20"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--work", default=None, help="folder for data and runs (default: a temporary one)")
    p.add_argument("--table", action="store_true", help="only print the stored results")
    args = p.parse_args(argv)
    if args.table:
        with open(RESULTS, encoding="utf-8") as f:
            print_table(json.load(f))
        return 0
    work = args.work or tempfile.mkdtemp(prefix="tta_")
    runs = []
    for name in args.sets:
        for seed in args.seeds:
            data = data_for(name, seed, work)
            run_dir = os.path.join(work, f"run_{name}_seed{seed}")
            t0 = time.monotonic()
            weights = train(data, seed, run_dir)
            print(f"{name} seed {seed}: trained in {time.monotonic() - t0:.0f} s", file=sys.stderr)
            result, wall = evaluate(weights, data, os.path.join(run_dir, "eval_tta"), tta=True)
            plain, _ = evaluate(weights, data, os.path.join(run_dir, "eval_plain"), tta=False)
            # The TTA process evaluated plainly too: its plain numbers equal the plain process's;
            # the plain process's own timing is the one without another evaluation beside it.
            result["plain"]["s_per_image"] = plain["plain"]["s_per_image"]
            runs.append({"set": name, "seed": seed, **result, "eval_wall_s": wall})
            print(json.dumps(runs[-1]), file=sys.stderr)
    stored = {"date": datetime.date.today().isoformat(), "machine": platform.platform(),
              "cpus": os.cpu_count(), "config": os.path.relpath(LITE0, ROOT), "runs": runs}
    write_json(RESULTS, stored)
    print_table(stored)
    return 0


if __name__ == "__main__":
    sys.exit(main())
