"""Training benchmark: throughput and peak memory, our Trainer against a bare DefaultTrainer, and the
mini config against a bare ResNet-18-GN 320 px baseline in wall time to the same AP.

    python benchmarks/train.py                    # both parts (long: the baseline runs for real)
    python benchmarks/train.py --part throughput  # images/s + peak RSS, a few minutes
    python benchmarks/train.py --part ap --iters 300 --eval-period 50

Part "throughput": for the R50-FPN, mini and both U-Net configs at one fixed input size, K timed iterations
(after warm-up) with our Trainer and with detectron2's plain DefaultTrainer on the same config, each
in a fresh subprocess (peak RSS = that process's ru_maxrss; GPU: torch.cuda.max_memory_allocated),
on the CPU and, when there is a GPU, on it in fp32 and AMP. The ratio ours/bare is our hooks' cost.

Part "ap": train_net.py runs the mini config and the baseline (Base-RCNN-FPN defaults: 2000/1000
RPN proposals, 512 ROIs per image, 4-conv mask head, 1024-wide box head, ResNet-18 GN from scratch,
320 px, batch 2) on the generated sample set for the same number of iterations, evaluating on the
val split every EVAL_PERIOD iterations. Reported: seconds per iteration, segm/bbox AP at each
evaluation, and the training wall time (iterations x s/it, evaluation excluded) each needs to first
reach the AP the baseline ends with. Prints tables and writes benchmarks/results/train.json.
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
from segkit.engine.hooks import read_metrics  # noqa: E402
RESULTS = os.path.join(ROOT, "benchmarks", "results", "train.json")
MINI = os.path.join(ROOT, "configs", "mask_rcnn_R_18_FPN_mini.yaml")
R50 = os.path.join(ROOT, "configs", "mask_rcnn_R_50_FPN_3x.yaml")
UNET_R34 = os.path.join(ROOT, "configs", "unet_R34.yaml")
UNET_MINI = os.path.join(ROOT, "configs", "unet_R18_mini.yaml")
LITE0 = os.path.join(ROOT, "configs", "mask_rcnn_lite0_FPN.yaml")

# The reference point: what a user gets by switching a stock config to ResNet-18 GN.
BASELINE_OVERRIDES = [
    "MODEL.WEIGHTS", "", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.RESNETS.NORM", "GN", "MODEL.FPN.NORM", "GN", "MODEL.BACKBONE.FREEZE_AT", "0",
    "MODEL.RESNETS.STRIDE_IN_1X1", "False",
    "INPUT.MIN_SIZE_TRAIN", "(320,)", "INPUT.MAX_SIZE_TRAIN", "427",
    "INPUT.MIN_SIZE_TEST", "320", "INPUT.MAX_SIZE_TEST", "427",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.002", "SOLVER.WARMUP_ITERS", "50",
]

# Runs in a subprocess: K timed iterations of one trainer on one config.
_WORKER = r"""
import json, resource, sys, time, torch
from detectron2.engine import DefaultTrainer
from detectron2.utils.events import EventStorage
from segkit.engine.launch import register_datasets, resolve_num_classes
from segkit.engine.trainer import Trainer
from segkit.modeling.config import get_segkit_cfg
config, kind, device, amp, warmup, timed, out = sys.argv[1:8]
opts = sys.argv[8:]
cfg = get_segkit_cfg(); cfg.merge_from_file(config); cfg.merge_from_list(opts)
cfg.MODEL.DEVICE = device; cfg.SOLVER.AMP.ENABLED = amp == "amp"; cfg.OUTPUT_DIR = out
cfg.SOLVER.MAX_ITER = int(warmup) + int(timed)
register_datasets(cfg); resolve_num_classes(cfg); cfg.freeze()
trainer = (Trainer if kind == "ours" else DefaultTrainer)(cfg)
trainer.resume_or_load(resume=False)
stamps = []
from detectron2.engine import HookBase
class StampHook(HookBase):
    def after_step(self):
        if device.startswith("cuda"): torch.cuda.synchronize()
        stamps.append(time.perf_counter())
