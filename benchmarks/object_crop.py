"""Crops that hold objects (``INPUT.CROP.OBJECT_PROB``) against detectron2's uniform crops, on a
sparse set made from real photos, mean and spread over seeds.

    python benchmarks/object_crop.py                        # 2 settings x 3 seeds, 300 iterations
    python benchmarks/object_crop.py --probs 0 0.5 1 --seeds 0 1 2 --iters 300

The set: each image is 1920 x 1056 px of real background (object-free strips of the shared
controllers frames, side by side) with one real frame (640 x 352, its 3 annotated objects) pasted
at a random place: 3 objects of 80-260 px on 2 MP, where a uniform 320 px crop often holds none.
Training frames come from the controllers' train/ folder, test frames from test/ (the author's
split, by time). Lite0 (ImageNet-pretrained) trains on 320 px crops at native resolution for
``--iters`` iterations per run; the test images are predicted on 320 px tiles (the recipe of
docs/large-images.md), AP at up to 300 detections. Prints a table and writes
benchmarks/results/object_crop.json.
"""

import argparse
import base64
import datetime
import io
import json
import os
import platform
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "object_crop.json")
CONTROLLERS = os.path.join(os.path.dirname(ROOT), "shared", "datasets", "controllers")
CANVAS = (1056, 1920)  # h, w: 3 x 3 frames' area
STRIP = 120  # px of each frame's left and right edges used as background when no object enters


def read_frames(folder):
    """[(RGB array, [(label, [x, y, ...])])] of a LabelMe folder with embedded images."""
    import numpy as np
    from PIL import Image

    frames = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            doc = json.load(f)
        image = np.asarray(Image.open(io.BytesIO(base64.b64decode(doc["imageData"]))).convert("RGB"))
        shapes = [(s["label"], [float(v) for p in s["points"] for v in p]) for s in doc["shapes"]]
        frames.append((image, shapes))
    return frames


def background_strips(frames):
    """Object-free STRIP-wide columns from the frames' left and right edges."""
    strips = []
    for image, shapes in frames:
        w = image.shape[1]
        xs = [min(p[0::2]) for _, p in shapes] + [max(p[0::2]) for _, p in shapes]
        if min(xs) > STRIP:
            strips.append(image[:, :STRIP])
        if max(xs) < w - STRIP:
            strips.append(image[:, w - STRIP:])
    return strips


