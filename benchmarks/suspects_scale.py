"""The suspect finder on many large photos: peak memory and seconds per image.

    python benchmarks/suspects_scale.py                     # 10 and 30 photos (a few minutes)
    python benchmarks/suspects_scale.py --images 1000       # the full run
    python benchmarks/suspects_scale.py --images 30 --weights output/mini/model_final.pth

The photos: the sample generator's 320 x 240 images (40, converted as benchmarks/budget.py does)
scaled up 12.5 times to 4000 x 3000 px (12 MP), their polygons with them, repeated to ``--images``.
The model: ``--weights`` (a checkpoint), else the mini Mask R-CNN (configs/mask_rcnn_R_18_FPN_mini.yaml)
with random weights and ``TEST.DETECTIONS_PER_IMAGE`` 100: an untrained model scores every class
near 1/4, so each photo gets its 100 predictions above the finder's 0.05 - the most the finder
keeps, the worst case for its memory.

Each size runs ``python -m segkit.loop.suspects_cli DATA --split trainval --folds 0 --weights W``
(prediction, label losses, calibration, judging and every output) in its own process: peak RSS is
that process's ru_maxrss (os.wait4), seconds per image its wall time (start-up and model loading
included) over the number of photos. The finder holds the full-size masks of one photo at a time,
so the peak should not grow with the number of photos. Prints a table and writes
benchmarks/results/suspects_scale.json.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from budget import sample_data  # noqa: E402  (benchmarks/ is the script's folder)

RESULTS = os.path.join(ROOT, "benchmarks", "results", "suspects_scale.json")
MINI = os.path.join(ROOT, "configs", "mask_rcnn_R_18_FPN_mini.yaml")
SCALE = 12.5  # 320 x 240 -> 4000 x 3000
DETECTIONS = 100


def random_mini_checkpoint(path, class_names, detections=DETECTIONS):
    """Our checkpoint format at ``path``: the mini config with random weights (seed 0) and up to
    ``detections`` per image (None: the config's)."""
    import torch
    from detectron2.modeling import build_model

    from segkit.modeling.config import get_segkit_cfg

    cfg = get_segkit_cfg()
    cfg.merge_from_file(MINI)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(class_names)
    if detections is not None:
        cfg.TEST.DETECTIONS_PER_IMAGE = detections
    torch.manual_seed(0)
    model = build_model(cfg)
    torch.save({"model": model.state_dict(), "config": cfg.dump(), "class_names": list(class_names),
                "meta_architecture": cfg.MODEL.META_ARCHITECTURE, "iteration": 0}, path)
    return path


def make_photos(work, n):
    """``work/photos_<n>``: a data folder of ``n`` 12 MP photos (images shared by every size)."""
    import cv2

    from segkit.data.atomic import write_json
    from segkit.data.layout import image_root, split_json

    small = sample_data(work)
    with open(split_json(small, "trainval"), encoding="utf-8") as f:
        coco = json.load(f)
    sources = sorted(coco["images"], key=lambda im: im["file_name"])
    shared = os.path.join(work, "photos")
    os.makedirs(shared, exist_ok=True)
    images, annotations = [], []
    for k in range(n):
        im = sources[k % len(sources)]
        w, h = round(im["width"] * SCALE), round(im["height"] * SCALE)
        name = f"photo_{k:05d}.jpg"
        if not os.path.isfile(os.path.join(shared, name)):
            img = cv2.resize(cv2.imread(os.path.join(image_root(small), im["file_name"])), (w, h))
            cv2.imwrite(os.path.join(shared, name), img)
        images.append({"id": k + 1, "file_name": name, "width": w, "height": h})
        for a in coco["annotations"]:
            if a["image_id"] == im["id"]:
                annotations.append(dict(a, id=len(annotations) + 1, image_id=k + 1,
                                        segmentation=[[v * SCALE for v in p] for p in a["segmentation"]],
                                        bbox=[v * SCALE for v in a["bbox"]], area=a["area"] * SCALE * SCALE))
    data = os.path.join(work, f"photos_{n}")
    os.makedirs(data, exist_ok=True)
    link = image_root(data)
    if not os.path.islink(link):
        os.symlink(os.path.abspath(shared), link)
    write_json(split_json(data, "trainval"), {"images": images, "annotations": annotations,
                                              "categories": coco["categories"]})
    return data, len(annotations), [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]


def run_finder(data, weights, out, log):
    """(seconds, peak RSS in MB, exit status) of the finder on ``data``, in its own process."""
    cmd = [sys.executable, "-m", "segkit.loop.suspects_cli", data, "--split", "trainval", "--folds", "0",
           "--weights", weights, "--output", out]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - start, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, nargs="+", default=[10, 30],
                   help="numbers of photos, one finder run each (default 10 30; the full run: 1000)")
    p.add_argument("--weights", default=None,
                   help="checkpoint that judges (default: the mini config with random weights, 100 detections)")
    p.add_argument("--work", default=os.path.join(ROOT, "output", "bench_suspects_scale"),
                   help="working folder: sample, photos, finder outputs (default output/bench_suspects_scale)")
    args = p.parse_args(argv)
    from segkit.data.atomic import write_json

    os.makedirs(args.work, exist_ok=True)
    rows = []
    for n in args.images:
        data, labels, names = make_photos(args.work, n)
        weights = args.weights or random_mini_checkpoint(os.path.join(args.work, "random_mini.pth"), names)
        out = os.path.join(args.work, f"suspects_{n}")
        seconds, peak, status = run_finder(data, weights, out, os.path.join(args.work, f"log_{n}.txt"))
        if status:
            raise SystemExit(f"the finder failed on {n} photos (exit {status}); see {args.work}/log_{n}.txt")
        with open(os.path.join(out, "suspects.json"), encoding="utf-8") as f:
            suspects = len(json.load(f)["suspects"])
        rows.append({"images": n, "megapixels": 12.0, "labels": labels, "suspects": suspects,
                     "peak_rss_mb": round(peak), "seconds": round(seconds, 1),
                     "seconds_per_image": round(seconds / n, 2)})
        print(f"done: {n} photos", file=sys.stderr)
    model = args.weights or f"mini config, random weights, {DETECTIONS} detections per photo"
    print(f"\nSuspect finder on 4000 x 3000 photos ({model}):\n")
    print("| photos | labels | suspects | peak RSS (MB) | seconds | seconds per photo |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['images']} | {r['labels']} | {r['suspects']} | {r['peak_rss_mb']} | {r['seconds']} | "
              f"{r['seconds_per_image']} |")
    write_json(RESULTS, {"date": datetime.date.today().isoformat(), "machine": platform.platform(),
                         "cpus": os.cpu_count(), "model": model, "rows": rows})
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
