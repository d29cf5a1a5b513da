"""How well the suspect-label finder finds known annotation errors.

    python benchmarks/suspects.py                      # everything (about 15 CPU minutes)
    python benchmarks/suspects.py --step prepare       # or in parts, each a short command:
    python benchmarks/suspects.py --step fold --fold 0 # (1, 2 ...)
    python benchmarks/suspects.py --step score
    python benchmarks/suspects.py --step rescore       # count again, no model run

The generated sample set (40 images, 3 classes; segkit.data.sample) is converted to COCO, and known
errors are planted into a copy of its labels (trainval.json): 20% of the instances dropped, the
class of 10% changed, 10% of the outlines shifted (by 35% of the object's size) or shrunk (to 60%
of its size, around its centre). The finder then runs on that copy as a user runs it
(``--split trainval``, 3 folds, its default schedule for the config) and we count which share of the
N planted errors appear among its top 2N suspects. An error counts as found by a suspect that names
its label, or for a dropped instance (and a moved outline) by a suspect in the same image whose box
overlaps the true object at IoU >= 0.5. Next to it, the expected share for a random ranking of the
same suspect list, and for a reviewer checking 2N labels picked at random. Prints a table, writes
benchmarks/results/suspects.json.
"""

import argparse
import copy
import json
import os
import platform
import random
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from segkit.data.atomic import write_json  # noqa: E402  (after the repo is on the path)
from segkit.inference import suspects as finder  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results", "suspects.json")
MINI = os.path.join(ROOT, "configs", "mask_rcnn_R_18_FPN_mini.yaml")
SHARES = {"drop": 0.2, "class": 0.1, "outline": 0.1}


