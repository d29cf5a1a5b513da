"""How well the suspect-label finder finds known annotation errors.

    python benchmarks/suspects.py                      # everything (about 15 CPU minutes)
    python benchmarks/suspects.py --step prepare       # or in parts, each a short command:
    python benchmarks/suspects.py --step fold --fold 0 # (1, 2 ...)
    python benchmarks/suspects.py --step score
    python benchmarks/suspects.py --step rescore       # count again, no model run
    python benchmarks/suspects.py --step rejudge       # the loop's runs judged again, nothing trained
    python benchmarks/suspects.py --step rank --iters 400   # the loop's noisy labels, finder ranking only
    python benchmarks/suspects.py --step rejudge --iters 400  # those runs judged again, nothing trained
    python benchmarks/suspects.py --step loop --sets controllers-20 --seeds 0   # the label-fixing loop
    python benchmarks/suspects.py --step loop --sets sample-32 --k-fractions 1  # K = N only

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
from budget import sample_data  # noqa: E402  (benchmarks/ is the script's folder)
from schedule import controllers_data  # noqa: E402
from segkit.data.atomic import write_json  # noqa: E402  (after the repo is on the path)
from segkit.loop import folds as finder_folds, judge, suspects_cli  # noqa: E402

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
    fargs = suspects_cli.get_parser().parse_args(finder_args(work, args))
    coco = judge.read_split(fargs.data, "trainval")
    folds = finder_folds.make_folds([im["id"] for im in coco["images"]], fargs.folds, fargs.seed)
    held = set(folds[args.fold])
    train_ids = [im["id"] for im in coco["images"] if im["id"] not in held]
    iters = fargs.iters or finder_folds.default_iters(fargs.config_file, fargs.opts, len(train_ids))
    finder_folds.train_fold(fargs.config_file, os.path.join(fargs.output, "folds", f"fold{args.fold}"),
                            finder_folds.fold_coco(coco, train_ids, fargs.data), iters, fargs.opts, fargs.num_gpus)


def run_finder_and_score(work, args, run_finder=True):
    p = paths(work)
    start = time.time()
    if run_finder:
        proc = subprocess.run([sys.executable, "-m", "segkit.loop.suspects_cli", *finder_args(work, args)],
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
                  iters=args.iters or finder_folds.default_iters(args.config_file, [], len(coco["images"]) * (args.folds - 1) // args.folds),
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


# ---- the label-fixing loop: AP recovered per label reviewed ----------------------------------------

LITE0 = os.path.join(ROOT, "configs", "mask_rcnn_lite0_FPN.yaml")
LOOP_RESULTS = os.path.join(ROOT, "benchmarks", "results", "label_loop.json")
LOOP_PLOT = os.path.join(ROOT, "benchmarks", "results", "label_loop.png")
LOOP_SETS = ("controllers-20", "sample-32")
K_FRACTIONS = (0.25, 0.5, 1.0, 2.0)  # K = N/4, N/2, N, 2N labels reviewed


def loop_clean_data(name, seed, work):
    """A clean data folder (train.json, val.json, images/) of a loop set."""
    if name == "controllers-20":  # 20 of the 81 training frames (the seed picks them), the 11 later frames as val
        return controllers_data(work, 4, seed % 4)
    if name == "sample-32":
        return sample_data(work)
    raise SystemExit(f"unknown set {name!r}; one of {', '.join(LOOP_SETS)}")


def labels_folder(clean, folder, train_coco):
    """A data folder with ``train_coco`` as its train split and the clean val split."""
    os.makedirs(folder, exist_ok=True)
    link = os.path.join(folder, "images")
    if not os.path.exists(link):
        os.symlink(os.path.abspath(os.path.join(clean, "images")), link)
    with open(os.path.join(clean, "val.json"), encoding="utf-8") as f:
        write_json(os.path.join(folder, "val.json"), json.load(f))
    write_json(os.path.join(folder, "train.json"), train_coco)
    return folder


def train_and_evaluate(data, out, seed, iters):
    """segm and bbox AP on val of the Lite0 config trained ``iters`` iterations on ``data``'s train split."""
    from segkit.engine.hooks import read_metrics

    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", LITE0,
           "--exist-ok", "DATASETS.DATA_DIR", data, "OUTPUT_DIR", out, "SEED", str(seed), "SOLVER.MAX_ITER", str(iters),
           "SOLVER.STEPS", f"({int(iters * 0.8)},)", "TEST.EVAL_PERIOD", str(iters),
           "SOLVER.CHECKPOINT_PERIOD", str(10 * iters), "INPUT.AUG.PREVIEW_BATCHES", "0",
           "TEST.PR_CURVES", "False", "TEST.VAL_LOSS_PERIOD", str(10 * iters)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"training {out} failed:\n{proc.stderr[-3000:]}")
    final = [r for r in read_metrics(os.path.join(out, "metrics.json")) if "segm/AP" in r][-1]
    return {"segm_AP": final["segm/AP"], "bbox_AP": final["bbox/AP"]}


