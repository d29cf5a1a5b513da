"""Large images with small objects: whole-image vs tiled prediction vs crop training + tiled
prediction, on a generated set.

    python benchmarks/tiling.py                       # about 6 minutes on 2 cores
    python benchmarks/tiling.py --budget 60 --tile 320

The set: the sample generator's 320 x 240 images (objects 14-110 px) laid out 6 x 4 into mosaics
of 1920 x 960 px holding about 100 objects each (4 to train on, 2 to test). Two Lite0 Mask R-CNNs
(configs/mask_rcnn_lite0_FPN.yaml, ImageNet-pretrained) train for the same wall-clock ``--budget``:

- ``whole``: the config as it is: each mosaic resized to the config's 192-240 px short side;
- ``crops``: ``INPUT.CROP`` (absolute ``--tile`` px) before a resize to that same size, so objects
  keep their pixel size (config keys only, see docs/training.md).

Then, on the test mosaics: ``whole`` predicted whole (the config's test size), ``whole`` on tiles,
``crops`` on tiles (``--tile`` px, ``--overlap``). Each prediction runs in its own process:
segm / bbox AP (pycocotools, maxDets 300), seconds per megapixel (median of the images, after a
warm-up), peak memory growth (ru_maxrss during prediction, over the process after loading).
Prints a table and writes benchmarks/results/tiling.json.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "tiling.json")
CONFIG = os.path.join(ROOT, "configs", "mask_rcnn_lite0_FPN.yaml")
GRID = (6, 4)  # sub-images per mosaic, across and down
SUB = (320, 240)
DENSE = ["TEST.DETECTIONS_PER_IMAGE", "300", "MODEL.RPN.POST_NMS_TOPK_TEST", "2000"]


def make_mosaics(work, n_train=4, n_test=2, seed=5):
    """COCO folder (images/, train.json, val.json, trainval.json) of mosaics; returns its path."""
    import numpy as np
    from PIL import Image

    from segkit.data.atomic import write_json
    from segkit.data.coco_convert import convert
    from segkit.data.sample import make_instance_sample

    per = GRID[0] * GRID[1]
    make_instance_sample(os.path.join(work, "labelme"), num_images=per * (n_train + n_test), size=SUB, seed=seed)
    small = os.path.join(work, "small")
    result = convert(os.path.join(work, "labelme"), small, val_fraction=0.2, seed=0, progress=False)
    if result.exit_code:
        raise SystemExit(result.reason)
    with open(os.path.join(small, "trainval.json"), encoding="utf-8") as f:
        coco = json.load(f)
    images = sorted(coco["images"], key=lambda im: im["file_name"])
    out = os.path.join(work, "large")
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    splits = {"train": [], "val": []}
    annotations = {"train": [], "val": []}
    for m in range(n_train + n_test):
        split = "train" if m < n_train else "val"
        mosaic = np.zeros((SUB[1] * GRID[1], SUB[0] * GRID[0], 3), np.uint8)
        image_id = len(splits[split]) + 1
        for k, im in enumerate(images[m * per:(m + 1) * per]):
            ox, oy = (k % GRID[0]) * SUB[0], (k // GRID[0]) * SUB[1]
            mosaic[oy:oy + SUB[1], ox:ox + SUB[0]] = np.asarray(
                Image.open(os.path.join(small, "images", im["file_name"])).convert("RGB"))
            for a in coco["annotations"]:
                if a["image_id"] != im["id"] or a.get("iscrowd"):
                    continue
                x, y, w, h = a["bbox"]
                annotations[split].append({
                    **a, "id": len(annotations[split]) + 1, "image_id": image_id, "bbox": [x + ox, y + oy, w, h],
                    "segmentation": [[v + (ox if j % 2 == 0 else oy) for j, v in enumerate(p)] for p in a["segmentation"]]})
        name = f"mosaic_{m:02d}.png"
        Image.fromarray(mosaic).save(os.path.join(out, "images", name))
        splits[split].append({"id": image_id, "file_name": name, "height": mosaic.shape[0], "width": mosaic.shape[1]})
    for split in ("train", "val"):
        write_json(os.path.join(out, f"{split}.json"), {"images": splits[split], "annotations": annotations[split],
                                                        "categories": coco["categories"]})
    write_json(os.path.join(out, "trainval.json"), {"images": splits["train"], "annotations": annotations["train"],
                                                    "categories": coco["categories"]})  # training only
    return out


def crop_opts(tile):
    return ["INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE", "absolute", "INPUT.CROP.SIZE", f"({tile}, {tile})",
            "INPUT.MIN_SIZE_TRAIN", f"({tile},)", "INPUT.MAX_SIZE_TRAIN", "100000"]


def train(data, out, budget, extra, iters=None):
    """One model for ``budget`` seconds of wall clock, or for ``iters`` iterations (a fair comparison
    on a machine shared with other work, where a budget buys fewer iterations)."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    if iters:
        flags, length = [], ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", f"({int(0.8 * iters)},)"]
    else:
        flags, length = ["--time-budget", str(budget)], ["SOLVER.MAX_ITER", "100000", "SOLVER.STEPS", "(99999,)"]
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", CONFIG, *flags,
           "--exist-ok", "DATASETS.DATA_DIR", data, "OUTPUT_DIR", out, "DATASETS.TRAIN", "('mydata_train',)",
           "DATASETS.TEST", "()", "TEST.EVAL_PERIOD", "0", "SOLVER.EPOCHS", "0", *length,
           "DATALOADER.NUM_WORKERS", "0", "INPUT.AUG.PREVIEW_BATCHES", "0", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"training failed:\n{proc.stderr[-3000:]}")
    return os.path.join(out, "model_final.pth")