def box_iou(a, b):
    """IoU of two XYXY boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def xyxy(bbox):
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def _polygon_bbox(polygons):
    xs = [v for p in polygons for v in p[0::2]]
    ys = [v for p in polygons for v in p[1::2]]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def plant_errors(coco, seed=0):
    """A copy of ``coco`` with errors planted into its polygon labels; returns (copy, errors)."""
    from pycocotools import mask as mask_util

    rng = random.Random(seed)
    coco = copy.deepcopy(coco)
    images = {im["id"]: im for im in coco["images"]}
    objects = [a for a in coco["annotations"] if not a["iscrowd"] and isinstance(a["segmentation"], list)]
    rng.shuffle(objects)
    n = {k: int(round(v * len(objects))) for k, v in SHARES.items()}
    dropped = objects[:n["drop"]]
    changed = objects[n["drop"]:n["drop"] + n["class"]]
    moved = objects[n["drop"] + n["class"]:n["drop"] + n["class"] + n["outline"]]
    cat_ids = [c["id"] for c in coco["categories"]]
    errors = []
    for a in dropped:
        errors.append({"type": "drop", "image_id": a["image_id"], "annotation_id": a["id"], "box": xyxy(a["bbox"])})
    for a in changed:
        errors.append({"type": "class", "image_id": a["image_id"], "annotation_id": a["id"], "box": xyxy(a["bbox"])})
        a["category_id"] = rng.choice([c for c in cat_ids if c != a["category_id"]])
    for k, a in enumerate(moved):
        im = images[a["image_id"]]
        w, h = im["width"], im["height"]
        x, y, bw, bh = a["bbox"]
        cx, cy = x + bw / 2, y + bh / 2
        errors.append({"type": "shift" if k % 2 == 0 else "shrink", "image_id": a["image_id"],
                       "annotation_id": a["id"], "box": xyxy(a["bbox"])})
        if k % 2 == 0:  # shift by 35% of the object's size, in a random diagonal direction
            dx, dy = rng.choice([-1, 1]) * 0.35 * bw, rng.choice([-1, 1]) * 0.35 * bh
            move = lambda px, py: (px + dx, py + dy)  # noqa: E731
        else:
            move = lambda px, py: (cx + 0.6 * (px - cx), cy + 0.6 * (py - cy))  # noqa: E731
        polygons = []
        for poly in a["segmentation"]:
            pts = [move(px, py) for px, py in zip(poly[0::2], poly[1::2])]
            polygons.append([round(min(max(v, 0.0), lim), 2) for px, py in pts for v, lim in ((px, w), (py, h))])
        a["segmentation"] = polygons
        rle = mask_util.merge(mask_util.frPyObjects(polygons, h, w))
        a["area"] = float(mask_util.area(rle))
        a["bbox"] = [round(float(v), 2) for v in mask_util.toBbox(rle)]
    drop_ids = {a["id"] for a in dropped}
    coco["annotations"] = [a for a in coco["annotations"] if a["id"] not in drop_ids]
    return coco, errors


def found_by(error, suspect, file_of):
    if suspect["file_name"] != file_of[error["image_id"]]:
        return False
    if error["type"] != "drop" and suspect["annotation_id"] == error["annotation_id"]:
        return True
    if error["type"] in ("drop", "shift") and suspect["annotation_id"] is None:
        return box_iou(error["box"], suspect["box"]) >= 0.5
    return False


def score(records, errors, file_of, num_labels, draws=2000, seed=0):
    n = len(errors)
    found = np.array([[found_by(e, s, file_of) for s in records] for e in errors], dtype=bool).reshape(n, len(records))
    hits = found[:, :2 * n].any(axis=1)
    anywhere = found.any(axis=1)
    rng = np.random.default_rng(seed)
    random_found = [found[:, rng.permutation(len(records))[:2 * n]].any(axis=1).mean() for _ in range(draws)]
    random_top_n = [found[:, rng.permutation(len(records))[:n]].any(axis=1).mean() for _ in range(draws)]
    # a reviewer checking 2N labels at random finds a label error when its label is among them
    label_errors = sum(e["type"] != "drop" for e in errors)
    random_labels = min(1.0, 2 * n / max(num_labels, 1)) * label_errors / n
    by_type = {}
    for e, h, a in zip(errors, hits, anywhere):
        t = by_type.setdefault(e["type"], {"planted": 0, "in_top_2n": 0, "anywhere": 0})
        t["planted"] += 1
        t["in_top_2n"] += int(h)
        t["anywhere"] += int(a)
    return {"planted": n, "suspects": len(records), "top_2n_found": int(hits.sum()), "top_2n_share": float(hits.mean()),
            "anywhere_share": float(anywhere.mean()), "random_ranking_share": float(np.mean(random_found)),
            "random_labels_share": random_labels, "by_type": by_type,
            "top_n_share": float(found[:, :n].any(axis=1).mean()), "random_ranking_top_n_share": float(np.mean(random_top_n)),
            "top_n_precision": float(found[:, :n].any(axis=0).mean()) if records else 0.0,
            "precision_all": float(found.any(axis=0).mean()) if records else 0.0}


def paths(work):
    return {"labelme": os.path.join(work, "labelme"), "clean": os.path.join(work, "clean"),
            "data": os.path.join(work, "data"), "out": os.path.join(work, "suspects"),
            "errors": os.path.join(work, "planted_errors.json")}


def prepare(work, seed):
    from segkit.data.coco_convert import convert
    from segkit.data.sample import make_instance_sample

    p = paths(work)
    make_instance_sample(p["labelme"], num_images=40, size=(320, 240), seed=0)
    result = convert(p["labelme"], p["clean"], seed=0, progress=False)
    assert result.exit_code == 0, result.reason
    with open(os.path.join(p["clean"], "trainval.json"), encoding="utf-8") as f:
        coco, errors = plant_errors(json.load(f), seed)
    os.makedirs(p["data"], exist_ok=True)
    link = os.path.join(p["data"], "images")
    if not os.path.exists(link):
        os.symlink(os.path.abspath(os.path.join(p["clean"], "images")), link)
    write_json(os.path.join(p["data"], "trainval.json"), coco)
    write_json(p["errors"], errors)
    print(f"planted {len(errors)} errors into {len(coco['images'])} images "
          "(" + ", ".join(f"{t} {sum(e['type'] == t for e in errors)}" for t in ("drop", "class", "shift", "shrink")) + ")")


def finder_args(work, args):
    p = paths(work)
    return [p["data"], "--split", "trainval", "--folds", str(args.folds), "--config-file", args.config_file,
            "--output", p["out"], "--seed", "0"] + (["--iters", str(args.iters)] if args.iters else [])


def train_one_fold(work, args):
    """What the finder would train for fold ``args.fold``, trained now (the finder reuses it)."""
    fargs = finder.get_parser().parse_args(finder_args(work, args))
    coco = finder.read_split(fargs.data, "trainval")
    folds = finder.make_folds([im["id"] for im in coco["images"]], fargs.folds, fargs.seed)
    held = set(folds[args.fold])
    train_ids = [im["id"] for im in coco["images"] if im["id"] not in held]
    iters = fargs.iters or finder.default_iters(fargs.config_file, fargs.opts)
    finder.train_fold(fargs.config_file, os.path.join(fargs.output, "folds", f"fold{args.fold}"),
                      finder._subset(coco, train_ids, fargs.data), iters, fargs.opts, fargs.num_gpus)


def run_finder_and_score(work, args, run_finder=True):
    p = paths(work)
    start = time.time()
    if run_finder:
        proc = subprocess.run([sys.executable, "-m", "segkit.inference.suspects", *finder_args(work, args)],
                              cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(proc.stderr[-3000:])
    with open(os.path.join(p["out"], "suspects.json"), encoding="utf-8") as f:
        records = json.load(f)["suspects"]
    with open(p["errors"], encoding="utf-8") as f:
        errors = json.load(f)
    with open(os.path.join(p["data"], "trainval.json"), encoding="utf-8") as f:
        coco = json.load(f)
    file_of = {im["id"]: im["file_name"] for im in coco["images"]}
    num_labels = sum(not a["iscrowd"] for a in coco["annotations"])
    result = score(records, errors, file_of, num_labels)
    result.update(seconds_last_step=round(time.time() - start, 1), folds=args.folds,
                  iters=args.iters or finder.default_iters(args.config_file, []),
                  config=os.path.relpath(args.config_file, ROOT), labels_after_planting=num_labels,
                  images=len(coco["images"]), python=platform.python_version(), cpu_count=os.cpu_count())
    n = result["planted"]
    print(f"\n{n} planted errors, {result['suspects']} suspects; share of the planted errors among the top 2N = {2 * n}:\n")
    print("| ranking | top 2N | anywhere in the list |")
    print("|---|---|---|")
    print(f"| suspect finder | {result['top_2n_share']:.0%} ({result['top_2n_found']}/{n}) | {result['anywhere_share']:.0%} |")
    print(f"| random order of the same suspects | {result['random_ranking_share']:.0%} | |")
    print(f"| {2 * n} labels checked at random | {result['random_labels_share']:.0%} | |")
    print(f"\ntop N = {n}: the finder {result['top_n_share']:.0%} of the errors, a random order of its list "
          f"{result['random_ranking_top_n_share']:.0%}; {result['top_n_precision']:.0%} of its top N suspects "
          f"are planted errors ({result['precision_all']:.0%} of the whole list; the rest are the model's own "
          f"mistakes or errors the generator made)")
    print("\n| error | planted | in top 2N | anywhere |\n|---|---|---|---|")
    for t, c in result["by_type"].items():
        print(f"| {t} | {c['planted']} | {c['in_top_2n']} | {c['anywhere']} |")
    write_json(RESULTS, result)
    print(f"\nwrote {RESULTS}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--step", default="all", choices=["all", "prepare", "fold", "score", "rescore"],
                    help="rescore: count again from the finder's last suspects.json, without running it")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=None, help="per fold model (default: the finder's)")
    ap.add_argument("--config-file", default=MINI)
    ap.add_argument("--seed", type=int, default=0, help="which errors are planted")
    ap.add_argument("--work", default=os.path.join(ROOT, "output", "bench_suspects"))
    args = ap.parse_args()
    if args.step in ("all", "prepare"):
        prepare(args.work, args.seed)
    if args.step == "fold":
        train_one_fold(args.work, args)
    if args.step in ("all", "score", "rescore"):
        run_finder_and_score(args.work, args, run_finder=args.step != "rescore")


if __name__ == "__main__":
    main()
