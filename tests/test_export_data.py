"""export_data.py: COCO -> LabelMe -> COCO keeps every mask; COCO -> YOLO-seg keeps the polygons."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest
import yaml
from conftest import ROOT
from PIL import Image
from scipy.ndimage import binary_fill_holes

from segkit.data.coco_convert import convert
from segkit.data.coco_export import coco_sources, export_labelme, export_yolo
from segkit.data.coco_masks import mask_to_rle, segmentation_to_mask
from segkit.data.labelme import read_labels_file

W, H = 96, 80


def _ring(cx, cy, r_out, r_in):
    yy, xx = np.mgrid[0:H, 0:W]
    d = np.hypot(xx - cx, yy - cy)
    return (d <= r_out) & (d >= r_in)


def _blob(rng):
    yy, xx = np.mgrid[0:H, 0:W]
    cx, cy = rng.uniform(20, W - 20), rng.uniform(20, H - 20)
    a, b = rng.uniform(5, 15), rng.uniform(4, 12)
    t = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
    v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def _make_coco_folder(root):
    """A data folder with varied shapes: polygons (one and several per instance, sub-pixel
    vertices), RLE blobs, RLE rings (holes), a one-pixel-wide RLE line, an uncompressed-RLE crowd
    region (CVAT style), negatives, an image in a sub-folder; category ids start at 0."""
    rng = np.random.default_rng(7)
    cats = [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}, {"id": 5, "name": "bird"}]
    images, anns = [], []

    def add(image_id, cat, segmentation, iscrowd=0):
        anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat,
                     "segmentation": segmentation, "iscrowd": iscrowd, "area": 0, "bbox": [0, 0, 0, 0]})

    for i in range(6):
        name = f"sub/img_{i}.png" if i == 3 else f"img_{i}.png"
        os.makedirs(os.path.dirname(os.path.join(root, "images", name)), exist_ok=True)
        pixels = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(root, "images", name))
        images.append({"id": i + 1, "file_name": name, "width": W, "height": H})
        if i == 4:
            continue  # a negative
        x0, y0 = rng.uniform(5, 30), rng.uniform(5, 30)
        add(i + 1, 0, [[x0, y0, x0 + 30.25, y0 + 3.5, x0 + 20.7, y0 + 25.1, x0 + 2.2, y0 + 18.9]])
        add(i + 1, 1, [[60, 10, 80, 10, 80, 25, 60, 25], [62, 40, 78, 40, 70, 55.5]])  # two pieces
        add(i + 1, 5, mask_to_rle(_blob(rng)))
        add(i + 1, 0, mask_to_rle(_ring(rng.uniform(25, 70), rng.uniform(25, 55), 14, 6)))
        line = np.zeros((H, W), bool)
        line[70, 10:60] = True
        add(i + 1, 1, mask_to_rle(line))
        if i == 2:
            crowd = np.zeros((H, W), bool)
            crowd[2:20, 40:90] = True
            rle = mask_util.encode(np.asfortranarray(crowd.astype(np.uint8)))
            counts = [int(v) for v in mask_util.decode(rle).flatten(order="F").astype(np.int64).tolist()]
            runs, value, n = [], 0, 0
            for v in counts:  # uncompressed RLE as CVAT writes it
                if v != value:
                    runs.append(n)
                    value, n = v, 0
                n += 1
            runs.append(n)
            add(i + 1, 1, {"size": [H, W], "counts": runs}, iscrowd=1)
    coco = {"images": images, "annotations": anns, "categories": cats}
    train = dict(coco, images=images[:4], annotations=[a for a in anns if a["image_id"] <= 4])
    val = dict(coco, images=images[4:], annotations=[a for a in anns if a["image_id"] > 4])
    for name, data in (("train", train), ("val", val), ("trainval", coco)):
        with open(os.path.join(root, f"{name}.json"), "w") as f:
            json.dump(data, f)
    return coco


def _masks_by_image(coco):
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    out = {}
    for image in coco["images"]:
        out[os.path.basename(image["file_name"])] = []
    images = {im["id"]: im for im in coco["images"]}
    for a in coco["annotations"]:
        im = images[a["image_id"]]
        mask = segmentation_to_mask(a["segmentation"], im["height"], im["width"])
        out[os.path.basename(im["file_name"])].append((cats[a["category_id"]], bool(a["iscrowd"]), mask))
    return out


def _iou(a, b):
    return np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1)


def _tree_digest(folder):
    digest = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(folder)):
        for f in sorted(files):
            with open(os.path.join(dirpath, f), "rb") as fh:
                digest.update(f.encode() + fh.read())
    return digest.hexdigest()


def test_coco_labelme_coco_round_trip_keeps_every_mask(tmp_path):
    src = tmp_path / "data"
    original = _make_coco_folder(str(src))
    before = _tree_digest(src)
    sources, image_root = coco_sources(str(src))
    result = export_labelme(sources, image_root, str(tmp_path / "labelme"), progress=False)
    assert result.problems == []
    assert result.images == 6 and result.shapes["mask"] >= 5  # the rings (holes) at least
    assert _tree_digest(src) == before  # input untouched
    doc = json.loads((tmp_path / "labelme" / "sub" / "img_3.json").read_text())
    assert doc["imagePath"] == "img_3.png" and (doc["imageWidth"], doc["imageHeight"]) == (W, H)
    labels = read_labels_file(tmp_path / "labelme" / "labels.txt")
    assert labels == ["cat", "dog", "bird"]  # category-id order

    back = convert(tmp_path / "labelme", tmp_path / "back", labels=labels, val_fraction=0, progress=False)
    assert back.exit_code == 0 and back.problems == [], back.problems
    want, got = _masks_by_image(original), _masks_by_image(back.coco["trainval"])
    assert sorted(want) == sorted(got)
    for name, anns in want.items():
        crowd_back = [m for _, crowd, m in got[name] if crowd]
        things_back = [(c, m) for c, crowd, m in got[name] if not crowd]
        assert len(things_back) == sum(1 for _, crowd, _ in anns if not crowd), name
        for cls, crowd, mask in anns:
            if crowd:  # __ignore__ comes back as a crowd region of every class
                assert len(crowd_back) == len(labels) and all(_iou(mask, m) >= 0.99 for m in crowd_back)
                continue
            best = max(_iou(mask, m) for c, m in things_back if c == cls)
            assert best >= 0.99, (name, cls, best)

    # a second export keeps the JSON files a user may have corrected
    again = export_labelme(sources, image_root, str(tmp_path / "labelme"), progress=False)
    assert again.kept_json == 6 and again.output_files == []


def test_sample_polygons_come_back_exactly(sample_data, tmp_path):
    sources, image_root = coco_sources(str(sample_data))
    export_labelme(sources, image_root, str(tmp_path / "labelme"), mode="symlink", progress=False)
    assert os.path.islink(tmp_path / "labelme" / "sample_0000.jpg")
    back = convert(tmp_path / "labelme", tmp_path / "back", val_fraction=0, progress=False)
    with open(sample_data / "trainval.json") as f:
        original = json.load(f)
    key = lambda a: (a["image_id"], a["category_id"], json.dumps(a["segmentation"]))  # noqa: E731
    # ids follow the sorted file names in both: polygons, classes and images are the same
    assert sorted(map(key, back.coco["trainval"]["annotations"])) == sorted(map(key, original["annotations"]))


def _read_yolo(folder, split, stem):
    with open(os.path.join(folder, "labels", split, stem + ".txt")) as f:
        rows = [line.split() for line in f if line.strip()]
    return [(int(r[0]), np.asarray(r[1:], float).reshape(-1, 2) * (W, H)) for r in rows]


def test_yolo_export_gives_the_same_polygons(tmp_path):
    src = tmp_path / "data"
    original = _make_coco_folder(str(src))
    out = tmp_path / "yolo"
    proc = subprocess.run([sys.executable, str(ROOT / "export_data.py"), str(src), "--to", "yolo",
                           "--output", str(out), "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "crowd regions (YOLO has none): 1" in proc.stdout
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == ["cat", "dog", "bird"] and data["train"] == "images/train" and data["val"] == "images/val"
    assert sorted(os.listdir(out / "images" / "val")) == ["img_4.png", "img_5.png"]
    assert (out / "labels" / "val" / "img_4.txt").read_text() == ""  # negative: empty label file

    index = {0: 0, 1: 1, 5: 2}
    for image in original["images"][:4]:
        stem = os.path.splitext(os.path.basename(image["file_name"]))[0]
        rows = _read_yolo(out, "train", stem)
        anns = [a for a in original["annotations"] if a["image_id"] == image["id"] and not a["iscrowd"]]
        assert [c for c, _ in rows] == [index[a["category_id"]] for a in anns]
        for (_, points), a in zip(rows, anns):
            seg = a["segmentation"]
            if isinstance(seg, list) and len(seg) == 1:  # a single polygon: the same vertices
                np.testing.assert_allclose(points, np.reshape(seg[0], (-1, 2)), atol=1e-4)
            else:  # pieces joined by bridges / traced RLE: the same pixels, holes filled (YOLO has none)
                filled = mask_util.decode(mask_util.frPyObjects([points.flatten().tolist()], H, W))[..., 0]
                want = binary_fill_holes(segmentation_to_mask(seg, H, W))
                assert _iou(filled.astype(bool), want) >= 0.97


def test_bad_input_is_reported_and_the_rest_exported(tmp_path):
    src = tmp_path / "data"
    coco = _make_coco_folder(str(src))
    coco["images"].append({"id": 99, "file_name": "../outside.png", "width": W, "height": H})
    coco["images"].append({"id": 98, "file_name": "gone.png", "width": W, "height": H})
    coco["annotations"].append({"id": 500, "image_id": 1, "category_id": 42, "segmentation": [[1, 1, 5, 1, 5, 5]]})
    coco["annotations"].append({"id": 501, "image_id": 2, "category_id": 0, "segmentation": [[1, 1, 5, 1]]})
    path = tmp_path / "all.json"
    path.write_text(json.dumps(coco))
    sources, image_root = coco_sources(str(path), str(src / "images"))
    result = export_labelme(sources, image_root, str(tmp_path / "labelme"), progress=False)
    assert result.images == 6
    reasons = sorted(line.split(": ", 2)[-1] for line in result.problems)
    assert reasons == sorted(["category_id 42 not in categories", "file_name is a URL or leaves the image folder",
                              f"image not found under {src / 'images'}", "no polygon with 3 or more points"])
    assert all(line.startswith(str(path)) for line in result.problems)


@pytest.mark.parametrize("fmt", ["labelme", "yolo"])
def test_same_input_same_bytes(tmp_path, fmt):
    src = tmp_path / "data"
    _make_coco_folder(str(src))
    sources, image_root = coco_sources(str(src))
    digests = []
    for run in ("a", "b"):
        if fmt == "labelme":
            export_labelme(sources, image_root, str(tmp_path / run), progress=False)
        else:
            export_yolo(sources, image_root, str(tmp_path / run), progress=False)
        digests.append(_tree_digest(tmp_path / run))
    assert digests[0] == digests[1]


def test_yolo_export_imports_back(tmp_path):
    """export_data.py --to yolo, then import_data.py's YOLO reader: classes, splits and masks return."""
    from segkit.data.importer import import_folder

    src = tmp_path / "data"
    original = _make_coco_folder(str(src))
    sources, image_root = coco_sources(str(src))
    export_yolo(sources, image_root, str(tmp_path / "yolo"), progress=False)
    back = import_folder(str(tmp_path / "yolo"), str(tmp_path / "back"), fmt="yolo", progress=False)
    assert back.exit_code == 0 and back.problems == [] and back.split_from_source
    coco = back.coco["trainval"]
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog", "bird"]
    assert sorted(os.path.basename(im["file_name"]) for im in back.coco["val"]["images"]) == ["img_4.png", "img_5.png"]
    want, got = _masks_by_image(original), _masks_by_image(coco)
    for name, anns in want.items():
        things = [(c, binary_fill_holes(m)) for c, crowd, m in anns if not crowd]
        assert [c for c, _ in things] == [c for c, _, _ in got[name]]
        for (cls, mask), (_, _, back_mask) in zip(things, got[name]):
            assert _iou(mask, back_mask) >= 0.97, (name, cls)
