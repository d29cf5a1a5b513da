"""import_data.py: one section per format, on fixtures written in the layout (and with the quirks) of
the tool that makes them; then the bad-input rules and determinism."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest
from conftest import (H, ROOT, W, coco_doc, make_image, make_label_studio, rect_poly, run_train_net, tree_digest,
                      uncompressed_rle_counts)
from PIL import Image

from segkit.data.importer import LayoutError, detect_format, import_folder, main


# ---------------------------------------------------------------- helpers

def box_mask(x, y, w, h, width=W, height=H):
    m = np.zeros((height, width), dtype=bool)
    m[y:y + h, x:x + w] = True
    return m


def load(out, split="trainval"):
    with open(os.path.join(out, f"{split}.json"), encoding="utf-8") as f:
        return json.load(f)


def masks_by_file(coco):
    """file_name -> sorted [(class name, mask pixel count, iscrowd)]."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    images = {im["id"]: im for im in coco["images"]}
    out = {im["file_name"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        im = images[a["image_id"]]
        seg = a["segmentation"]
        rle = (mask_util.merge(mask_util.frPyObjects(seg, im["height"], im["width"])) if isinstance(seg, list)
               else {"size": seg["size"], "counts": seg["counts"].encode()})
        area = int(mask_util.area(rle))
        assert a["area"] == area and a["bbox"] == [float(v) for v in mask_util.toBbox(rle)]
        out[im["file_name"]].append((names[a["category_id"]], area, a["iscrowd"]))
    return {k: sorted(v) for k, v in out.items()}


def check_folder(out):
    """The invariants of every data folder: ids 1.., same categories, splits partition trainval, files exist."""
    trainval, train, val = load(out), load(out, "train"), load(out, "val")
    assert train["categories"] == val["categories"] == trainval["categories"]
    assert [c["id"] for c in trainval["categories"]] == list(range(1, len(trainval["categories"]) + 1))
    assert [im["id"] for im in trainval["images"]] == list(range(1, len(trainval["images"]) + 1))
    assert sorted(im["id"] for im in train["images"] + val["images"]) == [im["id"] for im in trainval["images"]]
    for im in trainval["images"]:
        path = os.path.join(out, "images", im["file_name"])
        with Image.open(path) as pil:
            assert pil.size == (im["width"], im["height"])
        assert im["source_file"] and not os.path.isabs(im["source_file"])
        assert os.path.isfile(os.path.join(trainval["info"]["source"], im["source_file"]))
    return trainval


def run(src, out, **kwargs):
    kwargs.setdefault("progress", False)
    return import_folder(str(src), str(out), **kwargs)


# ---------------------------------------------------------------- COCO

def test_coco_label_studio(tmp_path):
    src = tmp_path / "ls"
    make_label_studio(src)
    before = tree_digest(src)
    assert detect_format(str(src))[0] == "coco"
    lines = []
    result = run(src, tmp_path / "data", echo=lines.append)
    assert tree_digest(src) == before  # inputs never modified
    assert result.written and not result.split_from_source
    coco = check_folder(str(tmp_path / "data"))
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog"]  # source order, ids now 1..K
    got = masks_by_file(coco)
    assert got == {"1a2b3c4d-cat.jpg": [("cat", 80, 0)], "5e6f7a8b-two.jpg": [("cat", 25, 0), ("dog", 144, 0)],
                   "9c0d1e2f-empty.jpg": [], "77aa88bb-url.jpg": [("dog", 16, 0)],  # a URL: found by name
                   "0f0f0f0f-server.jpg": []}  # a negative stays; a server path: found by name
    assert lines == ["result.json: image 'images\\\\deadbeef-gone.jpg' not found"]
    assert {im["source_file"] for im in coco["images"]} == {"result.json"}
    assert coco["info"]["source"] == str(src)


def make_cvat(root, new_layout=False):
    """CVAT 'COCO 1.0': annotations/instances_default.json + images/ (images/default/ in newer CVAT),
    an attributes dict, a crowd mask as uncompressed RLE."""
    image_dir = root / "images" / "default" if new_layout else root / "images"
    make_image(image_dir / "frame_000000.png", seed=4)
    make_image(image_dir / "frame_000001.png", seed=5)
    crowd = mask_util.encode(np.asfortranarray(box_mask(30, 20, 10, 10).astype(np.uint8)))
    crowd_counts = [int(v) for v in uncompressed_rle_counts(box_mask(30, 20, 10, 10))]
    assert mask_util.area(mask_util.frPyObjects({"size": [H, W], "counts": crowd_counts}, H, W)) == mask_util.area(crowd)
    doc = coco_doc(
        [{"id": 1, "file_name": "frame_000000.png", "width": W, "height": H, "license": 0, "flickr_url": "",
          "coco_url": "", "date_captured": 0},
         {"id": 2, "file_name": "frame_000001.png", "width": W, "height": H}],
        [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [rect_poly(4, 4, 10, 10)], "area": 100.0,
          "bbox": [4.0, 4.0, 10.0, 10.0], "iscrowd": 0, "attributes": {"occluded": False}},
         {"id": 2, "image_id": 1, "category_id": 1, "segmentation": {"size": [H, W], "counts": crowd_counts},
          "area": 100.0, "bbox": [30.0, 20.0, 10.0, 10.0], "iscrowd": 1, "attributes": {"occluded": False}},
         {"id": 3, "image_id": 2, "category_id": 2, "segmentation": [rect_poly(0, 0, 6, 6)], "area": 36.0,
          "bbox": [0.0, 0.0, 6.0, 6.0], "iscrowd": 0, "attributes": {}},
         {"id": 4, "image_id": 2, "category_id": 1, "segmentation": [rect_poly(20, 20, 8, 8)], "area": 64.0,
          "bbox": [20.0, 20.0, 8.0, 8.0], "iscrowd": 0, "attributes": {}}],
        [{"id": 1, "name": "car", "supercategory": ""}, {"id": 2, "name": "bike", "supercategory": ""}])
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_default.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("new_layout", [False, True])
def test_coco_cvat(tmp_path, new_layout):
    src = tmp_path / "cvat"
    make_cvat(src, new_layout)
    result = run(src, tmp_path / "data")
    assert result.written and result.problems == []
    coco = check_folder(str(tmp_path / "data"))
    assert [c["name"] for c in coco["categories"]] == ["car", "bike"]
    prefix = "default/" if new_layout else ""
    assert masks_by_file(coco) == {f"{prefix}frame_000000.png": [("car", 100, 0), ("car", 100, 1)],
                                   f"{prefix}frame_000001.png": [("bike", 36, 0), ("car", 64, 0)]}
    crowd = next(a for a in coco["annotations"] if a["iscrowd"])
    assert isinstance(crowd["segmentation"]["counts"], str)  # stored compressed


def make_roboflow(root):
    """Roboflow 'COCO Segmentation': train/ valid/ test/ with _annotations.coco.json beside the images,
    category 0 an unused super-category, bbox as strings, ids restarting at 0, hashed names."""
    for split, n in (("train", 3), ("valid", 2), ("test", 1)):
        images, anns = [], []
        for i in range(n):
            name = f"img{i}_jpg.rf.{hashlib.md5(f'{split}{i}'.encode()).hexdigest()}.jpg"
            make_image(root / split / name, seed=hash((split, i)) % 1000)
            images.append({"id": i, "license": 1, "file_name": name, "height": H, "width": W,
                           "date_captured": "2026-11-01T10:00:00+00:00", "extra": {"name": f"img{i}.jpg"}})
            anns.append({"id": i, "image_id": i, "category_id": 1 + i % 2, "bbox": ["3", "3", "9", "9"],
                         "area": "81", "segmentation": [rect_poly(3, 3, 9, 9)], "iscrowd": 0})
        cats = [{"id": 0, "name": "shapes", "supercategory": "none"},
                {"id": 1, "name": "circle", "supercategory": "shapes"},
                {"id": 2, "name": "square", "supercategory": "shapes"}]
        (root / split / "_annotations.coco.json").write_text(json.dumps(coco_doc(images, anns, cats)))


def test_coco_roboflow_keeps_splits_and_drops_the_super_category(tmp_path):
    src = tmp_path / "rf"
    make_roboflow(src)
    result = run(src, tmp_path / "data")
    assert result.written and result.split_from_source and result.problems == []
    coco = check_folder(str(tmp_path / "data"))
    assert [c["name"] for c in coco["categories"]] == ["circle", "square"]
    train, val = load(str(tmp_path / "data"), "train"), load(str(tmp_path / "data"), "val")
    assert {im["file_name"].split("/")[0] for im in train["images"]} == {"train"}
    assert {im["file_name"].split("/")[0] for im in val["images"]} == {"valid"}
    assert len(train["images"]) == 3 and len(val["images"]) == 2
    assert all(a["bbox"] == [3.0, 3.0, 9.0, 9.0] and a["area"] == 81.0 for a in coco["annotations"])
    # the test split is kept apart, with its labels: not in trainval.json, never trained on
    test = load(str(tmp_path / "data"), "test")
    assert [im["file_name"].split("/")[0] for im in test["images"]] == ["test"] and len(test["annotations"]) == 1
    assert test["categories"] == coco["categories"] and [im["id"] for im in test["images"]] == [6]
    assert result.images == [3, 2, 1] and result.test_from_source
    assert list(result.log.skipped) == ["categories no annotation uses (dropped)"]  # no image skipped
    resplit = run(src, tmp_path / "data2", resplit=True, val_fraction=0.3)
    assert not resplit.split_from_source and sum(resplit.images) == 6 and resplit.images[2] == 0
    assert not os.path.exists(tmp_path / "data2" / "test.json")  # --resplit folds it into our split


def test_coco_bad_input_one_line_each_and_the_run_goes_on(tmp_path):
    src = tmp_path / "bad"
    make_image(src / "images" / "ok.jpg", seed=1)
    make_image(src / "images" / "small.jpg", width=20, height=20, seed=2)
    (src / "images" / "broken.jpg").write_bytes(b"not an image")
    make_image(tmp_path / "outside.jpg", seed=3)
    doc = coco_doc(
        [{"id": 1, "file_name": "ok.jpg", "width": W, "height": H},
         {"id": 2, "file_name": "small.jpg", "width": W, "height": H},  # wrong size in the JSON
         {"id": 3, "file_name": "broken.jpg", "width": W, "height": H},
         {"id": 4, "file_name": "../outside.jpg", "width": W, "height": H},
         {"id": 5, "file_name": "gone.jpg", "width": W, "height": H}],
        [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [rect_poly(1, 1, 8, 8)], "iscrowd": 0},
         {"id": 2, "image_id": 1, "category_id": 7, "segmentation": [rect_poly(1, 1, 8, 8)], "iscrowd": 0},
         {"id": 3, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 5, 5]], "iscrowd": 0},
         {"id": 4, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "iscrowd": 0}],
        [{"id": 1, "name": "cat"}])
    (src / "annotations.json").write_text(json.dumps(doc))
    (src / "broken.json").write_text('{"images": [')
    lines = []
    result = run(src, tmp_path / "data", echo=lines.append, fmt="coco")
    assert all(line.count(": ") >= 1 and "\n" not in line for line in lines)
    assert sorted(lines) == sorted([
        "broken.json: unreadable JSON (Expecting value: line 1 column 13 (char 12))",
        "annotations.json: image 'small.jpg': JSON says 48x36, image is 20x20 (after EXIF orientation), skipped",
        "annotations.json: unreadable image (UnidentifiedImageError: cannot identify image file "
        f"'{src / 'images' / 'broken.jpg'}')",
        "annotations.json: image '../outside.jpg' lies outside the source folder, skipped",
        "annotations.json: image 'gone.jpg' not found",
        "annotations.json: annotation 2 of image 'ok.jpg': category_id 7 is not declared",
        "annotations.json: annotation 3 of image 'ok.jpg': polygon with fewer than 3 points, skipped",
        "annotations.json: annotation 4 of image 'ok.jpg': no segmentation (a box only), skipped",
    ])
    assert result.written and masks_by_file(load(str(tmp_path / "data"))) == {"ok.jpg": [("cat", 64, 0)]}
    strict = run(src, tmp_path / "strict", fmt="coco", strict=True)
    assert strict.exit_code == 1 and not os.path.exists(tmp_path / "strict")




