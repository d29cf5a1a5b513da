"""Backbones side by side in one run: the from-scratch mini Mask R-CNN (ResNet-18 GN) against the
ImageNet-pretrained EfficientNet-Lite0 one (weights from pip), each at its own config's sizes.

    python benchmarks/backbones.py                          # sample + controllers, 3 min each, seed 0
    python benchmarks/backbones.py --budget 2m --seeds 0 1 2 --sets controllers-81
    python benchmarks/backbones.py --table                  # print what benchmarks/results holds

Part "ap": for every set and seed, both configs train with the same ``--time-budget`` (the budget is
the only limit: SOLVER.MAX_ITER 100000 lifts the epochs rule) in fresh train_net.py processes, mini
and lite0 one after the other; reported: iterations reached and segm/bbox AP on val at equal wall
time. Sets as in benchmarks/schedule.py (controllers: real photos, val = later frames; sample-32:
synthetic).

Part "speed", on the checkpoints part "ap" trained (first set, first seed), interleaved (mini, lite0,
mini, ...): training s/iteration and peak RSS (benchmarks/train.py's worker, 2 + 10 iterations at
the config's training sizes), and inference latency of one val image at the config's test size,
eager (our Predictor) and ONNX Runtime (export_model.py's ONNX + OnnxPredictor), median of
``--iters``. Prints a table and writes benchmarks/results/backbones.json.
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
from schedule import SETS, data_for  # noqa: E402  (benchmarks/ is the script's folder)
from train import _WORKER  # noqa: E402

from segkit.data.atomic import write_json  # noqa: E402
from segkit.engine.hooks import read_metrics  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results", "backbones.json")
CONFIGS = {
    "mini": os.path.join(ROOT, "configs", "mask_rcnn_R_18_FPN_mini.yaml"),
    "lite0": os.path.join(ROOT, "configs", "mask_rcnn_lite0_FPN.yaml"),
}


def ap_at_budget(name, data, seed, budget, work):
    out = os.path.join(work, f"{name}_{os.path.basename(data)}_seed{seed}")
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", CONFIGS[name],
           "--time-budget", budget, "--exist-ok", "DATASETS.DATA_DIR", data, "OUTPUT_DIR", out, "SEED", str(seed),
           "SOLVER.MAX_ITER", "100000", "INPUT.AUG.PREVIEW_BATCHES", "0", "TEST.PR_CURVES", "False"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode:
        raise SystemExit(f"{name} on {data} failed:\n{proc.stderr[-3000:]}")
    with open(os.path.join(out, "eval", "metrics_mydata_val.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    rows = read_metrics(os.path.join(out, "metrics.json"))
    return {"config": name, "seed": seed, "budget": budget, "wall_s": wall,
            "iterations": max(r["iteration"] for r in rows) + 1 if rows else 0,
            "segm_AP": metrics["segm"]["AP"], "bbox_AP": metrics["bbox"]["AP"],
            "checkpoint": os.path.join(out, "model_final.pth")}


def train_speed(name, data, work):
    out = tempfile.mkdtemp(dir=work)
    cmd = [sys.executable, "-c", _WORKER, CONFIGS[name], "ours", "cpu", "fp32", "2", "10", out,
           "DATASETS.DATA_DIR", data, "DATASETS.TEST", "()", "DATALOADER.NUM_WORKERS", "1",
           "SOLVER.CHECKPOINT_PERIOD", "100000", "INPUT.AUG.PREVIEW_BATCHES", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        raise SystemExit(f"{name} training speed failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[0][len("RESULT "):])


def inference_speed(checkpoints, image_path, iters):
    """{name: {"eager_ms", "onnxruntime_ms", "instances"}}, the models timed in turns."""
    from segkit.inference.export import export_model
    from segkit.inference.onnx_predictor import OnnxPredictor
    from segkit.inference.predictor import Predictor
    from segkit.inference.image_io import read_image_rgb

    image = read_image_rgb(image_path)
    runners = {}
    for name, ckpt in checkpoints.items():
        onnx_path = export_model(ckpt, "onnx", output=os.path.join(os.path.dirname(ckpt), f"{name}.onnx"), check=False)
        runners[name] = {"eager": Predictor.from_checkpoint(ckpt, device="cpu"),
                         "onnxruntime": OnnxPredictor(onnx_path)}
    times = {(n, k): [] for n in runners for k in ("eager", "onnxruntime")}
    counts = {}
    for i in range(iters + 1):  # the first round warms up
        for name, pair in runners.items():
            for kind, predictor in pair.items():
                t = time.perf_counter()
                pred = predictor(image, rgb=True)
                if i:
                    times[(name, kind)].append(time.perf_counter() - t)
                counts[(name, kind)] = len(pred.instances)
    return {n: {f"{k}_ms": 1000 * statistics.median(times[(n, k)]) for k in ("eager", "onnxruntime")}
            | {"instances": counts[(n, "eager")]} for n in runners}


def print_table(result):
    ap = result.get("ap", [])
    if ap:
        print("\n| set | budget | config | iterations | segm AP | bbox AP | seeds |\n|---|---|---|---|---|---|---|")
        keys = sorted({(r["set"], r["budget"], r["config"]) for r in ap}, key=lambda k: (k[0], k[1], k[2] != "mini"))
        for s, b, c in keys:
            rs = [r for r in ap if (r["set"], r["budget"], r["config"]) == (s, b, c)]

            def ms(key):
                vals = [r[key] for r in rs]
                return f"{statistics.mean(vals):.1f}" + (f" ± {statistics.stdev(vals):.1f}" if len(vals) > 1 else "")
            print(f"| {s} | {b} | {c} | {ms('iterations')} | {ms('segm_AP')} | {ms('bbox_AP')} | {len(rs)} |")
    speed = result.get("speed")
    if speed:
        print(f"\nspeed on {speed['set']} (CPU, {speed['threads']} threads):")
        print("| config | train s/iteration | train peak RSS | inference eager | inference ONNX Runtime |")
        print("|---|---|---|---|---|")
        for name, r in speed["models"].items():
            print(f"| {name} | {r['sec_per_iter']:.2f} | {r['peak_rss_mb']:.0f} MB | {r['eager_ms']:.0f} ms | "
                  f"{r['onnxruntime_ms']:.0f} ms |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", nargs="+", default=["controllers-81", "sample-32"], choices=SETS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--budget", default="3m", help="--time-budget of every training run (default 3m)")
    p.add_argument("--iters", type=int, default=10, help="timed inference runs per model and runtime")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS),
                   help="part ap only for these; part speed runs when both are given")
    p.add_argument("--table", action="store_true")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "segkit_bench_backbones"))
    args = p.parse_args()
    result = json.load(open(RESULTS)) if os.path.isfile(RESULTS) else {}
    if not args.table:
        import torch

        os.makedirs(args.work, exist_ok=True)
        os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
        runs, t_start = [], time.monotonic()
        todo = [(s, seed, name) for s in args.sets for seed in args.seeds for name in args.configs]
        for i, (s, seed, name) in enumerate(todo):
            eta = f", ETA {(time.monotonic() - t_start) / i * (len(todo) - i) / 60:.0f} min" if i else ""
            print(f"[{i + 1}/{len(todo)}] {name} on {s} seed {seed}, budget {args.budget}{eta}", flush=True)
            run = ap_at_budget(name, data_for(s, seed, args.work), seed, args.budget, args.work) | {"set": s}
            print(f"    {run['iterations']} iterations, segm AP {run['segm_AP'] or 0:.1f}, "
                  f"bbox AP {run['bbox_AP'] or 0:.1f}, {run['wall_s']:.0f} s", flush=True)
            runs.append(run)
        models = result.get("speed", {}).get("models", {})
        first = args.sets[0]
        if set(args.configs) == set(CONFIGS):
            first = args.sets[0]
            data = data_for(first, args.seeds[0], args.work)
            ckpts = {r["config"]: r["checkpoint"] for r in runs if r["set"] == first and r["seed"] == args.seeds[0]}
            with open(os.path.join(data, "val.json"), encoding="utf-8") as f:
                image = os.path.join(data, "images", json.load(f)["images"][0]["file_name"])
            for name in CONFIGS:  # training speed: one process each, one after the other
                models[name] = train_speed(name, data, args.work)
                print(f"  {name}: {models[name]['sec_per_iter']:.2f} s/iteration, {models[name]['peak_rss_mb']:.0f} MB", flush=True)
            for name, r in inference_speed(ckpts, image, args.iters).items():
                models[name].update(r)
        # Runs of other sets, seeds or budgets stay; the same run measured again replaces the old one.
        key = ("set", "seed", "config", "budget")
        fresh = [{k: v for k, v in r.items() if k != "checkpoint"} for r in runs]
        kept = [r for r in result.get("ap", []) if not any(all(r[k] == f[k] for k in key) for f in fresh)]
        result = {"machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                              "python": platform.python_version(), "torch": torch.__version__},
                  "ap": kept + fresh,
                  "speed": {"set": first, "threads": torch.get_num_threads(), "models": models}
                  if set(args.configs) == set(CONFIGS) else result.get("speed")}
        write_json(RESULTS, result)
    print_table(result)
    print(f"\nresults in {RESULTS}")


if __name__ == "__main__":
    main()
