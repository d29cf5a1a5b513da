"""The GPU rows of docs/benchmarks.md in one run, written as one JSON file: what benchmarks/gpu/run.sh
runs after it has built detectron2 on the lent GPU machine.

    python benchmarks/gpu/rows.py --out DIR [--build-seconds N]
    python benchmarks/gpu/rows.py --out DIR --cpu --dry-run     # the same steps, tiny, on the CPU (CI)

Rows (each from the benchmark that already measures it, run as a subprocess):
  train      benchmarks/train.py throughput, our Trainer: R50-FPN Mask R-CNN at detectron2's own
             800-1333 px, fp32 and AMP, images/s and peak GPU memory; mini and lite0 likewise at
             their test sizes
  infer      benchmarks/infer.py: one image at 800 px (the size of the model zoo's 0.043 s/img on a
             V100, R50-FPN) for R50-FPN, mini and lite0; eager, inference_mode and fp16
  finetune   train_net.py: the ImageNet-pretrained Lite0 fine-tuned for 2 minutes (--time-budget,
             evaluation included) on the generated sample, with its val AP
--dry-run keeps every step and makes it tiny (64 px, 1-2 iterations, the mini config for the
fine-tune) so CI proves the kit runs; its numbers mean nothing. Writes DIR/gpu_rows.json (and the
raw outputs of each benchmark beside it) and prints the table.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# detectron2 MODEL_ZOO.md, R50-FPN 3x Mask R-CNN: inference time on one V100, batch 1.
MODEL_ZOO_V100_S_PER_IMG = 0.043


def run(cmd, log):
    """Runs one step, its output to a log file beside the results; a failure stops the kit with the
    log's tail (the rows already written stay)."""
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, text=True)
    with open(log) as f:
        text = f.read()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{text[-4000:]}")
    return time.perf_counter() - t


def train_rows(args, out):
    device = "cpu" if args.cpu else "cuda"
    configs = ["R50-FPN", "mini", "lite0"] if args.dry_run else ["R50-FPN 800-1333", "mini", "lite0"]
    results = os.path.join(out, "train.json")
    cmd = [sys.executable, "benchmarks/train.py", "--part", "throughput", "--configs", *configs,
           "--devices", device, "--trainers", "ours", "--results", results]
    cmd += ["--size", "64", "--warmup", "1", "--timed", "2", "--num-images", "8"] if args.dry_run else \
        ["--size", "512", "--warmup", "3", "--timed", "10"]
    wall = run(cmd, os.path.join(out, "train.log"))
    with open(results) as f:
        rows = json.load(f)["throughput"]
    return rows, wall


def infer_rows(args, out):
    device = "cpu" if args.cpu else "cuda"
    results = os.path.join(out, "infer.json")
    cmd = [sys.executable, "benchmarks/infer.py", "--models", "R50-FPN", "mini", "lite0", "--devices", device,
           "--out", results]
    cmd += ["--sizes", "64", "--variants", "inference_mode", "--iters", "1", "--warmup", "0"] if args.dry_run else \
        ["--sizes", "800", "--variants", "eager", "inference_mode", "fp16", "--iters", "20", "--warmup", "5"]
    wall = run(cmd, os.path.join(out, "infer.log"))
    with open(results) as f:
        rows = json.load(f)["results"]
    for row in rows:
        if row["model"] == "R50-FPN" and "median_ms" in row:
            row["vs_model_zoo_v100"] = round(row["median_ms"] / 1000 / MODEL_ZOO_V100_S_PER_IMG, 2)
    return rows, wall