def crops_with_objects(data, tile, n=200):
    """Fraction of training crops (INPUT.CROP, detectron2's RandomCrop) holding an object."""
    from detectron2.data import DatasetCatalog

    from segkit.data.augmentation import build_train_mapper
    from segkit.data.catalog import register_data_dir
    from segkit.modeling.config import get_segkit_cfg

    cfg = get_segkit_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(["DATASETS.DATA_DIR", data, *crop_opts(tile)])
    register_data_dir(data)
    dicts = DatasetCatalog.get("mydata_train")
    mapper = build_train_mapper(cfg)
    held = sum(len(mapper(dicts[i % len(dicts)])["instances"]) > 0 for i in range(n))
    return held / n


PREDICT_SCRIPT = r"""
import json, os, resource, statistics, sys, time
import torch
from pycocotools.coco import COCO
from segkit.inference.coco_results import coco_results
from segkit.inference.image_io import to_rgb_uint8
from segkit.inference.predictor import Predictor

weights, gt_json, image_dir, opts = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
predictor = Predictor.from_checkpoint(weights, device="cpu", confidence_threshold=0.05, opts=opts)
gt = COCO(gt_json)
images = [(im, to_rgb_uint8(os.path.join(image_dir, im["file_name"]))) for im in gt.dataset["images"]]
predictor(images[0][1][:320, :320], rgb=True)  # warm-up
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
results, per_mp = [], []
for im, rgb in images:
    start = time.perf_counter()
    pred = predictor(rgb, rgb=True, keep_image=False)
    entries = coco_results(pred, im["id"])
    per_mp.append((time.perf_counter() - start) / (rgb.shape[0] * rgb.shape[1] / 1e6))
    results += entries
peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"results": results, "s_per_mp": statistics.median(per_mp), "peak_mb": peak}))
"""


def predict_and_score(weights, data, opts):
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", PREDICT_SCRIPT, weights, os.path.join(data, "val.json"),
                           os.path.join(data, "images"), json.dumps(DENSE + opts)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"prediction failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    scores = {}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(os.path.join(data, "val.json"))
        for kind in ("segm", "bbox"):
            if not out["results"]:
                scores[kind] = 0.0
                continue
            e = COCOeval(gt, gt.loadRes(out["results"]), kind)
            e.params.maxDets = [1, 10, 300]
            e.evaluate()
            e.accumulate()
            # AP@[.5:.95] at 300 detections: summarize()'s first line is fixed to maxDets=100 and
            # says -1 when 100 is not among params.maxDets.
            precision = e.eval["precision"][:, :, :, 0, -1]  # IoU x recall x class, area all, 300 dets
            valid = precision[precision > -1]
            scores[kind] = round(100 * float(valid.mean()), 1) if valid.size else 0.0
    return {"segm_AP": scores["segm"], "bbox_AP": scores["bbox"], "instances": len(out["results"]),
            "s_per_mp": round(out["s_per_mp"], 2), "peak_mb": round(out["peak_mb"], 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=int, default=100, help="training seconds per model (default 100)")
    p.add_argument("--iters", type=int, default=None,
                   help="train each model this many iterations instead of --budget seconds")
    p.add_argument("--tile", type=int, default=320, help="tile and crop size in px (default 320)")
    p.add_argument("--overlap", type=float, default=0.2, help="tile overlap (default 0.2)")
    p.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    p.add_argument("--reuse", action="store_true", help="keep models a previous run trained in --work (only predict)")
    args = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    from segkit.data.atomic import write_json

    work = args.work or tempfile.mkdtemp(prefix="segkit_tiling_")
    data = make_mosaics(work)
    held = crops_with_objects(data, args.tile)
    print(f"mosaics in {data}; {100 * held:.0f}% of {args.tile} px training crops hold an object", file=sys.stderr)
    trained = {}
    for name, extra in (("whole", []), ("crops", crop_opts(args.tile))):
        done = os.path.join(work, name, "model_final.pth")
        trained[name] = done if args.reuse and os.path.isfile(done) else train(
            data, os.path.join(work, name), args.budget, extra, args.iters)
    whole, crops = trained["whole"], trained["crops"]
    tiles = ["TEST.TILE_SIZE", str(args.tile), "TEST.TILE_OVERLAP", str(args.overlap)]
    rows = [("whole-image training, whole-image prediction", whole, []),
            ("whole-image training, tiled prediction", whole, tiles),
            ("crop training, tiled prediction", crops, tiles)]
    table = []
    for name, weights, opts in rows:
        table.append({"variant": name, **predict_and_score(weights, data, opts)})
        print(f"done: {name}", file=sys.stderr)
    header = f"{'variant':48s} {'segm AP':>8s} {'bbox AP':>8s} {'inst':>5s} {'s/MP':>6s} {'peak MB':>8s}"
    print(header)
    for r in table:
        print(f"{r['variant']:48s} {r['segm_AP']:8.1f} {r['bbox_AP']:8.1f} {r['instances']:5d} "
              f"{r['s_per_mp']:6.2f} {r['peak_mb']:8.1f}")
    write_json(RESULTS, {"date": datetime.date.today().isoformat(), "machine": platform.platform(),
                         "cpus": os.cpu_count(), "budget_s": None if args.iters else args.budget, "iters": args.iters, "tile": args.tile,
                         "overlap": args.overlap, "crops_with_objects": round(held, 3), "rows": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