def test_ambiguous_and_unknown_layouts_are_refused_with_one_line(tmp_path, capsys):
    src = tmp_path / "both"
    make_cvat(src)
    (src / "x.json").write_text(json.dumps({"shapes": [], "imagePath": "images/frame_000000.png"}))
    with pytest.raises(LayoutError, match="ambiguous layout"):
        detect_format(str(src))
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--output", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no known annotation layout" in err[0]
    assert main([str(src), "--output", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ambiguous layout (coco:" in err[0] and "labelme:" in err[0]


def test_cli_says_what_it_detected(tmp_path):
    src = tmp_path / "rf"
    make_roboflow(src)
    proc = subprocess.run([sys.executable, str(ROOT / "import_data.py"), str(src), "--output", str(tmp_path / "data"),
                           "--quiet", "--no-report"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"{src}: detected coco: COCO JSON (test/_annotations.coco.json" in proc.stdout
    assert "splits kept from the source; its test split kept apart as test.json" in proc.stdout
    assert 'DATASETS.TRAIN "(\'mydata_train\',)"' in proc.stdout
    # the summary counts the test split and says how to measure a model on it
    assert [line.split() for line in proc.stdout.splitlines() if line.startswith("  converted")] == \
        [["converted", "3", "2", "1", "6"]]
    assert f"wrote {tmp_path / 'data' / 'trainval.json'}" in proc.stdout and str(tmp_path / "data" / "test.json") in proc.stdout
    assert f'python train_net.py --eval-only --split test DATASETS.DATA_DIR "{tmp_path / "data"}"' in proc.stdout


# ---------------------------------------------------------------- YOLO-seg

def _yolo_line(cls, x, y, w, h, width=W, height=H):
    pts = rect_poly(x, y, w, h)
    return f"{cls} " + " ".join(f"{v / (width if i % 2 == 0 else height):.6f}" for i, v in enumerate(pts))


@pytest.mark.parametrize("layout", ["images/train", "train/images"])
def test_yolo_ultralytics_layouts(tmp_path, layout):
    src = tmp_path / "yolo"
    first, second = layout.split("/")
    for split in ("train", "val"):
        img_dir = src / (f"images/{split}" if first == "images" else f"{split}/images")
        lbl_dir = src / (f"labels/{split}" if first == "images" else f"{split}/labels")
        lbl_dir.mkdir(parents=True)
        for i in range(2):
            # a PNG file named .jpg, as web-scraped sets have
            make_image(img_dir / f"{split}{i}.jpg", seed=i + 10 * (split == "val"), fmt="PNG")
            (lbl_dir / f"{split}{i}.txt").write_text(_yolo_line(i, 4, 4, 10, 12) + "\n" + _yolo_line(1, 20, 10, 8, 8) + "\n")
        (lbl_dir.parent / "labels.cache").write_bytes(b"\x80\x04 not a label file")
    make_image(src / (f"images/train" if first == "images" else "train/images") / "negative.jpg", seed=99)
    (src / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n  0: person\n  1: bicycle\n")
    assert detect_format(str(src))[0] == "yolo"
    result = run(src, tmp_path / "data")
    assert result.written and result.split_from_source and result.problems == []
    coco = check_folder(str(tmp_path / "data"))
    assert [c["name"] for c in coco["categories"]] == ["person", "bicycle"]
    got = masks_by_file(coco)
    prefix = "train/" if first == "images" else "train/images/"
    assert got[f"{prefix}train0.jpg"] == [("bicycle", 64, 0), ("person", 120, 0)]
    assert got[f"{prefix}negative.jpg"] == []
    assert len(load(str(tmp_path / "data"), "val")["images"]) == 2
    im = next(i for i in coco["images"] if i["file_name"] == f"{prefix}train1.jpg")
    assert im["source_file"] == ("labels/train/train1.txt" if first == "images" else "train/labels/train1.txt")


def test_yolo_label_studio_flat_layout_and_bad_lines(tmp_path):
    src = tmp_path / "ls_yolo"
    (src / "labels").mkdir(parents=True)
    for i in range(4):
        make_image(src / "images" / f"img{i}.jpg", seed=i)
        (src / "labels" / f"img{i}.txt").write_text(_yolo_line(i % 2, 2, 2, 12, 12) + "\n")
    (src / "classes.txt").write_text("cat\ndog\n")
    (src / "notes.json").write_text(json.dumps({"categories": [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}],
                                                "info": {"year": 2026}}))
    (src / "labels" / "img0.txt").write_text("\n".join([
        _yolo_line(0, 2, 2, 12, 12),
        "0 0.1 0.1 0.5 0.1 0.5",          # odd number of coordinates
        "1 0.1 0.1 1.5 0.1 0.5 0.5",      # outside 0..1
        "7 0.1 0.1 0.5 0.1 0.5 0.5",      # class id out of range
        "0 0.5 0.5 0.2 0.2",              # a detection box
        "0 0.1 0.1",                      # 1 point
    ]) + "\n")
    assert detect_format(str(src))[0] == "yolo"
    lines = []
    result = run(src, tmp_path / "data", echo=lines.append, val_fraction=0.25)
    assert lines == ["labels/img0.txt: line 2: odd number of coordinates (5), skipped",
                     "labels/img0.txt: line 3: coordinates outside 0..1, skipped",
                     "labels/img0.txt: line 4: class id 7 out of range (0..1), skipped",
                     "labels/img0.txt: line 5: a box (detection label), not a polygon, skipped",
                     "labels/img0.txt: line 6: polygon with fewer than 3 points, skipped"]
    assert result.written and not result.split_from_source and result.images == [2, 2, 0]  # each class in val
    coco = check_folder(str(tmp_path / "data"))
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog"]
    assert masks_by_file(coco)["img0.jpg"] == [("cat", 144, 0)]


# ---------------------------------------------------------------- semantic label folders (Oxford-IIIT Pets)

PETS = [("Abyssinian_1", "trainval", 1), ("Abyssinian_2", "test", 1), ("beagle_1", "trainval", 2),
        ("beagle_2", "trainval", 2), ("Bengal_1", "trainval", 1), ("boxer_1", "test", 2)]


def make_pets(root, size=64):
    """The Oxford-IIIT Pets layout: images/*.jpg, annotations/trimaps/*.png (1 pet, 2 background,
    3 border), annotations/trainval.txt and test.txt ('Image CLASS-ID SPECIES BREED-ID'), plus the
    macOS '._' files the real archive carries and an image listed nowhere."""
    (root / "annotations" / "trimaps").mkdir(parents=True)
    lists = {"trainval": [], "test": []}
    for k, (stem, split, species) in enumerate(PETS + [("unlisted_1", None, 2)]):
        rng = np.random.default_rng(k)
        image = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
        x, y = 8 + 4 * k, 10 + 2 * k
        image[y:y + 24, x:x + 24] = (200, 120, 40) if species == 1 else (40, 160, 220)
        make_image(root / "images" / f"{stem}.jpg")
        Image.fromarray(image).save(root / "images" / f"{stem}.jpg", quality=95)
        trimap = np.full((size, size), 2, dtype=np.uint8)
        trimap[y - 1:y + 25, x - 1:x + 25] = 3
        trimap[y:y + 24, x:x + 24] = 1
        Image.fromarray(trimap).save(root / "annotations" / "trimaps" / f"{stem}.png")
        (root / "annotations" / "trimaps" / f"._{stem}.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
        if split:
            lists[split].append(f"{stem} {k + 1} {species} {k + 1}")
    for split, lines in lists.items():
        (root / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")


def test_semantic_pets_layout(tmp_path):
    src = tmp_path / "pets"
    make_pets(src)
    fmt, evidence = detect_format(str(src))
    assert fmt == "semantic" and "Pets" in evidence
    result = run(src, tmp_path / "data_pets")
    assert result.written and result.test_from_source and result.problems == []
    assert not result.split_from_source  # Pets has no val list: val is carved out of trainval.txt
    assert result.log.skipped["images in neither trainval.txt nor test.txt (left out)"] == 1
    coco = check_folder(str(tmp_path / "data_pets"))
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog"]
    got = masks_by_file(coco)
    # the pet (24x24) as its species; the 1 px border as a crowd region in every category
    assert got["Abyssinian_1.jpg"] == [("cat", 100, 1), ("cat", 576, 0), ("dog", 100, 1)]
    assert masks_by_file(load(str(tmp_path / "data_pets"), "test"))["boxer_1.jpg"] == \
        [("cat", 100, 1), ("dog", 100, 1), ("dog", 576, 0)]
    test = load(str(tmp_path / "data_pets"), "test")
    assert sorted(im["file_name"] for im in test["images"]) == ["Abyssinian_2.jpg", "boxer_1.jpg"]  # test.txt
    val = load(str(tmp_path / "data_pets"), "val")  # carved from trainval.txt: one of each class
    assert sorted(im["file_name"].split("_")[0] for im in val["images"]) in (["Abyssinian", "beagle"],
                                                                           ["Bengal", "beagle"])
    assert {im["source_file"] for im in coco["images"] + test["images"]} == \
        {f"annotations/trimaps/{s}.png" for s, _, _ in PETS}


def test_semantic_generic_folder_with_mapping_and_bad_values(tmp_path):
    src = tmp_path / "sem"
    (src / "labels").mkdir(parents=True)
    for k in range(3):
        make_image(src / "images" / f"s{k}.png", seed=k)
        label = np.zeros((H, W), dtype=np.uint8)
        label[2:12, 2:12] = 1
        label[20:30, 20:40] = 2
        label[0, :] = 255
        if k == 2:
            label[33:36, 0:4] = 9  # not in the mapping
        Image.fromarray(label).save(src / "labels" / f"s{k}.png")
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(src / "labels" / "s_small.png")
    make_image(src / "images" / "s_small.png", seed=7)
    (src / "classes.json").write_text(json.dumps({"0": "background", "1": "road", "2": "car", "255": "__ignore__"}))
    assert detect_format(str(src))[0] == "semantic"
    lines = []
    result = run(src, tmp_path / "data", echo=lines.append)
    assert lines == ["labels/s2.png: label value(s) [9] not in the mapping, ignored",
                     "labels/s_small.png: label PNG is 10x10, image is 48x36, skipped"]
    coco = check_folder(str(tmp_path / "data"))
    assert [c["name"] for c in coco["categories"]] == ["road", "car"]
    assert masks_by_file(coco)["s2.png"] == [("car", 60, 1), ("car", 200, 0), ("road", 60, 1), ("road", 100, 0)]  # ignored: row 0 + the 9s


# ---------------------------------------------------------------- an imported folder trains

@pytest.mark.slow
def test_imported_pets_folder_trains_the_unet_with_config_keys_only(tmp_path):
    make_pets(tmp_path / "pets")
    proc = subprocess.run([sys.executable, str(ROOT / "import_data.py"), "pets", "--output", "data_pets", "--quiet",
                           "--no-report"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    proc = run_train_net(
        "--config-file", ROOT / "configs/unet_R18_mini.yaml", "DATASETS.DATA_DIR", "data_pets",
        "OUTPUT_DIR", "run", "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "0",
        "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "1000", "TEST.EVAL_PERIOD", "0",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "64", "DATALOADER.NUM_WORKERS", "0", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "model_final.pth").is_file()
    classes = json.loads((tmp_path / "data_pets" / "train.json").read_text())["categories"]
    assert [c["name"] for c in classes] == ["cat", "dog"]
    assert "IoU-dog" in proc.stderr + proc.stdout  # evaluated on val with the imported classes


# ---------------------------------------------------------------- PASCAL VOC (and CVAT's mask export)

def _voc_palette():
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def _save_palette_png(array, path):
    im = Image.fromarray(array.astype(np.uint8), mode="P")
    im.putpalette(_voc_palette())
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def make_voc(root):
    """VOCdevkit/VOC2012 with palette PNGs: instance 1..N, 255 border; class indices of VOC."""
    voc = root / "VOCdevkit" / "VOC2012"
    ids = ["2007_000032", "2007_000033", "2007_000039"]
    for k, image_id in enumerate(ids):
        make_image(voc / "JPEGImages" / f"{image_id}.jpg", seed=k)
        obj = np.zeros((H, W), dtype=np.uint8)
        cls = np.zeros((H, W), dtype=np.uint8)
        obj[4:14, 4:14], cls[4:14, 4:14] = 1, 15       # a person
        obj[20:30, 20:36], cls[20:30, 20:36] = 2, 12    # a dog
        obj[3, 3:15] = cls[3, 3:15] = 255               # border band
        _save_palette_png(obj, voc / "SegmentationObject" / f"{image_id}.png")
        _save_palette_png(cls, voc / "SegmentationClass" / f"{image_id}.png")
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2007_000032\n2007_000039\n")
    (sets / "val.txt").write_text("2007_000033\n")
    (sets / "trainval.txt").write_text("\n".join(ids) + "\n")
    return voc


def test_voc_palette_layout(tmp_path):
    make_voc(tmp_path / "voc")
    fmt, evidence = detect_format(str(tmp_path / "voc"))
    assert fmt == "voc" and "VOCdevkit/VOC2012" in evidence
    result = run(tmp_path / "voc", tmp_path / "data")
    assert result.written and result.split_from_source and result.problems == []
    coco = check_folder(str(tmp_path / "data"))
    assert [c["name"] for c in coco["categories"]] == ["dog", "person"]  # VOC's class order, used ones
    assert masks_by_file(coco)["2007_000033.jpg"] == [("dog", 160, 0), ("person", 100, 0)]
    assert [im["file_name"] for im in load(str(tmp_path / "data"), "val")["images"]] == ["2007_000033.jpg"]


def test_voc_cvat_rgb_labelmap_variant(tmp_path):
    src = tmp_path / "cvat_voc"
    src.mkdir()
    (src / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\n"
                                      "car:250,50,83::\nperson:51,221,255::\n")
    for k in range(2):
        make_image(src / "JPEGImages" / f"frame_{k:06d}.png", seed=k, fmt="PNG")  # CVAT may keep PNGs
        obj = np.zeros((H, W, 3), dtype=np.uint8)
        cls = np.zeros((H, W, 3), dtype=np.uint8)
        obj[2:10, 2:10], cls[2:10, 2:10] = (128, 0, 0), (250, 50, 83)
        obj[12:20, 2:10], cls[12:20, 2:10] = (0, 128, 0), (250, 50, 83)      # a second car
        obj[25:35, 30:40], cls[25:35, 30:40] = (128, 128, 0), (51, 221, 255)
        for name, arr in (("SegmentationObject", obj), ("SegmentationClass", cls)):
            (src / name).mkdir(exist_ok=True)
            Image.fromarray(arr).save(src / name / f"frame_{k:06d}.png")
    (src / "ImageSets" / "Segmentation").mkdir(parents=True)
    (src / "ImageSets" / "Segmentation" / "default.txt").write_text("frame_000000\nframe_000001\n")
    assert detect_format(str(src))[0] == "voc"
    result = run(src, tmp_path / "data", val_fraction=0.5)
    assert result.written and not result.split_from_source and result.problems == []
    coco = check_folder(str(tmp_path / "data"))
    assert [c["name"] for c in coco["categories"]] == ["car", "person"]
    assert masks_by_file(coco)["frame_000001.png"] == [("car", 64, 0), ("car", 64, 0), ("person", 100, 0)]


# ---------------------------------------------------------------- binary masks

def test_masks_one_png_per_object_in_class_folders(tmp_path):
    src = tmp_path / "bm"
    for k in range(3):
        make_image(src / "images" / f"photo{k}.jpg", seed=k)
        (src / "masks" / "apple").mkdir(parents=True, exist_ok=True)
        (src / "masks" / "pear").mkdir(parents=True, exist_ok=True)
        Image.fromarray(box_mask(2, 2, 10, 10).astype(np.uint8) * 255).save(src / "masks" / "apple" / f"photo{k}_0.png")
        Image.fromarray(box_mask(20, 5, 6, 6).astype(np.uint8) * 255).save(src / "masks" / "apple" / f"photo{k}_1.png")
        Image.fromarray(box_mask(30, 20, 8, 8).astype(np.uint8)).save(src / "masks" / "pear" / f"photo{k}_0.png")  # 0/1
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(src / "masks" / "pear" / "photo2_1.png")
    Image.fromarray(box_mask(1, 1, 3, 3).astype(np.uint8) * 255).save(src / "masks" / "pear" / "nophoto_0.png")
    fmt, evidence = detect_format(str(src))
    assert fmt == "masks" and "one PNG per object" in evidence
    lines = []
    result = run(src, tmp_path / "data", echo=lines.append)
    assert sorted(lines) == ["masks/pear/nophoto_0.png: no image images/nophoto.* for this mask, skipped",
                             "masks/pear/photo2_1.png: mask is 5x5, image is 48x36, skipped"]
    coco = check_folder(str(tmp_path / "data"))
    assert [c["name"] for c in coco["categories"]] == ["apple", "pear"]
    assert masks_by_file(coco)["photo1.jpg"] == [("apple", 36, 0), ("apple", 100, 0), ("pear", 64, 0)]


def test_masks_instance_id_pngs_with_classes(tmp_path):
    src = tmp_path / "inst"
    (src / "instances").mkdir(parents=True)
    for k in range(2):
        make_image(src / "images" / f"im{k}.png", seed=k, fmt="PNG")
        ids = np.zeros((H, W), dtype=np.uint8)
        ids[2:12, 2:12] = 1
        ids[20:30, 20:30] = 2
        ids[30:32, 0:5] = 3
        Image.fromarray(ids).save(src / "instances" / f"im{k}.png")
        (src / "instances" / f"im{k}.json").write_text(json.dumps({"1": "cat", "2": "dog"}))
    assert detect_format(str(src))[0] == "masks"
    lines = []
    result = run(src, tmp_path / "data", echo=lines.append)
    assert lines == [f"instances/im{k}.png: instance id 3 has no class, skipped" for k in range(2)]
    assert result.written
    coco = check_folder(str(tmp_path / "data"))
    assert masks_by_file(coco)["im0.png"] == [("cat", 100, 0), ("dog", 100, 0)]


# ---------------------------------------------------------------- Open Images V7

OI_CSV_HEADER = "MaskPath,ImageID,LabelName,BoxID,BoxXMin,BoxXMax,BoxYMin,BoxYMax,PredictedIoU,Clicks\n"


def make_open_images(root):
    """CSV per split, masks at half the image size in <split>-masks-<hex>/ folders, class descriptions."""
    (root / "masks").mkdir(parents=True)
    (root / "oidv7-class-descriptions.csv").write_text("LabelName,DisplayName\n/m/01yrx,Cat\n/m/0bt9lr,Dog\n/m/0k4j,Car\n")
    rows = {"train": [], "validation": []}
    for k, (image_id, split) in enumerate([("0a1b2c3d4e5f6071", "train"), ("1b2c3d4e5f607182", "train"),
                                          ("2c3d4e5f60718293", "validation")]):
        make_image(root / split / f"{image_id}.jpg", width=64, height=48, seed=k)
        for label, box_id, (x, y, w, h) in (("/m/01yrx", "b1", (2, 2, 10, 8)), ("/m/0k4j", "b2", (16, 12, 8, 8))):
            mask = np.zeros((24, 32), dtype=np.uint8)
            mask[y:y + h, x:x + w] = 255
            name = f"{image_id}_{label.split('/')[-1]}_{box_id}.png"
            folder = root / f"{split}-masks-{image_id[0]}"
            folder.mkdir(exist_ok=True)
            Image.fromarray(mask).save(folder / name)
            rows[split].append(f"{name},{image_id},{label},{box_id},0.1,0.2,0.1,0.2,0.8,")
    Image.fromarray(np.zeros((10, 40), dtype=np.uint8)).save(root / "train-masks-0" / "0a1b2c3d4e5f6071_0bt9lr_b3.png")
    rows["train"].append("0a1b2c3d4e5f6071_0bt9lr_b3.png,0a1b2c3d4e5f6071,/m/0bt9lr,b3,0,1,0,1,0.5,")
    rows["train"].append("gone.png,0a1b2c3d4e5f6071,/m/01yrx,b4,0,1,0,1,0.5,")
    for split, lines in rows.items():
        (root / f"{split}{'-annotations-object-segmentation.csv'}").write_text(OI_CSV_HEADER + "\n".join(lines) + "\n")


def test_open_images_scaled_masks_names_and_class_subset(tmp_path):
    src = tmp_path / "oi"
    make_open_images(src)
    assert detect_format(str(src))[0] == "openimages"
    lines = []
    result = run(src, tmp_path / "data", echo=lines.append)
    assert sorted(lines) == [
        "train-annotations-object-segmentation.csv: line 7: mask 'gone.png' not found, skipped",
        "train-masks-0/0a1b2c3d4e5f6071_0bt9lr_b3.png: mask is 40x10, image is 64x48: another aspect ratio, skipped"]
    assert result.written and result.split_from_source
    coco = check_folder(str(tmp_path / "data"))
    assert [c["name"] for c in coco["categories"]] == ["Car", "Cat"]
    # masks of 32x24 scaled to 64x48: a 10x8 box becomes 20x16
    assert masks_by_file(coco)["train/0a1b2c3d4e5f6071.jpg"] == [("Car", 256, 0), ("Cat", 320, 0)]
    assert [im["file_name"] for im in load(str(tmp_path / "data"), "val")["images"]] == ["validation/2c3d4e5f60718293.jpg"]
    cats_only = run(src, tmp_path / "cats", classes=["Cat"])
    coco = check_folder(str(tmp_path / "cats"))
    assert [c["name"] for c in coco["categories"]] == ["Cat"] and cats_only.images == [2, 1, 0]


# ---------------------------------------------------------------- every format: byte-identical output

# ---------------------------------------------------------------- labels without an image are reported

def _orphan_coco(root):
    make_cvat(root)
    path = root / "annotations" / "instances_default.json"
    doc = json.loads(path.read_text())
    doc["annotations"].append({"id": 9, "image_id": 99, "category_id": 1, "segmentation": [rect_poly(1, 1, 5, 5)],
                               "iscrowd": 0})
    path.write_text(json.dumps(doc))
    return "annotations/instances_default.json: 1 annotation(s) of image_id 99, which images does not list, skipped"


def _orphan_yolo(root):
    _yolo_with_yaml(root)
    (root / "labels" / "train" / "lost.txt").write_text(_yolo_line(0, 2, 2, 8, 8) + "\n")
    return "labels/train/lost.txt: no image for this label file (images/ <-> labels/, same stem), skipped"


def _orphan_semantic(root):
    _generic_semantic_labels(root)
    Image.fromarray(box_mask(2, 2, 6, 6).astype(np.uint8)).save(root / "labels" / "lost.png")
    return "labels/lost.png: no image images/<same stem>.* for this label PNG, skipped"


@pytest.mark.parametrize("make", [_orphan_coco, _orphan_yolo, _orphan_semantic], ids=lambda f: f.__name__)
def test_labels_without_an_image_are_reported(tmp_path, make):
    src = tmp_path / "src"
    src.mkdir()
    expected = make(src)
    lines = []
    result = run(src, tmp_path / "data", echo=lines.append)
    assert result.written and lines == [expected]


# ---------------------------------------------------------------- every pair of formats: markers decide

def make_open_images_as_downloaded(root):
    """Open Images V7 as a user lays it out: images/, the CSVs, and the mask PNGs of the zips unzipped
    into masks/ (box ids can be all digits, so names end in _<number> like per-object masks)."""
    (root / "masks").mkdir(parents=True)
    (root / "oidv7-class-descriptions.csv").write_text("LabelName,DisplayName\n/m/01yrx,Cat\n")
    rows = []
    for k, image_id in enumerate(["0a1b2c3d4e5f6071", "1b2c3d4e5f607182"]):
        make_image(root / "images" / f"{image_id}.jpg", width=64, height=48, seed=k)
        mask = np.zeros((24, 32), dtype=np.uint8)
        mask[2:10, 2:12] = 255
        name = f"{image_id}_01yrx_{40051 + k}.png"
        Image.fromarray(mask).save(root / "masks" / name)
        rows.append(f"{name},{image_id},/m/01yrx,{40051 + k},0.1,0.2,0.1,0.2,0.8,")
    (root / "train-annotations-object-segmentation.csv").write_text(OI_CSV_HEADER + "\n".join(rows) + "\n")


def test_open_images_with_a_masks_folder_is_open_images(tmp_path):
    src = tmp_path / "oi"
    make_open_images_as_downloaded(src)
    fmt, evidence = detect_format(str(src))
    assert fmt == "openimages" and "train-annotations-object-segmentation.csv" in evidence
    result = run(src, tmp_path / "data")
    assert result.written and result.problems == [] and sum(result.images) == 2


def test_open_images_png_images_are_found_not_taken_for_masks(tmp_path):
    # Open Images' own images are JPEGs, but a user's may be PNGs: only the PNGs that a MaskPath
    # names are masks (every PNG was, and each PNG image was reported missing)
    src = tmp_path / "oi"
    make_open_images_as_downloaded(src)
    for jpg in sorted((src / "images").glob("*.jpg")):
        Image.open(jpg).save(jpg.with_suffix(".png"))
        jpg.unlink()
    result = run(src, tmp_path / "data")
    assert result.written and result.problems == [] and sum(result.images) == 2
    coco = check_folder(str(tmp_path / "data"))
    assert masks_by_file(coco) == {f"{i}.png": [("Cat", 320, 0)] for i in ("0a1b2c3d4e5f6071", "1b2c3d4e5f607182")}


# A format's own marker file decides over generic folder names that another format also uses.
def _generic_yolo_labels(root):
    (root / "labels").mkdir(exist_ok=True)
    (root / "labels" / "extra.txt").write_text("0 0.1 0.1 0.5 0.1 0.5 0.5\n")
    return "yolo"


def _generic_object_masks(root):
    make_image(root / "images" / "extra.jpg", seed=21)
    (root / "masks").mkdir(exist_ok=True)
    Image.fromarray(box_mask(2, 2, 6, 6).astype(np.uint8) * 255).save(root / "masks" / "extra_0.png")
    return "masks"


def _generic_instance_pngs(root):
    make_image(root / "images" / "extra.jpg", seed=21)
    (root / "instances").mkdir(exist_ok=True)
    Image.fromarray(box_mask(2, 2, 6, 6).astype(np.uint8)).save(root / "instances" / "extra.png")
    return "masks"


def _generic_semantic_labels(root):
    make_image(root / "images" / "extra.jpg", seed=21)
    (root / "labels").mkdir(exist_ok=True)
    Image.fromarray(box_mask(2, 2, 6, 6).astype(np.uint8)).save(root / "labels" / "extra.png")
    (root / "classes.json").write_text(json.dumps({"1": "thing"}))
    return "semantic"


def _labelme_folder(root):
    make_image(root / "photo.jpg", seed=5)
    (root / "photo.json").write_text(json.dumps({"version": "5.5.0", "imagePath": "photo.jpg", "imageHeight": H,
                                                "imageWidth": W, "shapes": [{"label": "cat", "points": [[2, 2], [12, 2], [12, 12]],
                                                                             "shape_type": "polygon", "group_id": None}]}))


def _yolo_with_yaml(root):
    (root / "labels" / "train").mkdir(parents=True)
    make_image(root / "images" / "train" / "a.jpg", seed=3)
    (root / "labels" / "train" / "a.txt").write_text(_yolo_line(0, 2, 2, 8, 8) + "\n")
    (root / "data.yaml").write_text("train: images/train\nval: images/train\nnames: [cat]\n")


MARKED = [("coco", make_label_studio), ("coco", make_roboflow), ("voc", make_voc), ("openimages", make_open_images),
          ("semantic", make_pets), ("labelme", _labelme_folder), ("yolo", _yolo_with_yaml)]
GENERIC = [_generic_yolo_labels, _generic_object_masks, _generic_instance_pngs, _generic_semantic_labels]


@pytest.mark.parametrize("fmt,make", MARKED, ids=lambda v: getattr(v, "__name__", v))
@pytest.mark.parametrize("add", GENERIC, ids=lambda f: f.__name__)
def test_a_formats_own_marker_decides_over_generic_folders(tmp_path, fmt, make, add):
    src = tmp_path / "src"
    src.mkdir()
    make(src)
    other = add(src)
    if other == fmt:
        pytest.skip("the same format")
    got, evidence = detect_format(str(src))
    assert got == fmt, evidence
    assert f"also fit {other}" in evidence  # the summary says what else the folder could be


def test_generic_folders_alone_of_two_formats_stay_ambiguous(tmp_path):
    _generic_object_masks(tmp_path)
    _generic_yolo_labels(tmp_path)
    with pytest.raises(LayoutError, match="ambiguous layout"):
        detect_format(str(tmp_path))


# ---------------------------------------------------------------- every format: the test split is kept

def with_test_coco(root):
    """Plain COCO: annotations/instances_{train,val,test}2017.json + images/."""
    for k, split in enumerate(("train", "train", "val", "test")):
        make_image(root / "images" / f"{split}{k}.jpg", seed=k)
    for split in ("train", "val", "test"):
        ids = [k for k, s in enumerate(("train", "train", "val", "test")) if s == split]
        doc = coco_doc([{"id": k, "file_name": f"{split}{k}.jpg", "width": W, "height": H} for k in ids],
                       [{"id": k, "image_id": k, "category_id": 1, "segmentation": [rect_poly(2, 2, 8, 8)], "iscrowd": 0}
                        for k in ids], [{"id": 1, "name": "cat"}])
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(doc))
    return ["test3.jpg"]


def with_test_yolo(root):
    """data.yaml's ``test:`` names a folder whose name says nothing (Ultralytics reads it from the YAML)."""
    for split, folder in (("train", "train"), ("val", "val"), ("test", "holdout")):
        (root / "labels" / folder).mkdir(parents=True)
        for i in range(2):
            make_image(root / "images" / folder / f"{split}{i}.jpg", seed=i + 10 * len(split))
            (root / "labels" / folder / f"{split}{i}.txt").write_text(_yolo_line(0, 4, 4, 10, 12) + "\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\ntest: images/holdout\n"
                                    "names: [person]\n")
    return ["holdout/test0.jpg", "holdout/test1.jpg"]


def with_test_voc(root):
    voc = make_voc(root)
    make_image(voc / "JPEGImages" / "2008_000001.jpg", seed=9)
    obj = np.zeros((H, W), dtype=np.uint8)
    obj[4:14, 4:14] = 1
    _save_palette_png(obj, voc / "SegmentationObject" / "2008_000001.png")
    _save_palette_png(obj * 15, voc / "SegmentationClass" / "2008_000001.png")
    (voc / "ImageSets" / "Segmentation" / "test.txt").write_text("2008_000001\n")
    return ["2008_000001.jpg"]


def with_test_open_images(root):
    make_open_images(root)
    image_id = "3d4e5f6071829304"
    make_image(root / "test" / f"{image_id}.jpg", width=64, height=48, seed=7)
    (root / "test-masks-3").mkdir()
    mask = np.zeros((24, 32), dtype=np.uint8)
    mask[2:10, 2:12] = 255
    Image.fromarray(mask).save(root / "test-masks-3" / f"{image_id}_01yrx_b1.png")
    (root / "test-annotations-object-segmentation.csv").write_text(
        OI_CSV_HEADER + f"{image_id}_01yrx_b1.png,{image_id},/m/01yrx,b1,0.1,0.2,0.1,0.2,0.8,\n")
    return [f"test/{image_id}.jpg"]


def with_test_pets(root):
    make_pets(root)
    return sorted(f"{stem}.jpg" for stem, split, _ in PETS if split == "test")


@pytest.mark.parametrize("make", [with_test_coco, with_test_yolo, with_test_voc, with_test_open_images, with_test_pets],
                         ids=lambda f: f.__name__)
def test_a_labelled_test_split_is_kept_as_test_json(tmp_path, make):
    src = tmp_path / "src"
    src.mkdir()
    expected = make(src)
    out = tmp_path / "data"
    result = run(src, out)
    assert result.written and result.test_from_source and result.images[2] == len(expected)
    assert not [k for k in result.log.skipped if "test split" in k], result.log.skipped  # none left out
    test, trainval = load(str(out), "test"), load(str(out), "trainval")
    assert sorted(im["file_name"] for im in test["images"]) == expected
    assert all(len([a for a in test["annotations"] if a["image_id"] == im["id"] and not a["iscrowd"]]) >= 1
               for im in test["images"])  # with their labels
    assert not {im["file_name"] for im in trainval["images"]} & set(expected)  # never trained on
    assert not {im["id"] for im in trainval["images"]} & {im["id"] for im in test["images"]}
    assert test["categories"] == trainval["categories"] and load(str(out), "val")["images"]  # val still there
    for im in test["images"]:
        assert os.path.isfile(out / "images" / im["file_name"])
    # --resplit folds the test images into our train/val split, and an earlier test.json goes
    resplit = run(src, out, resplit=True)
    assert resplit.images[2] == 0 and sum(resplit.images) == len(trainval["images"]) + len(expected)
    assert not os.path.exists(out / "test.json")
    assert set(expected) <= {im["file_name"] for im in load(str(out), "trainval")["images"]}


@pytest.mark.parametrize("make", [make_label_studio, make_cvat, make_roboflow, make_voc, make_pets, make_open_images],
                         ids=lambda f: f.__name__)
def test_same_input_gives_byte_identical_output(tmp_path, make):
    src = tmp_path / "src"
    src.mkdir()
    make(src)
    before = tree_digest(src)
    first = run(src, tmp_path / "a")
    run(src, tmp_path / "b")
    assert first.written
    a, b = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    assert a == b and "trainval.json" in a
    assert tree_digest(src) == before  # inputs never modified


def test_masks_flat_with_mapping_file_and_labels_option(tmp_path):
    src = tmp_path / "flat"
    (src / "masks").mkdir(parents=True)
    for k in range(2):
        make_image(src / "images" / f"p{k}.jpg", seed=k)
        Image.fromarray(box_mask(2, 2, 6, 6).astype(np.uint8) * 255).save(src / "masks" / f"p{k}_0.png")
        Image.fromarray(box_mask(20, 20, 5, 5).astype(np.uint8) * 255).save(src / "masks" / f"p{k}_1.png")
    (src / "classes.json").write_text(json.dumps({"p0_0.png": "leaf", "p0_1.png": "bug", "p1_0.png": "leaf",
                                                  "p1_1.png": "bug"}))
    assert detect_format(str(src))[0] == "masks"  # per-object names: not a semantic label folder
    lines = []
    result = run(src, tmp_path / "data", labels=["leaf"], echo=lines.append)
    assert lines == [f"masks/p{k}_1.png: label 'bug' not in --labels, skipped" for k in range(2)]
    coco = check_folder(str(tmp_path / "data"))
    assert [c["name"] for c in coco["categories"]] == ["leaf"] and result.instances == {"leaf": [1, 1, 0]}


@pytest.mark.slow
def test_imported_voc_folder_trains_mask_rcnn(tmp_path):
    """RLE instances (VOC masks) and config keys only: train_net switches to bitmask by itself."""
    make_voc(tmp_path / "voc")
    result = run(tmp_path / "voc", tmp_path / "data")
    assert result.written and result.needs_bitmask
    proc = run_train_net(
        "--config-file", ROOT / "configs/mask_rcnn_R_18_FPN_mini.yaml", "DATASETS.DATA_DIR", tmp_path / "data",
        "OUTPUT_DIR", tmp_path / "run", "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "1000", "TEST.EVAL_PERIOD", "0",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "96", "DATALOADER.NUM_WORKERS", "0", "TEST.VAL_LOSS_MAX_IMAGES", "2", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "using INPUT.MASK_FORMAT bitmask" in proc.stderr
    assert (tmp_path / "run" / "model_final.pth").is_file()