def finetune_row(args, out, tmp):
    from segkit.data.coco_convert import convert
    from segkit.data.sample import make_instance_sample

    make_instance_sample(os.path.join(tmp, "labelme"), num_images=12 if args.dry_run else 40, seed=0)
    data = os.path.join(tmp, "data")
    if convert(os.path.join(tmp, "labelme"), data, val_fraction=0.25, seed=0, progress=False).exit_code:
        raise SystemExit("sample conversion failed")
    run_dir = os.path.join(out, "finetune")
    if args.dry_run:
        config, budget = "configs/mask_rcnn_R_18_FPN_mini.yaml", ["SOLVER.MAX_ITER", "2", "INPUT.MIN_SIZE_TRAIN", "(64,)",
                                                                 "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "64",
                                                                 "INPUT.MAX_SIZE_TEST", "96"]
        flags = []
    else:
        config, budget, flags = "configs/mask_rcnn_lite0_FPN.yaml", [], ["--time-budget", "2m"]
    cmd = [sys.executable, "train_net.py", "--config-file", config, "--num-gpus", "1", *flags,
           "DATASETS.DATA_DIR", data, "OUTPUT_DIR", run_dir, "MODEL.DEVICE", "cpu" if args.cpu else "cuda",
           "DATALOADER.NUM_WORKERS", "0" if args.dry_run else "4", *budget]
    wall = run(cmd, os.path.join(out, "finetune.log"))
    with open(os.path.join(run_dir, "eval", "metrics_mydata_val.json")) as f:
        metrics = json.load(f)
    # the weights a user predicts with; last_checkpoint names the resumable state, never model_final
    final = "model_final.pth"
    if not os.path.isfile(os.path.join(run_dir, final)):
        raise SystemExit(f"the fine-tune wrote no {final} in {run_dir}")
    return {"config": os.path.basename(config), "wall_s": round(wall, 1), "checkpoint": final,
            "segm_AP": metrics["segm"]["AP"], "bbox_AP": metrics["bbox"]["AP"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for gpu_rows.json and the logs ($OUT on the GPU machine)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU (with --dry-run: what CI checks)")
    p.add_argument("--dry-run", action="store_true", help="every step, tiny: proves the kit, measures nothing")
    p.add_argument("--build-seconds", type=float, default=None, help="detectron2's build time, to record")
    args = p.parse_args(argv)
    import detectron2
    import numpy
    import torch

    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("no GPU visible to torch: run with --cpu (and --dry-run) instead")
    os.makedirs(args.out, exist_ok=True)
    report = {
        "machine": {"gpu": None if args.cpu else torch.cuda.get_device_name(0), "cpu_count": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
                    "detectron2": detectron2.__version__, "cuda": torch.version.cuda},
        "dry_run": args.dry_run, "detectron2_build_s": args.build_seconds,
        "model_zoo_v100_s_per_img": MODEL_ZOO_V100_S_PER_IMG,
    }
    path = os.path.join(args.out, "gpu_rows.json")

    def save():
        with open(path, "w") as f:
            json.dump(report, f, indent=2)

    # Each part saved as it ends: a call cut off by the lease keeps what it measured.
    report["train"], report["train_wall_s"] = train_rows(args, args.out)
    save()
    report["infer"], report["infer_wall_s"] = infer_rows(args, args.out)
    save()
    with tempfile.TemporaryDirectory(prefix="segkit_gpu_rows_") as tmp:
        report["finetune"] = finetune_row(args, args.out, tmp)
    save()

    print(f"\n{report['machine']['gpu'] or 'CPU'}; torch {torch.__version__}; detectron2 build "
          f"{args.build_seconds if args.build_seconds is not None else '-'} s")
    print("\n| training | size | precision | images/s | peak GPU MB |\n|---|---|---|---|---|")
    for r in report["train"]:
        gpu = "" if r.get("peak_gpu_mb") is None else f"{r['peak_gpu_mb']:.0f}"
        print(f"| {r['config']} | {r['size']} | {r['precision']} | {r['images_per_s']:.2f} | {gpu} |")
    print("\n| inference | size | variant | ms/img | x model zoo V100 |\n|---|---|---|---|---|")
    for r in report["infer"]:
        print(f"| {r['model']} | {r['size']} | {r['variant']} | {r.get('median_ms', r.get('error'))} | "
              f"{r.get('vs_model_zoo_v100', '')} |")
    f = report["finetune"]
    print(f"\nfine-tune {f['config']} ({f['wall_s']} s): segm AP {f['segm_AP']}, bbox AP {f['bbox_AP']}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
