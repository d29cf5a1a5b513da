"""Dataset report over a converted COCO folder (``DIR/trainval.json``, ``train.json``, ``val.json``,
``images/``), as written by ``labelme2coco.py``.

It counts images and instances per class for every split, the instance size distribution (COCO's
small / medium / large by mask area, plus a histogram of sqrt(area)), images without annotations,
tiny or degenerate masks (mask area < 16 px, a bbox side < 2 px, empty or unreadable
segmentation), exact duplicate images (sha1 of the file bytes, also across train and val),
image files that are missing, classes that have no instance in val, and classes that look numbered
per instance (``yolk1``..``yolk21``, probably one class ``yolk``; the rules are
:mod:`segkit.data.label_names`'s, over the trainval images). Crowd / ignored regions
(``iscrowd=1``) are counted apart and left out of the per-class and size figures.

The report is printed as aligned tables and written as ``DIR/report.json`` and ``DIR/report.png``
(atomically). ``trainval.json`` is required; ``train.json``, ``val.json`` and ``test.json`` are used
when present.

    python -m segkit.data.report DIR
"""

import argparse
import hashlib
import io
import json
import math
import os
import sys
from collections import Counter, defaultdict

import numpy as np

from segkit.data.atomic import write_bytes, write_json
from segkit.data.coco_masks import mask_geometry
from segkit.data.label_names import NumberedGroup, numbered_groups
from segkit.data.layout import REPORT_JSON, REPORT_PNG, SPLITS, TEST_SPLIT, image_root, split_json

TINY_AREA = 16  # px: masks smaller than this are reported
MIN_BBOX_SIDE = 2  # px: boxes thinner than this are reported
SMALL_AREA, MEDIUM_AREA = 32 ** 2, 96 ** 2  # COCO's size ranges
SQRT_AREA_EDGES = (0, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024)
LIST_LIMIT = 10  # problems listed one by one in the printed report (all of them go to JSON)


class DatasetReportError(ValueError):
    """A COCO file is missing or unreadable; the message names the file."""