def reviewed_by_finder(records, errors, file_of, k):
    """Planted errors a reviewer restores by opening the top ``k`` suspects."""
    fixed = set()
    for s in records[:k]:
        fixed |= {i for i, e in enumerate(errors) if i not in fixed and found_by(e, s, file_of)}
    return fixed


def reviewed_at_random(noisy, errors, k, seed):
    """Planted errors a reviewer restores by checking ``k`` of the labels picked at random: the
    changed classes and moved outlines among them (a dropped object has no label to pick)."""
    ids = sorted(a["id"] for a in noisy["annotations"] if not a["iscrowd"])
    picked = set(random.Random(seed).sample(ids, min(k, len(ids))))
    return {i for i, e in enumerate(errors) if e["type"] != "drop" and e["annotation_id"] in picked}


def restore(noisy, clean, errors, fixed):
    """``noisy`` with the original labels of the planted errors in ``fixed`` put back."""
    original = {a["id"]: a for a in clean["annotations"]}
    ids = {errors[i]["annotation_id"] for i in fixed}
    out = copy.deepcopy(noisy)
    out["annotations"] = [original[a["id"]] if a["id"] in ids else a for a in out["annotations"]]
    out["annotations"] += [original[errors[i]["annotation_id"]] for i in sorted(fixed) if errors[i]["type"] == "drop"]
    return out


def loop_labels(name, seed, work):
    """One (set, seed) of the loop: its run folder, clean data folder, clean train COCO, the noisy
    copy with the planted errors, the errors, and the noisy copy's data folder."""
    base = os.path.join(work, "loop", name.replace("-", "_") + f"_seed{seed}")
    clean_dir = loop_clean_data(name, seed, os.path.join(work, "loop"))
    with open(os.path.join(clean_dir, "train.json"), encoding="utf-8") as f:
        clean = json.load(f)
    noisy, errors = plant_errors(clean, seed)
    noisy_dir = labels_folder(clean_dir, os.path.join(base, "noisy"), noisy)
    return base, clean_dir, clean, noisy, errors, noisy_dir


