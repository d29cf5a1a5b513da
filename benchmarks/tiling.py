"""Large images with small objects: whole-image vs tiled prediction vs crop training + tiled
prediction, on a generated set; and (``--set strips``) issue 33's targets on dense strips of real photos.

    python benchmarks/tiling.py                       # about 6 minutes on 2 cores
    python benchmarks/tiling.py --budget 60 --tile 320
    python benchmarks/tiling.py --set strips --seeds 0 1 2 --object-prob 0.5 --work /tmp/strips

``--set strips``: the shared controllers frames (real 640 x 352 photos, 3 objects each) scaled to
320 x 176 and laid 16 across and 2 down into strips of 5,120 x 352 px holding 96 objects of
40-130 px, each frame flipped at random; 10 train strips from the author's train/ frames, 4 val
strips from its 11 test/ frames (a split by time). For each seed the recipe of docs/large-images.md
(Lite0 on 320 px crops at native resolution, ``TEST.TILE_SIZE 320``, the config's default schedule
with its tiled evaluations) trains through train_net.py; the log's last line gives the share of
the wall time evaluation took. Then on the val strips: tiled prediction against a native-size
single pass of the same model (the strip at its own size, 300 detections), AP at up to
``TEST.TILE_DETECTIONS_PER_IMAGE`` (10,000) detections, score 0.05. For the first seed,
``predict.py --tile 320`` runs through the CLI in its own process on the val strips laid into one
12,000 x 12,000 image (7,548 objects; the checkpoint's thresholds, as a user runs it): peak RSS
(its VmHWM), instances against the truth, segm AP against the val strips' at the same thresholds,
tiles per second. ``--object-prob`` trains the first seed again with ``INPUT.CROP.OBJECT_PROB``.

The generated set:

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

from peak_rss import run_with_peak_rss  # benchmarks/ is the script's folder

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
threshold = None if sys.argv[5] == "stored" else float(sys.argv[5])
predictor = Predictor.from_checkpoint(weights, device="cpu", confidence_threshold=threshold, opts=opts)
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


def coco_ap(gt_json, results, max_dets=300):
    """{"segm": AP, "bbox": AP} (pycocotools, AP@[.5:.95] at up to ``max_dets`` detections per image)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    scores = {}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_json)
        for kind in ("segm", "bbox"):
            if not results:
                scores[kind] = 0.0
                continue
            e = COCOeval(gt, gt.loadRes(results), kind)
            e.params.maxDets = [1, 10, max_dets]
            # Only the "all" area range is read below; the others would quadruple the matching, a
            # Python loop over detections x objects that takes minutes on the 7,548-object mosaic.
            e.params.areaRng, e.params.areaRngLbl = [[0, 1e10]], ["all"]
            e.evaluate()
            e.accumulate()
            # AP@[.5:.95] at max_dets detections: summarize()'s first line is fixed to maxDets=100 and
            # says -1 when 100 is not among params.maxDets.
            precision = e.eval["precision"][:, :, :, 0, -1]  # IoU x recall x class, area all, max_dets
            valid = precision[precision > -1]
            scores[kind] = round(100 * float(valid.mean()), 1) if valid.size else 0.0
    return scores


