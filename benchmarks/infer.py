"""Inference benchmark: latency and images/s of one image, end to end (BGR array in, instances with
masks pasted at the input size out), for each way we can run a model.

    python benchmarks/infer.py                                  # everything, N=10 after 2 warm-up
    python benchmarks/infer.py --iters 3 --warmup 1             # the reduced run of the README
    python benchmarks/infer.py --models mini --sizes 512 --variants eager onnxruntime

Models: R50-FPN (configs/mask_rcnn_R_50_FPN_3x.yaml), mini (configs/mask_rcnn_R_18_FPN_mini.yaml) and
lite0 (configs/mask_rcnn_lite0_FPN.yaml) Mask R-CNN, and the U-Net configs (unet_R34, unet_R18_mini). Weights are random (timing does not
depend on them, except through the number of detections, which the table shows) unless
``--weights NAME=PATH`` gives a checkpoint (e.g. ``--weights mini=output/mini/model_final.pth``).
Mask R-CNN runs with 3 classes.

Sizes: the test image (the sample generator's, 4:3) has its short side at SIZE px and the config's
INPUT.MIN_SIZE_TEST is set to SIZE, so the model sees SIZE x 4/3 SIZE.

Variants (CPU):
  eager            detectron2's DefaultPredictor.__call__ (torch.no_grad)
  inference_mode   our Predictor: same preprocessing, torch.inference_mode
  channels_last    inference_mode with the model in channels_last memory format
  threads=1        inference_mode on one intra-op thread (the others use all cores)
  torchscript      the traced model (export_model.py) + our numpy post-processing
  onnxruntime      the ONNX model (opset 17) on onnxruntime + the same post-processing
  "onnxruntime (no torch)"  the same ONNX file on segkit/inference/runtime.py (numpy + Pillow pre-
                   and post-processing, no torch), at the graph's score threshold like the row above;
                   when both are asked for, the two are timed interleaved (one run of each in turn)
On a GPU: eager, inference_mode, channels_last and fp16 autocast, with peak GPU memory
(torch.cuda.max_memory_allocated); size 800 is detectron2's own test size (800, max 1333), the one
the model zoo's 0.043 s/image (V100) was measured at.

    python benchmarks/infer.py --deploy lite0=RUN/model_final.pth [more checkpoints, other seeds]

instead compares the deployment runtimes on trained checkpoints of one config (the first is timed,
all give AP): eager (our Predictor), TorchScript, ONNX Runtime fp32 and INT8, OpenVINO fp32 and INT8
(``export_model.py``'s exports; the INT8 ones calibrated on the run's training images). Latency:
one ``--photo`` (default: the first val image of the first run, resized to 800x600), ``--threads``
threads (default 2), the runtimes interleaved (one call of each per round), median and
inter-quartile range of ``--iters`` rounds after ``--warmup``; peak RSS: a fresh process per
runtime that loads it and runs the photo 5 times (ru_maxrss); segm/bbox AP: each export's accuracy
check on the run's val split (the sidecar's "parity"; eager is the torch model's), mean and spread
over the checkpoints; install size: the runtime's own site-packages folders. Writes
benchmarks/results/infer_deploy.json and prints a Markdown table.

Latency: median of ``--iters`` timed runs after ``--warmup`` untimed ones; images/s = 1 / latency
(one image at a time). Prints a table and writes benchmarks/results/infer.json.

    python benchmarks/infer.py --processes 1 2 --images 24 --rounds 2

instead measures ``predict.py`` over a folder of ``--images`` sample images with each number of CPU
processes (``--num-gpus N``, one thread each), the runs interleaved over ``--rounds``: images/s =
images / wall time of the whole command (start-up included), and the speed-up against 1 process.
Writes benchmarks/results/infer_processes.json.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "infer.json")
MODELS = {
    "R50-FPN": ("configs/mask_rcnn_R_50_FPN_3x.yaml", "instances"),
    "mini": ("configs/mask_rcnn_R_18_FPN_mini.yaml", "instances"),
    "lite0": ("configs/mask_rcnn_lite0_FPN.yaml", "instances"),
    "unet_R34": ("configs/unet_R34.yaml", "semantic"),
    "unet_R18_mini": ("configs/unet_R18_mini.yaml", "semantic"),
}
CPU_VARIANTS = ["eager", "inference_mode", "channels_last", "threads=1", "torchscript", "onnxruntime",
                "onnxruntime (no torch)"]
NO_TORCH = "onnxruntime (no torch)"
GPU_VARIANTS = ["eager", "inference_mode", "channels_last", "fp16"]


def size_opts(size):
    return ["INPUT.MIN_SIZE_TEST", str(size), "INPUT.MAX_SIZE_TEST", str(max(1333, 2 * size))]


def random_checkpoint(name, out_dir):
    """Our checkpoint format with random weights for ``name`` (3 classes, no downloads)."""
    import torch
    from detectron2.modeling import build_model

    from segkit.modeling.config import get_segkit_cfg

    config, kind = MODELS[name]
    cfg = get_segkit_cfg()
    cfg.merge_from_file(os.path.join(ROOT, config))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    if kind == "semantic":
        import segkit.modeling.unet  # noqa: F401

        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
        cfg.MODEL.UNET.ENCODER_WEIGHTS = ""
    else:
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    torch.manual_seed(0)
    model = build_model(cfg)
    path = os.path.join(out_dir, f"{name}.pth")
    torch.save({"model": model.state_dict(), "config": cfg.dump(), "class_names": ["a", "b", "c"],
                "meta_architecture": cfg.MODEL.META_ARCHITECTURE, "iteration": 0}, path)
    return path


def test_image(size, out_dir):
    import cv2

    from segkit.data.sample import make_instance_sample

    d = os.path.join(out_dir, f"img{size}")
    make_instance_sample(d, num_images=1, size=(size * 4 // 3, size), seed=1)
    return cv2.imread(os.path.join(d, "sample_0000.jpg"))


def timed(fn, warmup, iters, sync=None):
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        out = fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def no_torch_runner(onnx_path, size, threads):
    """segkit.inference.runtime on ``onnx_path`` at the test size ``size`` (the sidecar names the export's),
    keeping what the graph keeps (as OnnxPredictor does), so both paste the same masks."""
    from segkit.inference.runtime import load_model

    model = load_model(onnx_path, num_threads=threads)
    model.min_size, model.max_size = size, max(1333, 2 * size)
    return model.set_score_threshold(model.floor)


def timed_interleaved(fns, warmup, iters):
    """[(median seconds, last output)] of each of ``fns``, run in turn (order alternating each round)
    so that a change of machine load falls on all of them alike."""
    outs = [None] * len(fns)
    for _ in range(warmup):
        outs = [fn() for fn in fns]
    times = [[] for _ in fns]
    for i in range(iters):
        order = list(range(len(fns)))[::(-1 if i % 2 else 1)]
        for k in order:
            t = time.perf_counter()
            outs[k] = fns[k]()
            times[k].append(time.perf_counter() - t)
    return [(statistics.median(t), o) for t, o in zip(times, outs)]


def count(out):
    """Number of instances (or classes present) in any of our outputs."""
    if isinstance(out, dict):
        if "instances" in out:
            return len(out["instances"])
        return int(out["sem_seg"].argmax(0).unique().numel())
    if getattr(out, "is_semantic", False):
        return int(len(out.sem_seg.argmax(0).unique()))
    if getattr(out, "sem_seg", None) is not None:  # the runtime's Detections
        return int(len(set(out.sem_seg.argmax(0).ravel().tolist())))
    return len(out)


def run_model(name, weights, sizes, devices, variants, args, tmp, rows):
    import torch
    from detectron2.data import transforms as T

    from segkit.inference.export import export_model
    from segkit.inference.onnx_predictor import OnnxPredictor, TorchScriptPredictor
    from segkit.inference.predictor import Predictor

    ncpu = os.cpu_count() or 1
    default_threads = torch.get_num_threads()
    exported = {}
    for device in devices:
        for size in sizes:
            image = test_image(size, tmp)
            predictor = Predictor.from_checkpoint(weights, device=device, opts=size_opts(size))
            model = predictor.model
            sync = torch.cuda.synchronize if device.startswith("cuda") else None
            for variant in (variants if device == "cpu" else [v for v in variants if v in GPU_VARIANTS]):
                threads = default_threads if device == "cpu" else None
                fn = None
                if variant == "eager":
                    fn = lambda: predictor.default_predictor(image)  # noqa: E731
                elif variant == "inference_mode":
                    fn = lambda: predictor(image, keep_image=False)  # noqa: E731
                elif variant == "threads=1":
                    threads = 1
                    fn = lambda: predictor(image, keep_image=False)  # noqa: E731
                elif variant == "channels_last":
                    fn = lambda: predictor(image, keep_image=False)  # noqa: E731
                elif variant == "fp16":
                    def fn():
                        with torch.autocast("cuda", dtype=torch.float16):
                            return predictor(image, keep_image=False)
                elif variant == NO_TORCH and "onnxruntime" in variants:
                    continue  # timed with "onnxruntime", interleaved
                elif variant in ("torchscript", "onnxruntime", NO_TORCH):
                    fmt = "torchscript" if variant == "torchscript" else "onnx"
                    if fmt not in exported:
                        t = time.perf_counter()
                        out = os.path.join(tmp, f"{name}.{'ts' if fmt == 'torchscript' else 'onnx'}")
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            exported[fmt] = export_model(weights, fmt, output=out, check=False,
                                                         opts=size_opts(size))
                        print(f"  exported {name} to {fmt} in {time.perf_counter() - t:.0f} s", flush=True)
                    if fmt == "torchscript":
                        runner = TorchScriptPredictor(exported[fmt])
                    elif variant == NO_TORCH:
                        runner = no_torch_runner(exported[fmt], size, ncpu)
                    else:
                        runner = OnnxPredictor(exported[fmt], num_threads=ncpu)
                    if variant != NO_TORCH:
                        # the export's sidecar names the size it was made at; the graph takes any
                        runner.aug = T.ResizeShortestEdge([size, size], max(1333, 2 * size))
                    fn = lambda: runner(image, keep_image=False)  # noqa: E731
                    if variant == NO_TORCH:
                        fn = lambda: runner(image)  # noqa: E731
                    if variant == "onnxruntime" and NO_TORCH in variants:
                        pair = no_torch_runner(exported[fmt], size, ncpu)
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            timings = timed_interleaved([fn, lambda: pair(image)], args.warmup, args.iters)
                        for v, (latency, out) in zip((variant, NO_TORCH), timings):
                            row = {"model": name, "size": size, "device": device, "variant": v, "threads": ncpu,
                                   "median_ms": round(latency * 1000, 1), "images_per_s": round(1 / latency, 2),
                                   "detections": count(out)}
                            rows.append(row)
                            print(format_row(row), flush=True)
                        continue
                else:
                    continue
                if variant == "channels_last":
                    model.to(memory_format=torch.channels_last)
                torch.set_num_threads(threads or default_threads)
                try:
                    if device.startswith("cuda"):
                        torch.cuda.reset_peak_memory_stats()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        latency, out = timed(fn, args.warmup, args.iters, sync)
                    row = {"model": name, "size": size, "device": device, "variant": variant,
                           "threads": threads if variant not in ("onnxruntime", NO_TORCH) else ncpu,
                           "median_ms": round(latency * 1000, 1), "images_per_s": round(1 / latency, 2),
                           "detections": count(out)}
                    if device.startswith("cuda"):
                        row["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
                except Exception as e:  # one variant failing must not lose the others
                    row = {"model": name, "size": size, "device": device, "variant": variant,
                           "error": f"{e.__class__.__name__}: {e}"[:300]}
                finally:
                    torch.set_num_threads(default_threads)
                    if variant == "channels_last":
                        model.to(memory_format=torch.contiguous_format)
                rows.append(row)
                print(format_row(row), flush=True)


def format_row(r):
    if "error" in r:
        return f"{r['model']:<14}{r['size']:>5}  {r['device']:<5}{r['variant']:<23}  error: {r['error']}"
    return (f"{r['model']:<14}{r['size']:>5}  {r['device']:<5}{r['variant']:<23}{str(r['threads']):>7}"
            f"{r['median_ms']:>11.1f}{r['images_per_s']:>8.2f}{r['detections']:>6}"
            + (f"{r['peak_gpu_mb']:>13}" if r.get("peak_gpu_mb") is not None else ""))


HEADER = f"{'model':<14}{'size':>5}  {'dev':<5}{'variant':<23}{'threads':>7}{'median ms':>11}{'img/s':>8}{'det':>6}{'peak GPU MB':>13}"


def processes_benchmark(counts, num_images, rounds, out):
    """predict.py on the same folder with each process count, interleaved; prints and writes a table."""
    import subprocess

    from segkit.data.atomic import write_json
    from segkit.data.sample import make_instance_sample

    times = {n: [] for n in counts}
    with tempfile.TemporaryDirectory(prefix="segkit_bench_") as tmp:
        weights = random_checkpoint("mini", tmp)
        make_instance_sample(os.path.join(tmp, "images"), num_images=num_images, size=(256, 192), seed=1)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        for r in range(rounds):
            for n in counts:
                cmd = [sys.executable, os.path.join(ROOT, "predict.py"), "--input", os.path.join(tmp, "images"),
                       "--output", os.path.join(tmp, f"out_{n}_{r}"), "--weights", weights, "--device", "cpu",
                       "--no-masks", "--quiet", "--num-gpus", str(n)]
                if n == 1:
                    cmd.remove("--num-gpus"), cmd.remove("1")  # the plain one-process path
                start = time.perf_counter()
                subprocess.run(cmd, check=True, env=env, capture_output=True)
                times[n].append(time.perf_counter() - start)
                print(f"round {r + 1}/{rounds}, {n} process(es): {times[n][-1]:.1f} s", flush=True)
    rows = [{"processes": n, "median_s": round(statistics.median(times[n]), 2),
             "images_per_s": round(num_images / statistics.median(times[n]), 3)} for n in counts]
    for row in rows:
        row["speedup"] = round(row["images_per_s"] / rows[0]["images_per_s"], 2)
    print(f"\n{'processes':>9}{'median s':>10}{'img/s':>8}{'speed-up':>10}")
    for row in rows:
        print(f"{row['processes']:>9}{row['median_s']:>10.1f}{row['images_per_s']:>8.2f}{row['speedup']:>10.2f}")
    write_json(out, {"meta": {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu_count": os.cpu_count(),
                              "images": num_images, "image_size": "256x192", "model": "mini, random weights",
                              "rounds": rounds, "note": "wall time of predict.py, start-up included"},
                     "results": rows})
    print(f"\nwrote {out}")
    return 0


DEPLOY_RUNTIMES = {  # name: (export_model format, int8)
    "eager": (None, False), "torchscript": ("torchscript", False), "ORT fp32": ("onnx", False),
    "ORT INT8": ("onnx", True), "OpenVINO fp32": ("openvino", False), "OpenVINO INT8": ("openvino", True),
}
# site-packages folders each runtime needs beyond numpy/opencv (today's exported predictors still use
# torch + detectron2 for pre/post-processing: counted in "torch stack")
RUNTIME_PACKAGES = {"eager": ["torch", "torchvision", "detectron2"], "torchscript": ["torch", "torchvision"],
                    "ORT fp32": ["onnxruntime"], "ORT INT8": ["onnxruntime"], "OpenVINO fp32": ["openvino"],
                    "OpenVINO INT8": ["openvino"]}
_RSS_WORKER = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
import cv2, torch
name, path, photo, threads = sys.argv[1:5]
torch.set_num_threads(int(threads))
from segkit.inference.onnx_predictor import load_exported
from segkit.inference.predictor import Predictor
if name == "eager":
    runner = Predictor.from_checkpoint(path, device="cpu", use_checkpoint_thresholds=False)
elif name == "torchscript":
    runner = load_exported(path)
else:
    runner = load_exported(path, num_threads=int(threads))
image = cv2.imread(photo)
for _ in range(5):
    runner(image, keep_image=False)
# VmHWM, not ru_maxrss: the latter starts at the parent's peak (this process is forked from it)
print("RSS", [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] / 1024)
"""


def package_mb(modules):
    import importlib.util

    total = 0
    for m in modules:
        spec = importlib.util.find_spec(m)
        for root in (spec.submodule_search_locations or []) if spec else []:
            for d, _, files in os.walk(root):
                total += sum(os.path.getsize(os.path.join(d, f)) for f in files if not os.path.islink(os.path.join(d, f)))
            libs = os.path.join(os.path.dirname(root), m + ".libs")  # manylinux wheels' vendored libraries
            if os.path.isdir(libs):
                total += sum(os.path.getsize(os.path.join(libs, f)) for f in os.listdir(libs))
    return total / 2**20


def deploy_benchmark(args):
    import subprocess

    import cv2
    import torch

    from segkit.data.atomic import write_json
    from segkit.inference.export import export_model, sidecar_path
    from segkit.inference.onnx_predictor import load_exported
    from segkit.inference.parity import val_dataset, _dataset_images
    from segkit.inference.predictor import Predictor

    torch.set_num_threads(args.threads)
    checkpoints = [w.split("=", 1)[-1] for w in args.deploy]
    exports = {}  # (checkpoint, runtime) -> path
    ap = {name: [] for name in DEPLOY_RUNTIMES}
    for ckpt in checkpoints:
        for name, (fmt, int8) in DEPLOY_RUNTIMES.items():
            if fmt is None:
                continue
            out = os.path.join(args.work, f"{os.path.basename(os.path.dirname(ckpt))}_{name.replace(' ', '_')}"
                               + {"torchscript": ".ts", "onnx": ".onnx", "openvino": ".xml"}[fmt])
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                exports[(ckpt, name)] = export_model(ckpt, fmt, output=out, int8=int8, check=False, force=True,
                                                     calibration_images=args.calibration_images)
            with open(sidecar_path(out), encoding="utf-8") as f:
                parity = json.load(f)["parity"]
            print(f"  {ckpt}: {name} exported and checked in {time.perf_counter() - t:.0f} s: segm AP "
                  f"{parity['segm_AP']} (torch {parity['segm_AP_torch']})", flush=True)
            ap[name].append({"segm_AP": parity["segm_AP"], "bbox_AP": parity["bbox_AP"]})
            if name == "torchscript":
                ap["eager"].append({"segm_AP": parity["segm_AP_torch"], "bbox_AP": parity["bbox_AP_torch"]})
    first = checkpoints[0]
    photo = args.photo
    if photo is None:
        predictor = Predictor.from_checkpoint(first, device="cpu", use_checkpoint_thresholds=False)
        _, path = _dataset_images(val_dataset(predictor.cfg))[0]
        photo = os.path.join(args.work, "photo_800x600.png")
        cv2.imwrite(photo, cv2.resize(cv2.imread(path), (800, 600), interpolation=cv2.INTER_AREA))
    image = cv2.imread(photo)
    runners = {}
    for name in DEPLOY_RUNTIMES:
        if name == "eager":
            runners[name] = Predictor.from_checkpoint(first, device="cpu", use_checkpoint_thresholds=False)
        elif name == "torchscript":
            runners[name] = load_exported(exports[(first, name)])
        else:
            runners[name] = load_exported(exports[(first, name)], num_threads=args.threads)
    times = {n: [] for n in runners}
    detections = {}
    for i in range(args.warmup + args.iters):
        for name, runner in runners.items():
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = runner(image, keep_image=False)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t)
            detections[name] = len(out)
    rows = []
    for name in DEPLOY_RUNTIMES:
        path = first if name == "eager" else exports[(first, name)]
        proc = subprocess.run([sys.executable, "-c", _RSS_WORKER, name, path, photo, str(args.threads)],
                              capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep
                                                                         + os.environ.get("PYTHONPATH", "")))
        rss = [float(x.split()[1]) for x in proc.stdout.splitlines() if x.startswith("RSS ")]
        t = sorted(times[name])
        q = statistics.quantiles(t, n=4) if len(t) > 1 else [t[0]] * 3
        segm = [a["segm_AP"] for a in ap[name] if a["segm_AP"] is not None]
        bbox = [a["bbox_AP"] for a in ap[name] if a["bbox_AP"] is not None]
        rows.append({"runtime": name, "median_ms": round(1000 * statistics.median(t), 1),
                     "p25_ms": round(1000 * q[0], 1), "p75_ms": round(1000 * q[2], 1),
                     "peak_rss_mb": round(rss[0]) if rss else None, "detections": detections[name],
                     "segm_AP": round(statistics.mean(segm), 2) if segm else None,
                     "segm_AP_sd": round(statistics.stdev(segm), 2) if len(segm) > 1 else None,
                     "bbox_AP": round(statistics.mean(bbox), 2) if bbox else None,
                     "segm_AP_per_checkpoint": segm,
                     "install_mb": round(package_mb(RUNTIME_PACKAGES[name])),
                     "install_packages": RUNTIME_PACKAGES[name]})
    ort = next(r for r in rows if r["runtime"] == "ORT fp32")["median_ms"]
    for r in rows:
        r["vs_ort_fp32"] = round(r["median_ms"] / ort, 2)
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
            "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "threads": args.threads, "photo": "800x600" if args.photo is None else photo,
            "checkpoints": checkpoints, "iters": args.iters, "warmup": args.warmup,
            "calibration_images": args.calibration_images,
            "load_average_at_end": os.getloadavg(),
            "note": "end to end: preprocessing, model, masks pasted at the input size; AP on each run's val split"}
    write_json(args.out, {"meta": meta, "results": rows})
    print("\n| runtime | latency median (IQR) ms | x ORT fp32 | peak RSS MB | segm AP (sd) | bbox AP | runtime install MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        sd = f" ({r['segm_AP_sd']:.1f})" if r["segm_AP_sd"] is not None else ""
        print(f"| {r['runtime']} | {r['median_ms']:.1f} ({r['p25_ms']:.1f}-{r['p75_ms']:.1f}) | {r['vs_ort_fp32']:.2f} | "
              f"{r['peak_rss_mb']} | {r['segm_AP']}{sd} | {r['bbox_AP']} | {r['install_mb']} |")
    print(f"\nwrote {args.out}")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--sizes", nargs="+", type=int, default=[512, 800])
    p.add_argument("--variants", nargs="+", default=CPU_VARIANTS, choices=sorted(set(CPU_VARIANTS + GPU_VARIANTS)))
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--weights", nargs="*", default=[], metavar="NAME=PATH",
                   help="a checkpoint for a model instead of random weights")
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--merge", action="store_true",
                   help="keep the rows of --out that this run does not measure again")
    p.add_argument("--processes", nargs="+", type=int, default=None, metavar="N",
                   help="instead: images/s of predict.py over a folder with N CPU processes each")
    p.add_argument("--images", type=int, default=24, help="with --processes: images in the folder")
    p.add_argument("--rounds", type=int, default=2, help="with --processes: interleaved rounds")
    p.add_argument("--deploy", nargs="+", default=None, metavar="NAME=CHECKPOINT",
                   help="instead: the deployment runtimes on these trained checkpoints (the first timed)")
    p.add_argument("--photo", default=None, help="with --deploy: the image to time (default: a val image at 800x600)")
    p.add_argument("--threads", type=int, default=2, help="with --deploy: threads of every runtime")
    p.add_argument("--calibration-images", type=int, default=32, help="with --deploy: INT8 calibration images")
    p.add_argument("--work", default=None, help="with --deploy: folder for the exports (default: a temporary one)")
    args = p.parse_args(argv)
    if args.deploy:
        if args.out == RESULTS:
            args.out = RESULTS.replace("infer.json", "infer_deploy.json")
        if args.work:
            os.makedirs(args.work, exist_ok=True)
            return deploy_benchmark(args)
        with tempfile.TemporaryDirectory(prefix="segkit_bench_") as args.work:
            return deploy_benchmark(args)
    if args.processes:
        out = args.out if args.out != RESULTS else RESULTS.replace("infer.json", "infer_processes.json")
        return processes_benchmark(args.processes, args.images, args.rounds, out)

    import torch

    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    variants = list(args.variants)
    if "cuda" in devices and "fp16" not in variants:
        variants.append("fp16")
    given = dict(w.split("=", 1) for w in args.weights)
    rows = []
    started = time.time()
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory(prefix="segkit_bench_") as tmp:
        for name in args.models:
            weights = given.get(name) or random_checkpoint(name, tmp)
            run_model(name, weights, args.sizes, devices, variants, args, tmp, rows)
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(), "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "iters": args.iters, "warmup": args.warmup,
        "weights": {n: (given.get(n) or "random init (timing only)") for n in args.models},
        "seconds": round(time.time() - started),
        "note": "end-to-end single-image latency: preprocessing, model, masks pasted at the input size",
    }
    runs = [meta]
    if args.merge and os.path.isfile(args.out):
        with open(args.out, encoding="utf-8") as f:
            old = json.load(f)
        key = lambda r: (r["model"], r["size"], r["device"], r["variant"])  # noqa: E731
        measured = {key(r) for r in rows}
        rows = [r for r in old.get("results", []) if key(r) not in measured] + rows
        variant_order = CPU_VARIANTS + GPU_VARIANTS
        rows.sort(key=lambda r: (list(MODELS).index(r["model"]), r["device"], r["size"],
                                 variant_order.index(r["variant"])))
        runs = old.get("runs", [old.get("meta")]) + [meta]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "runs": [r for r in runs if r], "results": rows}, f, indent=2)
    print(f"\n{HEADER}\n" + "\n".join(format_row(r) for r in rows))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