def finder_suspects(data, out, fold_iters, config_file=LITE0, extra=()):
    """The finder's suspects on ``data``'s train split (fold models of ``fold_iters``), best first."""
    proc = subprocess.run([sys.executable, "-m", "segkit.loop.suspects_cli", data, "--split", "train",
                           "--config-file", config_file, "--output", out, "--seed", "0",
                           "--iters", str(fold_iters), *extra],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    with open(os.path.join(out, "suspects.json"), encoding="utf-8") as f:
        return json.load(f)["suspects"]


def score_noisy(records, noisy, errors):
    """:func:`score` of ``records`` against the errors planted into ``noisy``."""
    file_of = {im["id"]: im["file_name"] for im in noisy["images"]}
    return score(records, errors, file_of, sum(not a["iscrowd"] for a in noisy["annotations"]))


def loop_one(name, seed, work, iters, fold_iters, stored, save, fractions=K_FRACTIONS):
    """Every model of one (set, seed): clean, noisy, and the noisy labels after K reviews by the
    finder and at random; results go into ``stored`` (a run already there is not repeated)."""
    key = f"{name}/seed{seed}"
    run = stored.setdefault(key, {"set": name, "seed": seed, "iters": iters, "models": {}})
    base, clean_dir, clean, noisy, errors, noisy_dir = loop_labels(name, seed, work)
    n = len(errors)
    run.update(planted=n, labels=sum(not a["iscrowd"] for a in clean["annotations"]),
               images=len(clean["images"]))
    file_of = {im["id"]: im["file_name"] for im in noisy["images"]}
    # the finder's own default: what train_net trains on a fold's images (2 of its 3 folds)
    fold_iters = fold_iters or finder_folds.default_iters(LITE0, (), len(noisy["images"]) * 2 // 3)

    def model(label, coco, fixed=None):
        if label in run["models"]:
            return
        print(f"  {key} {label}: training {iters} iterations", flush=True)
        data = labels_folder(clean_dir, os.path.join(base, label), coco) if coco is not noisy else noisy_dir
        result = train_and_evaluate(data, os.path.join(base, "run_" + label), seed, iters)
        if fixed is not None:
            result.update(fixed=len(fixed), fixed_types={t: sum(errors[i]["type"] == t for i in fixed)
                                                         for t in ("drop", "class", "shift", "shrink")})
        run["models"][label] = result
        print(f"    segm AP {result['segm_AP']:.1f}, bbox AP {result['bbox_AP']:.1f}", flush=True)
        save()

    model("clean", clean)
    model("noisy", noisy)
    if "finder" not in run:
        out = os.path.join(base, f"suspects_iters{fold_iters}")  # --step rank's folder: its fold models are reused
        print(f"  {key}: the suspect finder, 3 folds of {fold_iters} iterations", flush=True)
        run["finder"] = {"records": finder_suspects(noisy_dir, out, fold_iters), "folder": os.path.basename(out),
                         "fold_iters": fold_iters}
        run["finder"]["score"] = score_noisy(run["finder"]["records"], noisy, errors)
        save()
    records = run["finder"]["records"]
    for frac in fractions:
        k = max(1, int(round(frac * n)))
        for arm, fixed in (("finder", reviewed_by_finder(records, errors, file_of, k)),
                           ("random", reviewed_at_random(noisy, errors, k, seed))):
            model(f"{arm}_K{k}", restore(noisy, clean, errors, fixed), fixed)


def loop_summary(stored):
    """{set: {"K/N": {arm: [recovered share per seed]}, ...}} and per-seed rows for the table."""
    rows = []
    for run in stored.values():
        m = run.get("models", {})
        if "clean" not in m or "noisy" not in m:
            continue
        gap = m["clean"]["segm_AP"] - m["noisy"]["segm_AP"]
        for frac in K_FRACTIONS:
            k = max(1, int(round(frac * run["planted"])))
            for arm in ("finder", "random"):
                r = m.get(f"{arm}_K{k}")
                if r:
                    rows.append({"set": run["set"], "seed": run["seed"], "frac": frac, "k": k, "arm": arm,
                                 "segm_AP": r["segm_AP"], "noisy": m["noisy"]["segm_AP"], "clean": m["clean"]["segm_AP"],
                                 "recovered": (r["segm_AP"] - m["noisy"]["segm_AP"]) / gap if gap > 0 else float("nan"),
                                 "gain": r["segm_AP"] - m["noisy"]["segm_AP"],
                                 "found_per_label": r["fixed"] / k})
    return rows


def _mean_sd(values):
    values = [v for v in values if v == v]
    if not values:
        return float("nan"), float("nan")
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def print_loop_table(stored):
    rows = loop_summary(stored)
    for name in sorted({r["set"] for r in rows}):
        runs = [r for r in stored.values() if r["set"] == name and "clean" in r.get("models", {})]
        clean = _mean_sd([r["models"]["clean"]["segm_AP"] for r in runs])
        noisy = _mean_sd([r["models"]["noisy"]["segm_AP"] for r in runs if "noisy" in r["models"]])
        finder_scores = [r["finder"]["score"] for r in runs if "finder" in r]
        print(f"\n{name}: {runs[0]['images']} training images, {runs[0]['labels']} labels, N = {runs[0]['planted']} "
              f"planted errors; segm AP on clean val: clean labels {clean[0]:.1f} ± {clean[1]:.1f}, "
              f"noisy {noisy[0]:.1f} ± {noisy[1]:.1f} ({len(runs)} seeds, mean ± stdev)")
        if finder_scores:
            t2n = _mean_sd([100 * s["top_2n_share"] for s in finder_scores])
            prec = _mean_sd([100 * s["top_n_precision"] for s in finder_scores])
            print(f"finder: {t2n[0]:.0f} ± {t2n[1]:.0f}% of the errors among its top 2N suspects, "
                  f"{prec[0]:.0f} ± {prec[1]:.0f}% of its top N suspects are planted errors")
        print("| labels reviewed K | segm AP: finder | segm AP: random | gap closed: finder | gap closed: random "
              "| errors fixed per label: finder | random |")
        print("|---|---|---|---|---|---|---|")
        for frac in K_FRACTIONS:
            sel = [r for r in rows if r["set"] == name and r["frac"] == frac]
            if not sel:
                continue
            cells = []
            for what, scale, fmt in (("segm_AP", 1, "{:.1f} ± {:.1f}"), ("recovered", 100, "{:.0f} ± {:.0f}%"),
                                     ("found_per_label", 1, "{:.2f} ± {:.2f}")):
                for arm in ("finder", "random"):
                    m, sd = _mean_sd([scale * r[what] for r in sel if r["arm"] == arm])
                    cells.append(fmt.format(m, sd))
            label = {0.25: "N/4", 0.5: "N/2", 1.0: "N", 2.0: "2N"}[frac]
            print(f"| {label} ({sel[0]['k']}) | " + " | ".join(cells) + " |")


def plot_loop(stored, path):
    from matplotlib.figure import Figure

    from segkit.data.atomic import atomic_path

    rows = loop_summary(stored)
    sets = sorted({r["set"] for r in rows})
    if not sets:
        return
    fig = Figure(figsize=(11, 4.2 * len(sets)))
    axes = fig.subplots(len(sets), 2, squeeze=False)
    for (ax_ap, ax_found), name in zip(axes, sets):
        for what, ax, scale in (("recovered", ax_ap, 100), ("found_per_label", ax_found, 1)):
            for arm, color in (("finder", "tab:red"), ("random", "tab:gray")):
                pts = [(frac, _mean_sd([scale * r[what] for r in rows
                                        if r["set"] == name and r["arm"] == arm and r["frac"] == frac]))
                       for frac in K_FRACTIONS]
                pts = [(f, m, sd) for f, (m, sd) in pts if m == m]
                if pts:
                    x, m, sd = zip(*pts)
                    ax.errorbar(x, m, yerr=sd, marker="o", capsize=3, color=color,
                                label="top K suspects" if arm == "finder" else "K labels at random")
            ax.set_xscale("log", base=2)
            ax.set_xticks(K_FRACTIONS, ["N/4", "N/2", "N", "2N"])
            ax.set_xlabel("labels reviewed K (N = planted errors)")
            ax.grid(alpha=0.3)
        ax_ap.axhline(100, color="tab:green", ls="--", lw=1, label="clean labels")
        ax_ap.axhline(0, color="black", lw=0.5)
        ax_ap.set_ylabel("noisy-to-clean segm AP gap closed (%)")
        ax_ap.set_title(f"{name}: AP recovered")
        ax_found.set_ylabel("planted errors fixed per label reviewed")
        ax_found.set_title(f"{name}: errors found per label reviewed")
        ax_ap.legend(fontsize=8)
    fig.suptitle("Reviewing suspects against reviewing labels at random (mean ± stdev over seeds)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def read_runs(path):
    """The runs stored in a results file of the loop (under ``runs``) or of --step rank, {} if none."""
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return data["runs"] if path == LOOP_RESULTS else data


def run_loop(args):
    import torch

    stored = read_runs(LOOP_RESULTS)

    def save():
        # Runs of other (set, seed)s may have been stored meanwhile by another process of this script.
        runs = read_runs(LOOP_RESULTS)
        runs.update({key: stored[key] for key in mine})
        write_json(LOOP_RESULTS, {"machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                              "python": platform.python_version(), "torch": torch.__version__},
                                  "config": os.path.relpath(LITE0, ROOT), "runs": runs})

    if not args.table:
        todo = [(name, seed) for seed in args.seeds for name in args.sets]
        mine = {f"{name}/seed{seed}" for name, seed in todo}
        start = time.monotonic()
        for i, (name, seed) in enumerate(todo):
            spent = time.monotonic() - start
            eta = f", ETA {spent / i * (len(todo) - i) / 60:.0f} min" if i else ""
            print(f"[{i + 1}/{len(todo)}] {name} seed {seed}{eta}", flush=True)
            loop_one(name, seed, args.work, args.loop_iters, args.iters, stored, save,
                     args.k_fractions)
        stored = read_runs(LOOP_RESULTS)  # with the seeds other processes stored
    print_loop_table(stored)
    plot_loop(stored, LOOP_PLOT)
    print(f"\nresults in {LOOP_RESULTS}, plot {LOOP_PLOT}")


def rejudge_loop(args):
    """The finder run again on the noisy labels of stored runs with the fold models they trained
    (``--reuse-folds``: nothing trains), into ``suspects_rejudge/``, and scored as the loop scores
    it, next to the stored score: a change to the judging measured in minutes. The runs are the
    loop's, or with ``--iters N`` those of ``--step rank --iters N``."""
    stored = read_runs(RANK_RESULTS if args.iters else LOOP_RESULTS)
    rows = {}
    for name in args.sets:
        for seed in args.seeds:
            if args.iters:
                key, folder = f"{name}/seed{seed}/iters{args.iters}", f"suspects_iters{args.iters}"
                before = stored.get(key)
            else:
                key = f"{name}/seed{seed}"
                finder_run = stored.get(key, {}).get("finder")
                before = finder_run and finder_run["score"]
                folder = finder_run and finder_run.get("folder", "suspects")
            if not before:
                print(f"{key}: no stored finder run, skipped")
                continue
            base, _, _, noisy, errors, noisy_dir = loop_labels(name, seed, args.work)
            folds = os.path.join(base, folder, "folds")
            with open(os.path.join(folds, "fold0", "recipe.json"), encoding="utf-8") as f:
                recipe = json.load(f)  # the config path as the loop gave it: the finder compares paths
            out = os.path.join(base, "suspects_rejudge")
            os.makedirs(out, exist_ok=True)
            link = os.path.join(out, "folds")
            if os.path.islink(link) and os.readlink(link) != os.path.abspath(folds):
                os.remove(link)
            if not os.path.lexists(link):
                os.symlink(os.path.abspath(folds), link)
            records = finder_suspects(noisy_dir, out, recipe["iters"], recipe["config_file"], ["--reuse-folds"])
            result = score_noisy(records, noisy, errors)
            rows[key] = {"stored": before, "rejudged": result}
            print(f"{key}: top 2N {before['top_2n_share']:.0%} -> {result['top_2n_share']:.0%}, "
                  f"top-N precision {before['top_n_precision']:.0%} -> {result['top_n_precision']:.0%}", flush=True)
    for what in ("top_2n_share", "top_n_precision"):
        for arm in ("stored", "rejudged"):
            m, sd = _mean_sd([100 * r[arm][what] for r in rows.values()])
            print(f"{what} {arm}: {m:.1f} ± {sd:.1f}% ({len(rows)} runs, mean ± stdev)")
    write_json(os.path.join(ROOT, "benchmarks", "results", "suspects_rejudge.json"), rows)


RANK_RESULTS = os.path.join(ROOT, "benchmarks", "results", "suspects_rank.json")


def rank_only(args):
    """The finder's ranking on the loop's noisy labels with fold models of ``--iters`` iterations
    (its own folder per length, so lengths compare on the same planted errors): no model is
    retrained after review, so a fold length is measured in a fraction of the loop's time."""
    if not args.iters:
        raise SystemExit("--step rank needs --iters N (the fold length it measures)")
    iters = args.iters
    stored = read_runs(RANK_RESULTS)
    start = time.monotonic()
    todo = [(name, seed) for name in args.sets for seed in args.seeds]
    for i, (name, seed) in enumerate(todo):
        key = f"{name}/seed{seed}/iters{iters}"
        eta = f", ETA {(time.monotonic() - start) / i * (len(todo) - i) / 60:.0f} min" if i else ""
        print(f"[{i + 1}/{len(todo)}] {key}{eta}", flush=True)
        if key in stored:
            continue
        base, _, _, noisy, errors, noisy_dir = loop_labels(name, seed, args.work)
        records = finder_suspects(noisy_dir, os.path.join(base, f"suspects_iters{iters}"), iters)
        stored[key] = score_noisy(records, noisy, errors)
        # Other seeds may have been stored meanwhile by another process of this script.
        stored = {**read_runs(RANK_RESULTS), **stored}
        write_json(RANK_RESULTS, stored)
    print("\n| fold iterations | runs | planted errors in the top 2N | top-N suspects that are errors |")
    print("|---|---|---|---|")
    lengths = sorted({int(k.rsplit("iters", 1)[1]) for k in stored})
    for n in lengths:
        rows = [v for k, v in stored.items() if k.endswith(f"/iters{n}") and k.split("/")[0] in args.sets]
        share = _mean_sd([100 * r["top_2n_share"] for r in rows])
        precision = _mean_sd([100 * r["top_n_precision"] for r in rows])
        print(f"| {n} | {len(rows)} | {share[0]:.0f} ± {share[1]:.0f}% | {precision[0]:.0f} ± {precision[1]:.0f}% |")
    print(f"\nresults in {RANK_RESULTS}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--step", default="all", choices=["all", "prepare", "fold", "score", "rescore", "loop", "rejudge", "rank"],
                    help="rescore: count again from the finder's last suspects.json, without running it; "
                    "rejudge: the finder again on the stored loop runs with their fold models (no training); "
                    "rank: the finder's ranking on the loop's noisy labels, fold models of --iters; "
                    "loop: the label-fixing loop (AP recovered per label reviewed, Lite0, real photos)")
    ap.add_argument("--sets", nargs="+", default=list(LOOP_SETS), choices=LOOP_SETS, help="loop: data sets")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="loop: seeds (planted errors, training)")
    ap.add_argument("--loop-iters", type=int, default=200, help="loop: iterations of every model")
    ap.add_argument("--k-fractions", nargs="+", type=float, default=list(K_FRACTIONS), choices=K_FRACTIONS,
                    help="loop: labels reviewed K as fractions of N (default N/4, N/2, N and 2N)")
    ap.add_argument("--table", action="store_true", help="loop: only print the table and plot of stored results")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=None, help="per fold model (default: the finder's)")
    ap.add_argument("--config-file", default=MINI)
    ap.add_argument("--seed", type=int, default=0, help="which errors are planted")
    ap.add_argument("--work", default=os.path.join(ROOT, "output", "bench_suspects"))
    args = ap.parse_args()
    if args.step == "loop":
        return run_loop(args)
    if args.step == "rejudge":
        return rejudge_loop(args)
    if args.step == "rank":
        return rank_only(args)
    if args.step in ("all", "prepare"):
        prepare(args.work, args.seed)
    if args.step == "fold":
        train_one_fold(args.work, args)
    if args.step in ("all", "score", "rescore"):
        run_finder_and_score(args.work, args, run_finder=args.step != "rescore")


if __name__ == "__main__":
    main()