def predict_and_score(weights, data, opts, dense=True, max_dets=300, threshold="0.05"):
    """Predict the val images in a process of their own (``threshold``: a score, or "stored" for
    the checkpoint's thresholds as predict.py uses them) and score them."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", PREDICT_SCRIPT, weights, os.path.join(data, "val.json"),
                           os.path.join(data, "images"), json.dumps((DENSE if dense else []) + opts), threshold],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"prediction failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    scores = coco_ap(os.path.join(data, "val.json"), out["results"], max_dets)
    return {"segm_AP": scores["segm"], "bbox_AP": scores["bbox"], "instances": len(out["results"]),
            "s_per_mp": round(out["s_per_mp"], 2), "peak_mb": round(out["peak_mb"], 1)}


# ---- --set strips: dense long strips of real photos ---------------------------------------------
FRAME_SCALE = 0.5  # controllers frames 640 x 352 -> 320 x 176, objects 40-130 px
STRIP_GRID = (16, 2)  # frames across and down: 5,120 x 352 px, 96 objects
MOSAIC_SIDE = 12_000


def scaled_frames(folder):
    """[(RGB array, [(label, [x, y, ...])])] of a LabelMe folder, scaled by FRAME_SCALE."""
    import numpy as np
    from PIL import Image

    from object_crop import read_frames

    out = []
    for image, shapes in read_frames(folder):
        h, w = image.shape[:2]
        size = (round(w * FRAME_SCALE), round(h * FRAME_SCALE))
        small = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
        out.append((small, [(label, [v * FRAME_SCALE for v in poly]) for label, poly in shapes]))
    return out


def draw_picks(rng, n_frames, rows, cols):
    """rows x cols of (frame index, horizontal flip, vertical flip)."""
    return [[(int(rng.integers(n_frames)), bool(rng.integers(2)), bool(rng.integers(2))) for _ in range(cols)]
            for _ in range(rows)]


def render(picks, frames, height, width, labels):
    """The image of a grid of picks (frames edge to edge from the top left) and its objects
    [(category id, polygon)]."""
    import numpy as np

    fh, fw = frames[0][0].shape[:2]
    image = np.zeros((height, width, 3), np.uint8)
    objects = []
    for r, row in enumerate(picks):
        for c, (index, hflip, vflip) in enumerate(row):
            frame, shapes = frames[index]
            ox, oy = c * fw, r * fh
            image[oy:oy + fh, ox:ox + fw] = frame[::-1 if vflip else 1, ::-1 if hflip else 1]
            for label, poly in shapes:
                xs = [fw - x if hflip else x for x in poly[0::2]]
                ys = [fh - y if vflip else y for y in poly[1::2]]
                objects.append((labels.index(label) + 1, [v for xy in zip(xs, ys) for v in (xy[0] + ox, xy[1] + oy)]))
    return image, objects


def coco_annotations(objects, image_id, start_id=1):
    out = []
    for k, (category, poly) in enumerate(objects):
        xs, ys = poly[0::2], poly[1::2]
        box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        out.append({"id": start_id + k, "image_id": image_id, "category_id": category, "segmentation": [poly],
                    "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    return out


def make_strips(work, n_train=10, n_val=4, seed=0):
    """COCO folder (images/, train.json, val.json, trainval.json) of dense strips of real photos,
    and a folder mosaic/ (images/mosaic.png, mosaic.json): the val strips laid into one
    MOSAIC_SIDE x MOSAIC_SIDE image. Returns (strips folder, mosaic folder).

    Each strip is STRIP_GRID frames edge to edge, each a controllers frame (3 objects) scaled by
    FRAME_SCALE and flipped at random (horizontally, vertically). Train strips draw from the
    author's train/ frames, val strips from test/ (the split by time; its 11 frames recur in
    different places and flips). A mosaic row holds two val strips and the first frames of a
    third, up to the mosaic's width; the rows take the val strips in turn."""
    import numpy as np
    from PIL import Image

    from object_crop import CONTROLLERS
    from segkit.data.atomic import write_json

    if not os.path.isdir(CONTROLLERS):
        raise SystemExit(f"{CONTROLLERS}: the shared controllers photos are needed")
    rng = np.random.default_rng(seed)
    frames = {"train": scaled_frames(os.path.join(CONTROLLERS, "train")),
              "val": scaled_frames(os.path.join(CONTROLLERS, "test"))}
    labels = sorted({label for _, shapes in frames["train"] for label, _ in shapes})
    categories = [{"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(labels)]
    fh, fw = frames["train"][0][0].shape[:2]
    cols, rows = STRIP_GRID
    out = os.path.join(work, "strips")
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    docs, val_picks = {}, []
    for split, n in (("train", n_train), ("val", n_val)):
        images, annotations = [], []
        for k in range(n):
            picks = draw_picks(rng, len(frames[split]), rows, cols)
            if split == "val":
                val_picks.append(picks)
            image, objects = render(picks, frames[split], rows * fh, cols * fw, labels)
            name = f"{split}_{k:02d}.png"
            Image.fromarray(image).save(os.path.join(out, "images", name))
            images.append({"id": k + 1, "file_name": name, "height": image.shape[0], "width": image.shape[1]})
            annotations += coco_annotations(objects, k + 1, len(annotations) + 1)
        docs[split] = {"images": images, "annotations": annotations, "categories": categories}
        write_json(os.path.join(out, f"{split}.json"), docs[split])
    write_json(os.path.join(out, "trainval.json"), docs["train"])  # training only

    mosaic = os.path.join(work, "mosaic")
    os.makedirs(os.path.join(mosaic, "images"), exist_ok=True)
    per_row, strip_rows = MOSAIC_SIDE // fw, MOSAIC_SIDE // (rows * fh)
    grid = []
    for r in range(strip_rows):
        row = [[] for _ in range(rows)]
        k = 2 * r
        while len(row[0]) < per_row:
            picks = val_picks[k % n_val]
            take = min(cols, per_row - len(row[0]))
            for d in range(rows):
                row[d] += picks[d][:take]
            k += 1
        grid += row
    image, objects = render(grid, frames["val"], MOSAIC_SIDE, MOSAIC_SIDE, labels)
    Image.fromarray(image).save(os.path.join(mosaic, "images", "mosaic.png"), compress_level=1)
    del image
    write_json(os.path.join(mosaic, "mosaic.json"), {
        "images": [{"id": 1, "file_name": "mosaic.png", "height": MOSAIC_SIDE, "width": MOSAIC_SIDE}],
        "annotations": coco_annotations(objects, 1), "categories": categories})
    return out, mosaic


RECIPE_TILE = 320
# The native-size single pass on a 5,120 x 352 strip: the strip at its own size, enough proposals
# and detections for its 96 objects.
NATIVE = ["INPUT.MIN_SIZE_TEST", "352", "INPUT.MAX_SIZE_TEST", "5120", "TEST.DETECTIONS_PER_IMAGE", "300",
          "MODEL.RPN.PRE_NMS_TOPK_TEST", "2000", "MODEL.RPN.POST_NMS_TOPK_TEST", "2000"]
MAX_DETS = 10_000  # TEST.TILE_DETECTIONS_PER_IMAGE: the per-image limit tiled evaluation uses as maxDets



def train_recipe(data, out, seed, extra=()):
    """The recipe of docs/large-images.md with the config's default schedule (SOLVER.EPOCHS,
    evaluation on the val strips during training). Returns (weights, wall s, eval summary)."""
    import time

    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", CONFIG, "--exist-ok",
           "DATASETS.DATA_DIR", data, "OUTPUT_DIR", out, *crop_opts(RECIPE_TILE),
           "TEST.TILE_SIZE", str(RECIPE_TILE), "SEED", str(seed), *extra]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"training failed:\n{proc.stderr[-3000:]}")
    return os.path.join(out, "model_final.pth"), round(wall), evaluation_cost(proc.stdout + proc.stderr)