trainer.register_hooks([StampHook()])
trainer.train()
w = int(warmup)
per_iter = [b - a for a, b in zip(stamps[w:], stamps[w + 1:])]
print("RESULT " + json.dumps({
    "sec_per_iter": sorted(per_iter)[len(per_iter) // 2],
    "images_per_s": cfg.SOLVER.IMS_PER_BATCH / (sorted(per_iter)[len(per_iter) // 2]),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None,
}))
"""


def make_sample(root, num_images, size):
    from segkit.data.coco_convert import convert
    from segkit.data.sample import make_instance_sample

    make_instance_sample(os.path.join(root, "labelme"), num_images=num_images, size=size, seed=0)
    data = os.path.join(root, "data")
    result = convert(os.path.join(root, "labelme"), data, val_fraction=0.25, seed=0, progress=False)
    if result.exit_code:
        raise SystemExit(f"sample conversion failed: {result.reason}")
    return data


def throughput(data, args, tmp):
    fixed = ["INPUT.MIN_SIZE_TRAIN", f"({args.size},)", "INPUT.MAX_SIZE_TRAIN", str(args.size * 4 // 3),
             "INPUT.RANDOM_FLIP", "none", "DATASETS.DATA_DIR", data, "DATASETS.TEST", "()",
             "DATALOADER.NUM_WORKERS", "1", "SOLVER.CHECKPOINT_PERIOD", "100000", "MODEL.WEIGHTS", ""]
    import torch

    devices = [("cpu", "fp32")]
    if torch.cuda.is_available():
        devices += [("cuda", "fp32"), ("cuda", "amp")]
    devices = [d for d in devices if d[0] in (args.devices or ("cpu", "cuda"))]
    rows = []
    # R50-FPN has no COCO weights offline; from random init with FrozenBN it diverges within a few
    # iterations, so it runs at a negligible learning rate: the cost of an iteration is the same.
    configs = (
        ("R50-FPN", R50, ["SOLVER.BASE_LR", "1e-7"]),
        ("mini", MINI, []),
        # random init: ImageNet weights change nothing in the cost of an iteration
        ("lite0", LITE0, []),
        ("unet_R34", UNET_R34, ["MODEL.UNET.ENCODER_WEIGHTS", ""]),  # random init offline: timing only
        ("unet_R18_mini", UNET_MINI, []),
        # detectron2's own training sizes, to sit beside the model zoo's 0.261 s/iteration (8 V100,
        # 2 images per GPU): on a GPU only, the CPU would take minutes per iteration.
        ("R50-FPN 800-1333", R50, ["SOLVER.BASE_LR", "1e-7", "INPUT.MIN_SIZE_TRAIN", "(640, 672, 704, 736, 768, 800)",
                                   "INPUT.MAX_SIZE_TRAIN", "1333", "INPUT.RANDOM_FLIP", "horizontal"]),
    )
    for name, config, extra in configs:
        if args.configs and name not in args.configs:
            continue
        if "800-1333" in name and not torch.cuda.is_available():
            continue
        for device, precision in devices:
            if "800-1333" in name and device == "cpu":
                continue
            for kind in args.trainers:
                out = tempfile.mkdtemp(dir=tmp)
                cmd = [sys.executable, "-c", _WORKER, config, kind, device, precision,
                       str(args.warmup), str(args.timed), out, *fixed, *extra]
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True)
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode or not line:
                    raise SystemExit(f"{name} {kind} failed:\n{proc.stderr[-3000:]}")
                row = {"config": name, "device": device, "precision": precision, "trainer": kind,
                       "size": "800-1333" if "800-1333" in name else args.size, **json.loads(line[0][7:]), "wall_s": time.perf_counter() - t0}
                rows.append(row)
                print(f"  {name:8s} {device:4s} {precision:4s} {kind:4s} {row['sec_per_iter']:.2f} s/it "
                      f"{row['images_per_s']:.2f} img/s  {row['peak_rss_mb']:.0f} MB", flush=True)
    for row in rows:
        bare = next((r for r in rows if r["trainer"] == "bare" and all(r[k] == row[k] for k in ("config", "device", "precision"))), None)
        row["time_ratio_vs_bare"] = row["sec_per_iter"] / bare["sec_per_iter"] if bare else None
    return rows


def _evals(rows):
    return {r["iteration"]: {"segm_AP": r["segm/AP"], "bbox_AP": r["bbox/AP"], "segm_AP50": r["segm/AP50"]}
            for r in rows if "segm/AP" in r}


def ap_race(data, args, tmp):
    runs = {}
    for name, config, opts in (("baseline R18-GN 320px", R50, BASELINE_OVERRIDES), ("mini", MINI, [])):
        out = os.path.join(tmp, name.split()[0])
        cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", config, "--exist-ok", *opts,
               "DATASETS.DATA_DIR", data, "OUTPUT_DIR", out, "SOLVER.MAX_ITER", str(args.iters),
               "SOLVER.STEPS", f"({int(args.iters * 0.75)},)", "TEST.EVAL_PERIOD", str(args.eval_period),
               "SOLVER.CHECKPOINT_PERIOD", "100000", "DATALOADER.NUM_WORKERS", "1"]
        print(f"  training {name} for {args.iters} iterations ...", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
        rows = read_metrics(os.path.join(out, "metrics.json"))
        sec_per_iter = statistics.median(r["time"] for r in rows if "time" in r)
        runs[name] = {"sec_per_iter": sec_per_iter, "evals": _evals(rows),
                      "wall_s_total": time.perf_counter() - t0}
        print(f"    {sec_per_iter:.2f} s/it; evals: " + ", ".join(
            f"it {i + 1}: segm AP {e['segm_AP']:.1f}" for i, e in sorted(runs[name]["evals"].items())), flush=True)
    base = runs["baseline R18-GN 320px"]
    target = base["evals"][max(base["evals"])]["segm_AP"]
    for run in runs.values():
        reached = [i for i, e in sorted(run["evals"].items()) if e["segm_AP"] >= target]
        run["target_segm_AP"] = target
        run["wall_s_to_target"] = (reached[0] + 1) * run["sec_per_iter"] if reached else None
    mini = runs["mini"]
    speedup = base["wall_s_to_target"] / mini["wall_s_to_target"] if mini["wall_s_to_target"] else None
    return {"runs": runs, "speedup_to_target": speedup}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["all", "throughput", "ap"], default="all")
    p.add_argument("--configs", nargs="*", default=None,
                   help="throughput part: only these (R50-FPN, mini, lite0, unet_R34, unet_R18_mini, and on a GPU "
                   "'R50-FPN 800-1333')")
    p.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], default=None,
                   help="throughput part: only these devices (default: cpu, and cuda when available)")
    p.add_argument("--trainers", nargs="+", choices=["bare", "ours"], default=["bare", "ours"],
                   help="throughput part: our Trainer, detectron2's DefaultTrainer, or both (their ratio)")
    p.add_argument("--results", default=RESULTS, help="JSON file to write (default benchmarks/results/train.json)")
    p.add_argument("--size", type=int, default=256, help="shortest edge for the throughput part")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--timed", type=int, default=6)
    p.add_argument("--iters", type=int, default=300, help="iterations of each run in the AP part")
    p.add_argument("--eval-period", type=int, default=50)
    p.add_argument("--num-images", type=int, default=40)
    args = p.parse_args()
    import torch

    report = {"machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                          "python": platform.python_version(), "torch": torch.__version__},
              "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="segkit_bench_train_") as tmp:
        data = make_sample(tmp, args.num_images, (320, 240))
        if args.part in ("all", "throughput"):
            print("throughput (median s/it after warm-up):")
            report["throughput"] = throughput(data, args, tmp)
        if args.part in ("all", "ap"):
            print("AP race on the sample set:")
            report["ap"] = ap_race(data, args, tmp)

    if "throughput" in report:
        print("\n| config | device | precision | trainer | s/it | images/s | peak RSS MB | peak GPU MB | ours/bare time |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in report["throughput"]:
            gpu = f"{r['peak_gpu_mb']:.0f}" if r.get("peak_gpu_mb") is not None else ""
            ratio = f"{r['time_ratio_vs_bare']:.2f}" if r["time_ratio_vs_bare"] is not None else ""
            print(f"| {r['config']} | {r['device']} | {r['precision']} | {r['trainer']} | {r['sec_per_iter']:.2f} | "
                  f"{r['images_per_s']:.2f} | {r['peak_rss_mb']:.0f} | {gpu} | {ratio} |")
    if "ap" in report:
        print("\n| run | s/it | final segm AP | final bbox AP | train time to baseline's final segm AP |")
        print("|---|---|---|---|---|")
        for name, run in report["ap"]["runs"].items():
            last = run["evals"][max(run["evals"])]
            t = run["wall_s_to_target"]
            print(f"| {name} | {run['sec_per_iter']:.2f} | {last['segm_AP']:.1f} | {last['bbox_AP']:.1f} | "
                  f"{'not reached' if t is None else f'{t:.0f} s'} |")
        s = report["ap"]["speedup_to_target"]
        print(f"\nmini reaches the baseline's final segm AP {'%.1fx faster' % s if s else 'never'}")
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    if (args.part != "all" or args.configs) and os.path.isfile(args.results):
        with open(args.results) as f:  # keep results of the other part / other configs from an earlier run
            old = json.load(f)
        if args.configs and "throughput" in report:
            kept = [r for r in old.get("throughput", []) if r["config"] not in args.configs]
            report["throughput"] = kept + report["throughput"]
        report = {**old, **report}
    with open(args.results, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {args.results}")


if __name__ == "__main__":
    main()