def make_sparse(work, n_train=24, n_val=8, seed=0):
    """COCO folder (images/, train.json, val.json, trainval.json) of sparse images; returns its path."""
    import numpy as np
    from PIL import Image

    from segkit.data.atomic import write_json

    rng = np.random.default_rng(seed)
    train_frames = read_frames(os.path.join(CONTROLLERS, "train"))
    val_frames = read_frames(os.path.join(CONTROLLERS, "test"))
    strips = background_strips(train_frames + val_frames)
    labels = sorted({label for _, shapes in train_frames for label, _ in shapes})
    categories = [{"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(labels)]
    out = os.path.join(work, "sparse")
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    docs = {}
    for split, frames, n in (("train", train_frames, n_train), ("val", val_frames, n_val)):
        picks = rng.choice(len(frames), size=n, replace=False)
        images, annotations = [], []
        for k, index in enumerate(picks):
            h, w = CANVAS
            canvas = np.zeros((h, w, 3), np.uint8)
            for y in range(0, h, 352):
                for x in range(0, w, STRIP):
                    strip = strips[rng.integers(len(strips))]
                    canvas[y:y + 352, x:x + STRIP] = strip[:h - y, :w - x]
            frame, shapes = frames[index]
            fh, fw = frame.shape[:2]
            ox, oy = int(rng.integers(0, w - fw + 1)), int(rng.integers(0, h - fh + 1))
            canvas[oy:oy + fh, ox:ox + fw] = frame
            name = f"{split}_{k:02d}.jpg"
            Image.fromarray(canvas).save(os.path.join(out, "images", name), quality=92)
            image_id = k + 1
            images.append({"id": image_id, "file_name": name, "height": h, "width": w})
            for label, poly in shapes:
                moved = [v + (ox if j % 2 == 0 else oy) for j, v in enumerate(poly)]
                xs, ys = moved[0::2], moved[1::2]
                box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": labels.index(label) + 1, "segmentation": [moved],
                                    "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
        docs[split] = {"images": images, "annotations": annotations, "categories": categories}
        write_json(os.path.join(out, f"{split}.json"), docs[split])
    write_json(os.path.join(out, "trainval.json"), docs["train"])  # training only
    return out


def crops_with_objects(data, tile, prob, n=300):
    """Share of training crops holding an instance, with ``INPUT.CROP.OBJECT_PROB`` ``prob``."""
    from detectron2.data import DatasetCatalog
    from detectron2.utils.env import seed_all_rng

    from segkit.data.augmentation import build_train_mapper
    from segkit.data.catalog import register_data_dir
    from segkit.modeling.config import get_segkit_cfg
    from tiling import CONFIG, crop_opts

    cfg = get_segkit_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(["DATASETS.DATA_DIR", data, *crop_opts(tile), "INPUT.CROP.OBJECT_PROB", str(prob)])
    register_data_dir(data)
    dicts = DatasetCatalog.get("mydata_train")
    mapper = build_train_mapper(cfg)
    seed_all_rng(0)
    return sum(len(mapper(dicts[i % len(dicts)])["instances"]) > 0 for i in range(n)) / n


def spread(values):
    return {"mean": round(statistics.mean(values), 1),
            "stdev": round(statistics.stdev(values), 1) if len(values) > 1 else 0.0, "runs": values}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--probs", type=float, nargs="+", default=[0.0, 0.5], help="OBJECT_PROB values (default 0 0.5)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    p.add_argument("--iters", type=int, default=300, help="training iterations per run (default 300)")
    p.add_argument("--tile", type=int, default=320, help="crop and tile size in px (default 320)")
    p.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    args = p.parse_args(argv)
    import tempfile

    from segkit.data.atomic import write_json
    from tiling import crop_opts, predict_and_score, train

    if not os.path.isdir(CONTROLLERS):
        raise SystemExit(f"{CONTROLLERS}: the shared controllers photos are needed")
    work = args.work or tempfile.mkdtemp(prefix="segkit_object_crop_")
    data = make_sparse(work)
    rows = {}
    for prob in args.probs:
        held = crops_with_objects(data, args.tile, prob)
        runs = []
        for seed in args.seeds:
            out = os.path.join(work, f"p{prob}_s{seed}")
            started = datetime.datetime.now()
            weights = train(data, out, None, [*crop_opts(args.tile), "INPUT.CROP.OBJECT_PROB", str(prob),
                                              "SEED", str(seed)], iters=args.iters)
            score = predict_and_score(weights, data, ["TEST.TILE_SIZE", str(args.tile)])
            score["train_s"] = round((datetime.datetime.now() - started).total_seconds())
            runs.append(score)
            print(f"OBJECT_PROB {prob} seed {seed}: segm {score['segm_AP']} bbox {score['bbox_AP']}", flush=True)
        rows[str(prob)] = {"crops_with_objects": round(held, 3),
                           "segm_AP": spread([r["segm_AP"] for r in runs]),
                           "bbox_AP": spread([r["bbox_AP"] for r in runs]), "runs": runs}
    print(f"\n{'OBJECT_PROB':>11} | crops with objects | segm AP (mean ± sd) | bbox AP (mean ± sd)")
    for prob, r in rows.items():
        print(f"{prob:>11} | {r['crops_with_objects']:>18.2f} | {r['segm_AP']['mean']:>8.1f} ± {r['segm_AP']['stdev']:<8.1f} "
              f"| {r['bbox_AP']['mean']:>8.1f} ± {r['bbox_AP']['stdev']:.1f}")
    write_json(RESULTS, {"date": datetime.date.today().isoformat(), "machine": platform.platform(),
                         "cpus": os.cpu_count(), "iters": args.iters, "tile": args.tile, "seeds": args.seeds,
                         "rows": rows})
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