def evaluation_cost(log):
    """What the training log's last line says evaluation cost (engine/hooks.py EvalShare)."""
    import re

    found = re.search(r"Evaluation took (\d+) s of the training's (\d+) s \((\d+)%; (.*)\)\.$", log, re.MULTILINE)
    hooks = re.search(r"Total training time: (\S+) \((\S+) on hooks\)", log)
    summary = {"eval_s": int(found.group(1)), "train_loop_s": int(found.group(2)), "eval_share": int(found.group(3)) / 100,
               "runs": found.group(4)} if found else {}
    if hooks:
        summary["detectron2_total_and_hooks"] = [hooks.group(1), hooks.group(2)]
    return summary


def predict_mosaic(weights, mosaic, out, tile):
    """predict.py --tile on the mosaic through the CLI in a process of its own (the checkpoint's
    thresholds, as a user runs it): its peak RSS, wall time, tiles/s, count against the truth and AP."""
    import time

    from segkit.modeling.tiling import tile_windows

    import shutil

    shutil.rmtree(out, ignore_errors=True)  # the benchmark's own folder in --work, from an earlier run
    image = os.path.join(mosaic, "images", "mosaic.png")
    gt_json = os.path.join(mosaic, "mosaic.json")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    started = time.perf_counter()
    proc, peak_mb = run_with_peak_rss(os.path.join(ROOT, "predict.py"), "--input", image, "--output", out,
                                      "--weights", weights, "--tile", str(tile), "--quiet", cwd=ROOT, env=env)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"predict.py failed:\n{proc.stderr[-3000:]}")
    with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
        results = json.load(f)
    with open(gt_json, encoding="utf-8") as f:
        truth = len(json.load(f)["annotations"])
    for r in results:
        r["image_id"] = 1  # the mosaic's id in its COCO file
    scores = coco_ap(gt_json, results, MAX_DETS)
    tiles = len(tile_windows(MOSAIC_SIDE, MOSAIC_SIDE, tile, 0.2))
    return {"objects": truth, "instances": len(results), "count_error": round((len(results) - truth) / truth, 4),
            "segm_AP": scores["segm"], "bbox_AP": scores["bbox"], "peak_rss_mb": peak_mb, "wall_s": round(wall),
            "tiles": tiles, "tiles_per_s": round(tiles / wall, 2),
            "summary_line": next((l for l in proc.stdout.splitlines() if "instance(s)" in l), "")}


