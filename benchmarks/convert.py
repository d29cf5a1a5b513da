"""Benchmark of labelme2coco (--copy and --symlink) and of import_data on a COCO export: files/s, peak memory.

    python benchmarks/convert.py [--num 5000] [--width 640] [--height 480] [--polygons 5]

Generates NUM LabelMe files (JPEG images, ~POLYGONS polygons each, some grouped) in a temporary
folder and the same annotations as a Label Studio style COCO export (``result.json`` + ``images/``,
images hard-linked), then converts each in a fresh subprocess (so the peak RSS is that of one
conversion: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at its end; the RSS right after the
imports is given as the baseline). Prints a table and writes ``benchmarks/results/convert.json``.
"""

import argparse
import io
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "convert.json")
CLASSES = ("disc", "square", "triangle")
NUM_BASE_IMAGES = 16  # distinct JPEGs; every file is its own copy on disk

# Runs in the subprocess: one conversion, timed, with its peak memory.
_WORKER = """
import json, resource, sys, time
from segkit.data.coco_convert import convert
from segkit.data.importer import import_folder
input_dir, output_dir, mode, kind = sys.argv[1:5]
base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if kind == "labelme":
    result = convert(input_dir, output_dir, mode=mode, progress=False)
else:
    result = import_folder(input_dir, output_dir, fmt=kind, mode=mode, progress=False)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "exit_code": result.exit_code, "problems": len(result.problems),
                  "images": sum(result.images), "instances": sum(sum(v) for v in result.instances.values()),
                  "base_rss_mb": base_kb / 1024,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _base_images(width, height, rng):
    """A few textured JPEGs (photo-like size on disk, unlike flat colour or pure noise)."""
    blobs = []
    for _ in range(NUM_BASE_IMAGES):
        yy, xx = np.mgrid[0:height, 0:width]
        base = (np.sin(xx / rng.uniform(8, 40)) + np.cos(yy / rng.uniform(8, 40))) * 40 + 128
        rgb = np.stack([base + rng.normal(0, 12, base.shape) for _ in range(3)], axis=2)
        image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        blobs.append(buf.getvalue())
    return blobs


def _polygon(rng, width, height):
    cx, cy = rng.uniform(40, width - 40), rng.uniform(40, height - 40)
    radius = rng.uniform(10, min(width, height) / 5)
    n = rng.randint(6, 24)
    pts = []
    for k in range(n):
        a = 2 * math.pi * k / n
        r = radius * rng.uniform(0.6, 1.0)
        pts.append([round(min(max(cx + r * math.cos(a), 0), width), 2), round(min(max(cy + r * math.sin(a), 0), height), 2)])
    return pts


def generate(folder, num, width, height, polygons, seed=0):
    """NUM LabelMe files + images in 10 subfolders; returns the total bytes of images."""
    rng = random.Random(seed)
    blobs = _base_images(width, height, np.random.default_rng(seed))
    total = 0
    for i in range(num):
        sub = os.path.join(folder, f"part{i % 10}")
        os.makedirs(sub, exist_ok=True)
        name = f"img_{i:06d}"
        blob = blobs[i % len(blobs)]
        with open(os.path.join(sub, name + ".jpg"), "wb") as f:
            f.write(blob)
        total += len(blob)
        shapes = []
        for k in range(max(0, polygons + rng.randint(-2, 2))):
            label = CLASSES[rng.randrange(len(CLASSES))]
            shapes.append({"label": label, "points": _polygon(rng, width, height), "group_id": None,
                           "description": "", "shape_type": "polygon", "flags": {}, "mask": None})
            if k == 0 and rng.random() < 0.2:  # an occluded object drawn as two polygons
                shapes[-1]["group_id"] = 1
                shapes.append(dict(shapes[-1], points=_polygon(rng, width, height)))
        doc = {"version": "5.7.0", "flags": {}, "shapes": shapes, "imagePath": name + ".jpg",
               "imageData": None, "imageHeight": height, "imageWidth": width}
        with open(os.path.join(sub, name + ".json"), "w") as f:
            json.dump(doc, f)
    return total


def generate_coco(labelme_dir, coco_dir):
    """The LabelMe files as a Label Studio COCO export: result.json + images/ (hard links)."""
    images, annotations = [], []
    os.makedirs(os.path.join(coco_dir, "images"), exist_ok=True)
    cat_id = {name: i for i, name in enumerate(CLASSES)}  # Label Studio counts from 0
    for sub in sorted(os.listdir(labelme_dir)):
        for name in sorted(f for f in os.listdir(os.path.join(labelme_dir, sub)) if f.endswith(".json")):
            with open(os.path.join(labelme_dir, sub, name)) as f:
                doc = json.load(f)
            image_name = f"{len(images):08x}-{doc['imagePath']}"
            os.link(os.path.join(labelme_dir, sub, doc["imagePath"]), os.path.join(coco_dir, "images", image_name))
            image_id = len(images)
            images.append({"id": image_id, "file_name": "images\\" + image_name, "width": doc["imageWidth"],
                           "height": doc["imageHeight"]})
            for shape in doc["shapes"]:
                flat = [v for pt in shape["points"] for v in pt]
                annotations.append({"id": len(annotations), "image_id": image_id, "category_id": cat_id[shape["label"]],
                                    "segmentation": [flat], "bbox": [], "ignore": 0, "iscrowd": 0, "area": 0})
    with open(os.path.join(coco_dir, "result.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations,
                   "categories": [{"id": i, "name": n} for n, i in cat_id.items()], "info": {}}, f)


def run_mode(input_dir, output_dir, mode, kind="labelme"):
    proc = subprocess.run([sys.executable, "-c", _WORKER, input_dir, output_dir, mode, kind],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} run failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num", type=int, default=5000, help="number of LabelMe files (default 5000)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--polygons", type=int, default=5, help="polygons per image, on average (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=RESULTS, help=f"results JSON (default {os.path.relpath(RESULTS, ROOT)})")
    args = p.parse_args(argv)

    work = tempfile.mkdtemp(prefix="segkit_bench_convert_")
    try:
        t0 = time.perf_counter()
        image_bytes = generate(os.path.join(work, "in"), args.num, args.width, args.height, args.polygons, args.seed)
        generate_coco(os.path.join(work, "in"), os.path.join(work, "coco"))
        gen_seconds = time.perf_counter() - t0
        runs = {}
        for name, src, mode, kind in (("copy", "in", "copy", "labelme"), ("symlink", "in", "symlink", "labelme"),
                                      ("coco copy", "coco", "copy", "coco")):
            runs[name] = run_mode(os.path.join(work, src), os.path.join(work, f"out_{name.replace(' ', '_')}"), mode, kind)
            runs[name]["files_per_s"] = args.num / runs[name]["seconds"]
            assert runs[name]["exit_code"] == 0 and runs[name]["images"] == args.num, runs[name]
        json_mb = os.path.getsize(os.path.join(work, "out_copy", "trainval.json")) / 2 ** 20
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = {
        "num_files": args.num, "image_size": [args.width, args.height], "polygons_per_image": args.polygons,
        "instances": runs["copy"]["instances"], "image_mb": round(image_bytes / 2 ** 20, 1),
        "trainval_json_mb": round(json_mb, 1), "generate_seconds": round(gen_seconds, 1),
        "runs": {m: {k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()} for m, r in runs.items()},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
    }
    print(f"{args.num} LabelMe files, {args.width}x{args.height} JPEG ({result['image_mb']} MB), "
          f"{result['instances']} instances; trainval.json {result['trainval_json_mb']} MB")
    print(f"{'run':<22}{'seconds':>10}{'files/s':>10}{'peak RSS MB':>14}{'after imports MB':>18}")
    for mode, r in runs.items():
        label = {"copy": "labelme2coco --copy", "symlink": "labelme2coco --symlink", "coco copy": "import_data COCO"}[mode]
        print(f"{label:<22}{r['seconds']:>10.1f}{r['files_per_s']:>10.0f}{r['peak_rss_mb']:>14.0f}{r['base_rss_mb']:>18.0f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    from segkit.data.atomic import write_json

    write_json(args.output, result)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