def load_coco(path):
    """Load and sanity-check one COCO instances file; raises DatasetReportError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DatasetReportError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise DatasetReportError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetReportError(f"{path}: cannot be read ({e})") from None
    if not isinstance(data, dict):
        raise DatasetReportError(f"{path}: not a COCO instances file (top level is not an object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetReportError(f"{path}: not a COCO instances file (no '{key}' list)")
    for key, fields in (("images", ("id", "file_name")), ("annotations", ("id", "image_id", "category_id")),
                        ("categories", ("id", "name"))):
        for i, item in enumerate(data[key]):
            if not isinstance(item, dict) or any(k not in item for k in fields):
                raise DatasetReportError(f"{path}: {key}[{i}] lacks one of {', '.join(fields)}")
    return data


def size_category(area):
    return "small" if area < SMALL_AREA else ("medium" if area < MEDIUM_AREA else "large")


def _bin_labels():
    edges = SQRT_AREA_EDGES
    return [f"{a}-{b}" for a, b in zip(edges[:-1], edges[1:])] + [f">={edges[-1]}"]


def sqrt_area_histogram(areas):
    counts = [0] * len(SQRT_AREA_EDGES)
    for area in areas:
        root = math.sqrt(max(area, 0.0))
        i = 0
        while i + 1 < len(SQRT_AREA_EDGES) and root >= SQRT_AREA_EDGES[i + 1]:
            i += 1
        counts[i] += 1
    return [{"bin": label, "min": SQRT_AREA_EDGES[i],
             "max": SQRT_AREA_EDGES[i + 1] if i + 1 < len(SQRT_AREA_EDGES) else None, "count": c}
            for i, (label, c) in enumerate(zip(_bin_labels(), counts))]


def _analyse_split(coco):
    """Per-split figures plus the per-annotation geometry used for the problem lists."""
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    images = {im["id"]: im for im in coco["images"]}
    per_class = Counter()
    sizes = Counter()
    areas = []
    per_image = Counter()
    crowd = 0
    problems = []
    for ann in coco["annotations"]:
        image = images.get(ann["image_id"])
        name = cats.get(ann["category_id"], f"<unknown category {ann['category_id']}>")
        if image is None:
            problems.append({"image": None, "image_id": ann["image_id"], "annotation_id": ann["id"],
                             "category": name, "area": None, "bbox": None, "reason": "image id not in images"})
            continue
        per_image[ann["image_id"]] += 1
        if ann.get("iscrowd", 0):
            crowd += 1
            continue
        geometry = None
        if image.get("height") and image.get("width"):
            geometry = mask_geometry(ann.get("segmentation"), int(image["height"]), int(image["width"]))
        if geometry is None:
            reason = "no usable segmentation"
            area, bbox = ann.get("area"), ann.get("bbox")
        else:
            area, bbox = geometry
            if area <= 0:
                reason = "empty mask"
            elif area < TINY_AREA:
                reason = f"area < {TINY_AREA} px"
            elif min(bbox[2], bbox[3]) < MIN_BBOX_SIDE:
                reason = f"bbox side < {MIN_BBOX_SIDE} px"
            else:
                reason = None
        per_class[name] += 1
        if area is not None:
            sizes[size_category(float(area))] += 1
            areas.append(float(area))
        if reason:
            problems.append({"image": image["file_name"], "image_id": image["id"], "annotation_id": ann["id"],
                             "category": name, "area": area, "bbox": bbox, "reason": reason})
    negatives = sorted(im["file_name"] for im in coco["images"] if per_image[im["id"]] == 0)
    stats = {
        "images": len(coco["images"]),
        "instances": sum(per_class.values()),
        "crowd_regions": crowd,
        "images_without_annotations": len(negatives),
        "instances_per_class": {c["name"]: per_class[c["name"]]
                                for c in sorted(coco["categories"], key=lambda c: c["id"])},
        "size_distribution": {k: sizes[k] for k in ("small", "medium", "large")},
    }
    for name in sorted(set(per_class) - set(stats["instances_per_class"])):
        stats["instances_per_class"][name] = per_class[name]  # annotations with unknown category ids
    instances_per_image = [per_image[im["id"]] for im in coco["images"]]
    return stats, negatives, areas, problems, instances_per_image


def file_sha1(path):
    """SHA-1 of a file's bytes: what makes two image files exact duplicates (here and in the split)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def numbered_classes(coco):
    """The :class:`~segkit.data.label_names.NumberedGroup` of a COCO file's classes (crowd left out)."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    per_image = defaultdict(Counter)
    for ann in coco["annotations"]:
        if not ann.get("iscrowd", 0) and ann["category_id"] in names:
            per_image[ann["image_id"]][names[ann["category_id"]]] += 1
    return numbered_groups(per_image.values())


def build_report(data_dir):
    """Compute the report dict for ``data_dir`` (nothing printed or written)."""
    files = {"trainval": load_coco(split_json(data_dir, "trainval"))}  # required, checked first
    for split in ("train", "val", TEST_SPLIT):
        path = split_json(data_dir, split)
        if os.path.exists(path):
            files[split] = load_coco(path)
    trainval = files["trainval"]
    classes = [c["name"] for c in sorted(trainval["categories"], key=lambda c: c["id"])]

    splits, warnings = {}, []
    analysed = {}
    for split in SPLITS:
        if split in files:
            analysed[split] = _analyse_split(files[split])
            splits[split] = analysed[split][0]
    _, negatives, areas, problems, per_image = analysed["trainval"]
    for split in ("train", "val", TEST_SPLIT):
        if split in files and [c["name"] for c in sorted(files[split]["categories"], key=lambda c: c["id"])] != classes:
            warnings.append(f"{split}.json declares other categories than trainval.json")

    # exact duplicates and missing files, over every image named by any split file
    images_dir = image_root(data_dir)
    names = sorted({im["file_name"] for coco in files.values() for im in coco["images"]})
    by_hash, missing = defaultdict(list), []
    for name in names:
        path = os.path.join(images_dir, name)
        if os.path.isfile(path):
            by_hash[file_sha1(path)].append(name)
        else:
            missing.append(name)
    duplicates = sorted(sorted(group) for group in by_hash.values() if len(group) > 1)
    split_of = {}
    for split in ("train", "val"):
        for im in files.get(split, {"images": []})["images"]:
            split_of.setdefault(im["file_name"], set()).add(split)
    across = [g for g in duplicates if {"train", "val"} <= set().union(*(split_of.get(n, set()) for n in g))]

    if "val" in files:
        val_counts = splits["val"]["instances_per_class"]
        missing_from_val = [c for c in classes if val_counts.get(c, 0) == 0]
    else:
        missing_from_val = None
        warnings.append("no val.json: classes missing from val not checked")

    if missing:
        warnings.append(f"{len(missing)} image file(s) missing under images/")
    if problems:
        warnings.append(f"{len(problems)} tiny or degenerate mask(s)")
    if duplicates:
        warnings.append(f"{len(duplicates)} group(s) of exact duplicate images"
                        + (f", {len(across)} across train and val" if across else ""))
    if missing_from_val:
        warnings.append(f"class(es) missing from val: {', '.join(missing_from_val)}")
    numbered = numbered_classes(trainval)
    for group in numbered:
        warnings.append(f"classes look numbered per instance: {group.describe('classes')}: probably one class "
                        f'"{group.stem}"')

    return {
        "data_dir": os.path.normpath(data_dir),
        "classes": classes,
        "splits": splits,
        "size_distribution": {
            "thresholds": {"small": f"area < {SMALL_AREA}", "medium": f"{SMALL_AREA} <= area < {MEDIUM_AREA}",
                           "large": f"area >= {MEDIUM_AREA}"},
            **splits["trainval"]["size_distribution"],
            "sqrt_area_histogram": sqrt_area_histogram(areas),
        },
        "instances_per_image": dict(sorted(Counter(per_image).items())),
        "images_without_annotations": negatives,
        "tiny_or_degenerate": problems,
        "duplicate_images": duplicates,
        "duplicates_across_train_val": across,
        "missing_images": missing,
        "classes_missing_from_val": missing_from_val,
        "numbered_classes": [{"stem": g.stem, "instances": g.instances, "used_once": g.used_once} for g in numbered],
        "warnings": warnings,
    }


# --------------------------------------------------------------------------------------------
# presentation
# --------------------------------------------------------------------------------------------
def _table(header, rows):
    """Aligned text table: first column left-aligned, the others right-aligned."""
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_report(report):
    splits = report["splits"]
    order = [s for s in SPLITS if s in splits]
    out = [f"Dataset report: {report['data_dir']}", ""]
    out.append(_table(["split", "images", "instances", "no annotations", "crowd", "small", "medium", "large"],
                      [[s, splits[s]["images"], splits[s]["instances"], splits[s]["images_without_annotations"],
                        splits[s]["crowd_regions"], *splits[s]["size_distribution"].values()] for s in order]))
    out.append("")
    names = list(splits["trainval"]["instances_per_class"])
    rows = [[name] + [splits[s]["instances_per_class"].get(name, 0) for s in order] for name in names]
    rows.append(["total"] + [splits[s]["instances"] for s in order])
    out.append(_table(["class"] + order, rows))
    out.append("")
    hist = [h for h in report["size_distribution"]["sqrt_area_histogram"]]
    last = max([i for i, h in enumerate(hist) if h["count"]] or [0])
    out.append(_table(["sqrt(area) px", "instances"], [[h["bin"], h["count"]] for h in hist[: last + 1]]))
    out.append("")

    def listing(title, items, fmt):
        out.append(f"{title}: {len(items)}")
        for item in items[:LIST_LIMIT]:
            out.append("  " + fmt(item))
        if len(items) > LIST_LIMIT:
            out.append(f"  ... and {len(items) - LIST_LIMIT} more (see report.json)")

    listing("images without annotations", report["images_without_annotations"], str)
    listing("tiny or degenerate masks", report["tiny_or_degenerate"],
            lambda p: f"{p['image']} annotation {p['annotation_id']} ({p['category']}): {p['reason']}"
                      + (f", area {p['area']:g}" if isinstance(p["area"], (int, float)) else ""))
    listing("exact duplicate image groups", report["duplicate_images"], lambda g: " = ".join(g))
    if report["duplicates_across_train_val"]:
        out.append(f"  of which across train and val: {len(report['duplicates_across_train_val'])}")
    listing("missing image files", report["missing_images"], str)
    mv = report["classes_missing_from_val"]
    out.append("classes missing from val: " + ("not checked (no val.json)" if mv is None else (", ".join(mv) or "none")))
    for group in report["numbered_classes"]:
        described = NumberedGroup(group["stem"], group["instances"]).describe("classes")
        out.append(f'classes look numbered per instance: {described}: probably one class "{group["stem"]}" '
                   f"(labelme2coco.py --merge-numbered merges them)")
    return "\n".join(out)


def render_png(report):
    """PNG bytes of a several-panel chart of the report (matplotlib, Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    splits = report["splits"]
    order = [s for s in ("train", "val", TEST_SPLIT) if s in splits] or ["trainval"]
    classes = list(splits["trainval"]["instances_per_class"])
    fig = Figure(figsize=(15, max(8.5, 0.22 * len(classes) + 5)), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    colors = {"train": "#1f77b4", "val": "#ff7f0e", "trainval": "#2ca02c", TEST_SPLIT: "#9467bd"}

    ax = axes[0, 0]
    y = np.arange(len(classes))
    height = 0.8 / len(order)
    for i, s in enumerate(order):
        ax.barh(y + i * height, [splits[s]["instances_per_class"].get(c, 0) for c in classes], height,
                label=s, color=colors[s])
    ax.set_yticks(y + height * (len(order) - 1) / 2)
    ax.set_yticklabels(classes, fontsize=8 if len(classes) < 30 else 5)
    ax.invert_yaxis()
    ax.set_title("instances per class")
    ax.legend(fontsize=8)

    ax = axes[0, 1]
    names = [s for s in SPLITS if s in splits]
    with_ann = [splits[s]["images"] - splits[s]["images_without_annotations"] for s in names]
    without = [splits[s]["images_without_annotations"] for s in names]
    ax.bar(names, with_ann, color="#4c72b0", label="with annotations")
    ax.bar(names, without, bottom=with_ann, color="#c44e52", label="without annotations")
    ax.set_title("images per split")
    ax.legend(fontsize=8)

    ax = axes[0, 2]
    cats = ("small", "medium", "large")
    x = np.arange(len(cats))
    for i, s in enumerate(names):
        ax.bar(x + (i - (len(names) - 1) / 2) * 0.8 / len(names),
               [splits[s]["size_distribution"][c] for c in cats], 0.8 / len(names), label=s, color=colors[s])
    ax.set_xticks(x)
    ax.set_xticklabels(["small\n<32²", "medium\n32²-96²", "large\n≥96²"])
    ax.set_title("instance size (COCO ranges, by mask area)")
    ax.legend(fontsize=8)

    ax = axes[1, 0]
    hist = report["size_distribution"]["sqrt_area_histogram"]
    last = max([i for i, h in enumerate(hist) if h["count"]] or [0])
    hist = hist[: last + 1]
    ax.bar(range(len(hist)), [h["count"] for h in hist], color="#55a868")
    ax.set_xticks(range(len(hist)))
    ax.set_xticklabels([h["bin"] for h in hist], rotation=45, ha="right", fontsize=8)
    for edge in (32, 96):
        if edge in SQRT_AREA_EDGES[: len(hist)]:
            ax.axvline(SQRT_AREA_EDGES.index(edge) - 0.5, color="gray", linestyle="--", linewidth=1)
    ax.set_title("sqrt(mask area) in px (trainval)")

    ax = axes[1, 1]
    per_image = report["instances_per_image"]
    ax.bar([int(k) for k in per_image], list(per_image.values()), color="#8172b2")
    ax.set_xlabel("instances in the image")
    ax.set_ylabel("images")
    ax.set_title("instances per image (trainval)")

    ax = axes[1, 2]
    ax.axis("off")
    mv = report["classes_missing_from_val"]
    lines = [
        f"images (trainval): {splits['trainval']['images']}",
        f"instances (trainval): {splits['trainval']['instances']}",
        f"classes: {len(classes)}",
        f"images without annotations: {len(report['images_without_annotations'])}",
        f"tiny or degenerate masks: {len(report['tiny_or_degenerate'])}",
        f"duplicate image groups: {len(report['duplicate_images'])}",
        f"missing image files: {len(report['missing_images'])}",
        "classes missing from val: " + ("not checked" if mv is None else (", ".join(mv[:6]) or "none")
                                        + (" ..." if mv and len(mv) > 6 else "")),
    ]
    ax.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=10,
            transform=ax.transAxes)
    ax.set_title("problems", loc="left")

    fig.suptitle(f"dataset report: {report['data_dir']}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def report_data_dir(data_dir, print_fn=print):
    """Build the report, print it, write ``DIR/report.json`` and ``DIR/report.png``; returns the dict."""
    report = build_report(data_dir)
    if print_fn is not None:
        print_fn(format_report(report))
    write_json(os.path.join(data_dir, REPORT_JSON), report)
    write_bytes(os.path.join(data_dir, REPORT_PNG), render_png(report))
    if print_fn is not None:
        print_fn(f"wrote {os.path.join(data_dir, REPORT_JSON)} and {os.path.join(data_dir, REPORT_PNG)}")
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m segkit.data.report",
                                     description="Report on a converted COCO data folder.")
    parser.add_argument("data_dir", help="folder with trainval.json (and train.json, val.json), images/")
    args = parser.parse_args(argv)
    try:
        report_data_dir(args.data_dir)
    except DatasetReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