def spread(values):
    import statistics

    return {"mean": round(statistics.mean(values), 1),
            "stdev": round(statistics.stdev(values), 1) if len(values) > 1 else 0.0, "runs": values}


def run_strips(args):
    from segkit.data.atomic import write_json

    work = args.work or tempfile.mkdtemp(prefix="segkit_strips_")
    if args.reuse and os.path.isfile(os.path.join(work, "mosaic", "mosaic.json")):
        data, mosaic = os.path.join(work, "strips"), os.path.join(work, "mosaic")
    else:
        data, mosaic = make_strips(work)
    tile = ["TEST.TILE_SIZE", str(RECIPE_TILE)]
    runs = []
    variants = [(seed, 0.0) for seed in args.seeds] + [(args.seeds[0], p) for p in args.object_prob]
    for seed, prob in variants:
        out = os.path.join(work, f"s{seed}" + (f"_p{prob:g}" if prob else ""))
        extra = ["INPUT.CROP.OBJECT_PROB", str(prob)] if prob else []
        done = os.path.join(out, "model_final.pth")
        trained = os.path.join(out, "benchmark_train.json")
        finished = os.path.join(out, "benchmark_run.json")
        if args.reuse and os.path.isfile(finished):
            with open(finished, encoding="utf-8") as f:
                run = json.load(f)  # trained and scored by an earlier run in --work
            with open(os.path.join(out, "log.txt"), encoding="utf-8") as f:
                run["evaluation"] = evaluation_cost(f.read())
            runs.append(run)
            continue
        if args.reuse and os.path.isfile(done) and os.path.isfile(trained):
            with open(trained, encoding="utf-8") as f:
                run = json.load(f)
            with open(os.path.join(out, "log.txt"), encoding="utf-8") as f:
                run["evaluation"] = evaluation_cost(f.read())
        else:
            weights, wall, evals = train_recipe(data, out, seed, extra)
            run = {"seed": seed, "object_prob": prob, "train_s": wall, "evaluation": evals}
            write_json(trained, run)
        run["tiled"] = predict_and_score(done, data, tile, dense=False, max_dets=MAX_DETS)
        if not prob:
            run["native"] = predict_and_score(done, data, NATIVE, dense=False, max_dets=MAX_DETS)
        print(f"seed {seed} OBJECT_PROB {prob:g}: tiled segm {run['tiled']['segm_AP']}, "
              f"native {run.get('native', {}).get('segm_AP')}; {run['evaluation']}", file=sys.stderr, flush=True)
        if args.mosaic and seed == args.seeds[0] and not prob:
            run["strips_at_stored_thresholds"] = predict_and_score(done, data, tile, dense=False, max_dets=MAX_DETS,
                                                                   threshold="stored")
            run["mosaic"] = predict_mosaic(done, mosaic, os.path.join(work, "mosaic_out"), RECIPE_TILE)
            print(f"mosaic: {run['mosaic']}", file=sys.stderr, flush=True)
        write_json(finished, run)
        runs.append(run)
    plain = [r for r in runs if not r["object_prob"]]
    table = {k: {m: spread([r[k][m] for r in plain]) for m in ("segm_AP", "bbox_AP")} for k in ("tiled", "native")}
    print(f"\nstrips ({len(plain)} seed(s)) | segm AP (mean ± sd) | bbox AP (mean ± sd) | instances (seed {args.seeds[0]})")
    for k, name in (("tiled", f"recipe, {RECIPE_TILE} px tiles"), ("native", "same model, native-size single pass")):
        print(f"{name:36s} | {table[k]['segm_AP']['mean']:6.1f} ± {table[k]['segm_AP']['stdev']:<4.1f}"
              f"      | {table[k]['bbox_AP']['mean']:6.1f} ± {table[k]['bbox_AP']['stdev']:<4.1f}"
              f"      | {plain[0][k]['instances']}")
    for r in runs:
        e = r["evaluation"]
        print(f"seed {r['seed']} OBJECT_PROB {r['object_prob']:g}: training {r['train_s']} s, evaluation "
              f"{100 * e.get('eval_share', float('nan')):.0f}% of it ({e.get('runs', '?')}); tiled segm {r['tiled']['segm_AP']}")
    m = plain[0].get("mosaic")
    if m:
        own = plain[0]["strips_at_stored_thresholds"]["segm_AP"]
        print(f"mosaic {MOSAIC_SIDE} x {MOSAIC_SIDE}: {m['instances']} instances of {m['objects']} "
              f"({100 * m['count_error']:+.1f}%), segm AP {m['segm_AP']} (strips at the same thresholds {own}), "
              f"peak RSS {m['peak_rss_mb']} MB, {m['tiles']} tiles in {m['wall_s']} s = {m['tiles_per_s']} tiles/s")
    write_json(RESULTS, {"date": datetime.date.today().isoformat(), "machine": platform.platform(),
                         "cpus": os.cpu_count(), "set": "strips", "tile": RECIPE_TILE, "seeds": args.seeds,
                         "max_dets": MAX_DETS, "summary": table, "runs": runs})
    print(f"wrote {RESULTS}")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=int, default=100, help="training seconds per model (default 100)")
    p.add_argument("--iters", type=int, default=None,
                   help="train each model this many iterations instead of --budget seconds")
    p.add_argument("--tile", type=int, default=320, help="tile and crop size in px (default 320)")
    p.add_argument("--overlap", type=float, default=0.2, help="tile overlap (default 0.2)")
    p.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    p.add_argument("--reuse", action="store_true", help="keep what a previous run in --work trained (only predict); with --set strips also "
                        "the scores of every finished variant, so a run can be done in parts")
    p.add_argument("--set", choices=["generated", "strips"], default="generated",
                   help="generated: the sample generator's mosaics (default); strips: dense strips of real photos")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="--set strips: training seeds (default 0)")
    p.add_argument("--object-prob", type=float, nargs="*", default=[],
                   help="--set strips: also train the first seed with these INPUT.CROP.OBJECT_PROB values")
    p.add_argument("--no-mosaic", dest="mosaic", action="store_false",
                   help="--set strips: skip predict.py on the 12,000 x 12,000 mosaic")
    args = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    from segkit.data.atomic import write_json

    if args.set == "strips":
        return run_strips(args)

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
                         "cpus": os.cpu_count(), "set": "generated", "budget_s": None if args.iters else args.budget, "iters": args.iters, "tile": args.tile,
                         "overlap": args.overlap, "crops_with_objects": round(held, 3), "rows": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
