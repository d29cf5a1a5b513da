"""labelme2coco.py: LabelMe's own examples, every shape type, and generated edge cases."""

import base64
import io
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest
from conftest import LABELME_EXAMPLES, ROOT, requires_shared, tree_digest
from PIL import Image

from segkit.data.coco_convert import convert, main, split_train_val
from segkit.data.label_names import numbered_groups
from segkit.data.labelme import image_size, read_labels_file

INSTANCE_EXAMPLES = LABELME_EXAMPLES / "instance_segmentation"


# ---------------------------------------------------------------- helpers

def write_labelme(json_path, image_path, width, height, shapes, image_data=None):
    """A file as LabelMe writes it (version, flags, shapes, imagePath, imageData, size)."""
    doc = {
        "version": "5.7.0",
        "flags": {},
        "shapes": [
            {"label": label, "points": points, "group_id": group_id, "description": "",
             "shape_type": shape_type, "flags": {}, "mask": None}
            for label, points, shape_type, group_id in shapes
        ],
        "imagePath": image_path,
        "imageData": image_data,
        "imageHeight": height,
        "imageWidth": width,
    }
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(doc, f)


def make_image(path, width, height, mode="RGB", seed=0, exif_orientation=None):
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (height, width), dtype=np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).convert(mode)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(path, exif=exif)
    else:
        image.save(path)
    return image


def poly(x, y, w, h):
    return [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]


def load(out, split="trainval"):
    with open(os.path.join(out, f"{split}.json"), encoding="utf-8") as f:
        return json.load(f)


def ann_mask(ann, image):
    seg = ann["segmentation"]
    rle = seg if isinstance(seg, dict) else mask_util.merge(mask_util.frPyObjects(seg, image["height"], image["width"]))
    return mask_util.decode(rle).astype(bool)


def by_labelme_file(coco):
    """labelme JSON path -> (image, [annotations with 'name'])."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    out = {}
    for im in coco["images"]:
        anns = [dict(a, name=names[a["category_id"]]) for a in coco["annotations"] if a["image_id"] == im["id"]]
        out[im["labelme_file"]] = (im, anns)
    return out


def check_coco_invariants(out):
    """Ids from 1, same categories everywhere, area/bbox = those of the rasterised mask, files exist."""
    trainval, train, val = load(out), load(out, "train"), load(out, "val")
    assert train["categories"] == val["categories"] == trainval["categories"]
    assert [c["id"] for c in trainval["categories"]] == list(range(1, len(trainval["categories"]) + 1))
    assert [im["id"] for im in trainval["images"]] == list(range(1, len(trainval["images"]) + 1))
    assert [a["id"] for a in trainval["annotations"]] == list(range(1, len(trainval["annotations"]) + 1))
    assert sorted(im["id"] for im in train["images"] + val["images"]) == [im["id"] for im in trainval["images"]]
    assert sorted(a["id"] for a in train["annotations"] + val["annotations"]) == [a["id"] for a in trainval["annotations"]]
    images = {im["id"]: im for im in trainval["images"]}
    for im in trainval["images"]:
        assert os.path.exists(os.path.join(out, "images", im["file_name"])), im
        assert image_size(os.path.join(out, "images", im["file_name"]))[:2] == (im["width"], im["height"])
    for a in trainval["annotations"]:
        m = ann_mask(a, images[a["image_id"]])
        assert a["area"] == m.sum() > 0
        ys, xs = np.nonzero(m)
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    return trainval


# ---------------------------------------------------------------- LabelMe's own examples

@requires_shared
@pytest.mark.parametrize("with_labels", [False, True])
def test_reference_examples_agree_with_labelme_converter(tmp_path, with_labels):
    labels = read_labels_file(INSTANCE_EXAMPLES / "labels.txt") if with_labels else None
    before = tree_digest(INSTANCE_EXAMPLES, mtimes=True)
    result = convert(str(INSTANCE_EXAMPLES), str(tmp_path / "out"), labels=labels, progress=False)
    assert tree_digest(INSTANCE_EXAMPLES, mtimes=True) == before
    assert result.written and result.exit_code == 0
    ours = check_coco_invariants(str(tmp_path / "out"))
    if with_labels:  # labels.txt order, __ignore__ and _background_ skipped
        assert [c["name"] for c in ours["categories"]][:3] == ["aeroplane", "bicycle", "bird"]
        assert len(ours["categories"]) == 20 and ours["categories"][-1]["name"] == "tv/monitor"
    else:
        assert [c["name"] for c in ours["categories"]] == ["bottle", "bus", "car", "chair", "person", "sofa"]

    with open(INSTANCE_EXAMPLES / "reference_coco" / "annotations.json") as f:
        ref = json.load(f)
    ref_names = {c["id"]: c["name"] for c in ref["categories"]}
    ours_by_base = {os.path.basename(im["file_name"]): (im, anns) for im, anns in by_labelme_file(ours).values()}
    assert sorted(ours_by_base) == sorted(os.path.basename(im["file_name"]) for im in ref["images"])
    compared = 0
    for rim in ref["images"]:
        oim, oanns = ours_by_base[os.path.basename(rim["file_name"])]
        assert (oim["width"], oim["height"]) == (rim["width"], rim["height"])
        oanns = [a for a in oanns if not a["iscrowd"]]  # LabelMe's converter drops __ignore__
        ranns = [a for a in ref["annotations"] if a["image_id"] == rim["id"]]
        assert len(oanns) == len(ranns), rim["file_name"]
        unmatched = list(range(len(oanns)))
        for ra in ranns:
            rm = ann_mask(ra, rim)
            ious = {j: (rm & ann_mask(oanns[j], oim)).sum() / (rm | ann_mask(oanns[j], oim)).sum() for j in unmatched}
            j = max(ious, key=ious.get)
            unmatched.remove(j)
            assert ious[j] >= 0.99
            assert oanns[j]["name"] == ref_names[ra["category_id"]]
            rx, ry, rw, rh = ra["bbox"]
            ox, oy, ow, oh = oanns[j]["bbox"]
            assert np.allclose([ox, oy, ox + ow, oy + oh], [rx, ry, rx + rw, ry + rh], atol=1), (ra["bbox"], oanns[j]["bbox"])
            compared += 1
    assert compared == 12
    # The group_id 0 person of 2011_000003 is one annotation with 2 polygons; the sofa has 4.
    groups = by_labelme_file(ours)
    person_polys = sorted(len(a["segmentation"]) for a in groups["data_annotated/2011_000003.json"][1]
                          if a["name"] == "person" and not a["iscrowd"])
    assert person_polys == [1, 2]
    assert [len(a["segmentation"]) for a in groups["data_annotated/2011_000006.json"][1]
            if a["name"] == "sofa" and not a["iscrowd"]] == [4]
    # __ignore__ regions: crowd RLE, one copy per category.
    crowd = [a for a in ours["annotations"] if a["iscrowd"]]
    assert len(crowd) == 2 * len(ours["categories"]) and all(isinstance(a["segmentation"], dict) for a in crowd)
    # The chair polygon of 2011_000006 has a point outside the image: clipped and reported.
    assert any(p.startswith("data_annotated/2011_000006.json:") and "clipped" in p for p in result.problems)
    # The COCO file of the reference is not LabelMe: skipped, not a problem.
    assert not any("reference_coco" in p for p in result.problems)


@requires_shared
def test_primitives_every_shape_type(tmp_path):
    src = LABELME_EXAMPLES / "primitives"
    result = convert(str(src), str(tmp_path / "out"), progress=False)
    assert result.written and result.problems == []
    coco = check_coco_invariants(str(tmp_path / "out"))
    anns = {a["name"]: a for a in by_labelme_file(coco)["primitives.json"][1] if a["name"] != "rectangle"}
    rects = [a for a in by_labelme_file(coco)["primitives.json"][1] if a["name"] == "rectangle"]
    # rectangle: 2 corners -> 4-point polygon
    assert [r["bbox"] for r in rects] == [[32, 35, 100, 100], [391, 33, 151, 102]]
    assert all(len(r["segmentation"]) == 1 and len(r["segmentation"][0]) == 8 for r in rects)
    # circle: centre (195, 84), rim (225, 125) -> polygon, area of the disc
    r = math.hypot(30, 41)
    circle = anns["circle"]
    assert isinstance(circle["segmentation"], list) and abs(circle["area"] - math.pi * r * r) < 0.01 * math.pi * r * r
    assert np.allclose(circle["bbox"], [195 - r, 84 - r, 2 * r, 2 * r], atol=1.5)
    assert anns["polygon"]["segmentation"] == [[69.0, 318.0, 45.0, 403.0, 173.0, 406.0, 198.0, 321.0]]
    # mask: RLE of the decoded PNG placed at the box's top-left corner
    with open(src / "primitives.json") as f:
        shape = [s for s in json.load(f)["shapes"] if s["shape_type"] == "mask"][0]
    png = np.asarray(Image.open(io.BytesIO(base64.b64decode(shape["mask"])))) != 0
    expected = np.zeros((450, 560), bool)
    x0, y0 = (int(v) for v in shape["points"][0])
    expected[y0 : y0 + png.shape[0], x0 : x0 + png.shape[1]] = png
    octagon = anns["octagon"]
    assert isinstance(octagon["segmentation"], dict) and octagon["iscrowd"] == 0
    assert (ann_mask(octagon, coco["images"][0]) == expected).all()
    assert result.needs_bitmask
    # point, line, linestrip: skipped and counted, not problems
    assert result.log.skipped == {"point shapes (not regions)": 1, "line shapes (not regions)": 1,
                                  "linestrip shapes (not regions)": 1}
    assert sorted(anns) + ["rectangle"] == ["circle", "octagon", "polygon", "rectangle"]


# ---------------------------------------------------------------- generated edge cases

@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """A folder with one case per subfolder; returns its path."""
    root = tmp_path_factory.mktemp("messy") / "in"
    # group_id merge, rectangle drawn bottom-up, circle, __ignore__; same names in a/ and b/
    make_image(root / "a" / "img.png", 64, 48, seed=1)
    write_labelme(root / "a" / "img.json", "img.png", 64, 48, [
        ("person", poly(2, 2, 10, 10), "polygon", 1),
        ("cat", poly(40, 30, 10, 10), "polygon", None),
        ("person", poly(20, 2, 10, 10), "polygon", 1),
        ("person", poly(2, 30, 8, 8), "polygon", 2),
        ("cat", [[60, 40], [45, 20]], "rectangle", None),
        ("Person", [[30, 30], [30, 36]], "circle", None),
        ("__ignore__", poly(50, 2, 10, 10), "polygon", None),
        ("person", [[5, 5]], "point", None),
    ])
    make_image(root / "b" / "img.png", 64, 48, seed=2)
    write_labelme(root / "b" / "img.json", "img.png", 64, 48, [("cat", poly(5, 5, 20, 20), "polygon", None)])
    # EXIF orientation 6: stored 40x30, shown (and annotated) 30x40
    make_image(root / "exif" / "rot.jpg", 40, 30, seed=3, exif_orientation=6)
    write_labelme(root / "exif" / "rot.json", "rot.jpg", 30, 40, [("cat", poly(2, 25, 20, 12), "polygon", None)])
    # image modes
    for mode, name in [("RGBA", "rgba"), ("L", "gray"), ("P", "palette"), ("I;16", "gray16")]:
        make_image(root / "modes" / f"{name}.png", 32, 24, mode=mode, seed=4)
        write_labelme(root / "modes" / f"{name}.json", f"{name}.png", 32, 24, [("dog", poly(4, 4, 10, 10), "polygon", None)])
    # imageData only (the image file is not there), Windows-style imagePath
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(buf, format="PNG")
    write_labelme(root / "embedded" / "emb.json", "..\\pics\\emb_source.png", 30, 20,
                  [("dog", poly(1, 1, 10, 10), "polygon", None)], image_data=base64.b64encode(buf.getvalue()).decode())
    # negatives
    make_image(root / "neg" / "empty.png", 32, 24, seed=5)
    write_labelme(root / "neg" / "empty.json", "empty.png", 32, 24, [])
    # bad input
    make_image(root / "bad" / "ok.png", 64, 48, seed=6)
    write_labelme(root / "bad" / "missing.json", "nowhere.png", 64, 48, [("cat", poly(1, 1, 5, 5), "polygon", None)])
    (root / "bad" / "broken.json").write_text('{"version": "5.0", "shapes": [', encoding="utf-8")
    make_image(root / "bad" / "mismatch.png", 64, 48, seed=7)
    write_labelme(root / "bad" / "mismatch.json", "mismatch.png", 100, 100, [("cat", poly(1, 1, 5, 5), "polygon", None)])
    make_image(root / "bad" / "tiny.png", 64, 48, seed=8)
    write_labelme(root / "bad" / "tiny.json", "tiny.png", 64, 48, [
        ("cat", [[1, 1], [5, 5]], "polygon", None),
        ("cat", [[1, 1], [5, 5], [9, 9]], "polygon", None),
        ("cat", [[10, 10], [10.1, 10], [10.1, 10.1]], "polygon", None),
        ("cat", poly(20, 20, 10, 10), "polygon", None),
    ])
    make_image(root / "bad" / "oob.png", 64, 48, seed=9)
    write_labelme(root / "bad" / "oob.json", "oob.png", 64, 48, [("dog", [[-5, -5], [30, -2], [80, 60], [10, 40]], "polygon", None)])
    make_image(root.parent / "outside.png", 64, 48, seed=10)
    write_labelme(root / "bad" / "escape.json", "../../outside.png", 64, 48, [("cat", poly(1, 1, 5, 5), "polygon", None)])
    (root / "bad" / "labels.json").write_text('{"classes": ["cat"]}', encoding="utf-8")  # not LabelMe
    return root


@pytest.fixture(scope="module")
def messy_run(messy, tmp_path_factory):
    out = tmp_path_factory.mktemp("messy_out") / "data"
    before = tree_digest(messy, mtimes=True)
    result = convert(str(messy), str(out), val_fraction=0.25, seed=0, progress=False)
    assert tree_digest(messy, mtimes=True) == before, "inputs must not change"
    return out, result


def test_messy_folder_converts_the_good_parts(messy, messy_run):
    out, result = messy_run
    assert result.written and result.exit_code == 0
    coco = check_coco_invariants(str(out))
    files = by_labelme_file(coco)
    assert sorted(files) == ["a/img.json", "b/img.json", "bad/oob.json", "bad/tiny.json", "embedded/emb.json",
                             "exif/rot.json", "modes/gray.json", "modes/gray16.json", "modes/palette.json",
                             "modes/rgba.json", "neg/empty.json"]
    assert [c["name"] for c in coco["categories"]] == ["Person", "cat", "dog", "person"]  # exact names, sorted

    # group_id merge: person group 1 = one annotation, 2 polygons; group 2 is another instance
    im, anns = files["a/img.json"]
    persons = [a for a in anns if a["name"] == "person" and not a["iscrowd"]]
    assert sorted(len(a["segmentation"]) for a in persons) == [1, 2]
    assert [a["bbox"] for a in persons if len(a["segmentation"]) == 2] == [[2, 2, 28, 10]]
    cats = [a for a in anns if a["name"] == "cat" and not a["iscrowd"]]
    assert [a["bbox"] for a in cats] == [[40, 30, 10, 10], [45, 20, 15, 20]]  # rectangle corners in any order
    assert [a["name"] for a in anns if not a["iscrowd"]].count("Person") == 1  # circle, its own class
    crowd = [a for a in anns if a["iscrowd"]]
    assert len(crowd) == 4 and {a["category_id"] for a in crowd} == {1, 2, 3, 4}
    assert all(isinstance(a["segmentation"], dict) and a["bbox"] == [50, 2, 10, 10] for a in crowd)
    assert result.log.skipped["point shapes (not regions)"] == 1

    # same file name in two subfolders: both kept, bytes untouched
    assert files["a/img.json"][0]["file_name"] == "a/img.png" and files["b/img.json"][0]["file_name"] == "b/img.png"
    for sub in ("a", "b"):
        assert (out / "images" / sub / "img.png").read_bytes() == (messy / sub / "img.png").read_bytes()

    # EXIF: rotated size in the COCO file, original bytes (with the tag) copied
    im, anns = files["exif/rot.json"]
    assert (im["width"], im["height"]) == (30, 40)
    assert anns[0]["bbox"] == [2, 25, 20, 12]
    assert (out / "images" / "exif" / "rot.jpg").read_bytes() == (messy / "exif" / "rot.jpg").read_bytes()
    assert Image.open(out / "images" / "exif" / "rot.jpg").getexif()[0x0112] == 6

    for name in ("rgba", "gray", "palette", "gray16"):
        im, anns = files[f"modes/{name}.json"]
        assert (im["width"], im["height"], len(anns)) == (32, 24, 1), name

    # imageData only: written out under the JSON's folder, named after imagePath
    im, anns = files["embedded/emb.json"]
    assert im["file_name"] == "embedded/emb_source.png" and (im["width"], im["height"]) == (30, 20) and len(anns) == 1
    assert np.asarray(Image.open(out / "images" / im["file_name"])).mean() == 128

    assert files["neg/empty.json"][1] == []  # negative kept

    # tiny shapes dropped, the good one kept
    assert [a["bbox"] for a in files["bad/tiny.json"][1]] == [[20, 20, 10, 10]]
    # out-of-bounds points clipped to the image
    (oob,) = files["bad/oob.json"][1]
    x, y, w, h = oob["bbox"]
    assert x == 0 and y == 0 and x + w <= 64 and y + h <= 48
    assert all(0 <= v <= 64 for v in oob["segmentation"][0][0::2]) and all(0 <= v <= 48 for v in oob["segmentation"][0][1::2])


def test_messy_folder_reports_each_problem(messy_run):
    _, result = messy_run
    problems = result.problems

    def reported(prefix, *words):
        return [p for p in problems if p.startswith(prefix + ": ") and all(w in p for w in words)]

    assert reported("bad/missing.json", "not found")
    assert reported("bad/broken.json", "unreadable JSON")
    assert reported("bad/mismatch.json", "100x100", "64x48")
    assert len(reported("bad/tiny.json", "2 point(s), needs at least 3")) == 1
    assert len(reported("bad/tiny.json", "zero area")) == 1
    assert len(reported("bad/tiny.json", "covers no pixel")) == 1
    assert reported("bad/oob.json", "3 point(s) outside", "clipped")
    assert reported("bad/escape.json", "escapes the input folder")
    assert not reported("bad/labels.json")  # a JSON that is not LabelMe: counted, not a problem
    assert result.log.skipped["JSON files that are not LabelMe (no 'shapes')"] == 1
    assert len(problems) == 8, problems
    assert not [p for p in problems if p.split(":")[0] in ("a/img.json", "exif/rot.json", "neg/empty.json")]


def test_cli_strict_summary_and_byte_identical_runs(messy, tmp_path, capsys):
    out1, out2 = tmp_path / "one", tmp_path / "two"
    assert main([str(messy), "--output", str(out1), "--no-report", "--quiet"]) == 0
    text = capsys.readouterr()
    for line in ("converted", "without instances (negatives)", "instances per class",
                 "missing image", "unreadable JSON", 'DATASETS.TRAIN "(\'mydata_train\',)"'):
        assert line in text.out, line
    assert "bad/broken.json: unreadable JSON" in text.err
    assert "INPUT.MASK_FORMAT" not in text.out  # polygons only: no bitmask needed
    assert main([str(messy), "--output", str(out2), "--no-report", "--quiet"]) == 0
    for split in ("trainval", "train", "val"):
        assert (out1 / f"{split}.json").read_bytes() == (out2 / f"{split}.json").read_bytes()
    first = (out1 / "trainval.json").read_bytes()
    # detectron2 reads it: every image (EXIF-rotated, 16-bit, ...) has the size the JSON says
    from detectron2.data import detection_utils
    from detectron2.data.datasets import load_coco_json

    dicts = load_coco_json(str(out1 / "trainval.json"), str(out1 / "images"), "labelme2coco_test")
    assert len(dicts) == 11
    for record in dicts:
        detection_utils.check_image_size(record, detection_utils.read_image(record["file_name"], format="BGR"))
    assert main([str(messy), "--output", str(out1), "--no-report", "--quiet"]) == 0  # re-run in place
    assert (out1 / "trainval.json").read_bytes() == first

    # --symlink: links to the originals, same JSON
    out3 = tmp_path / "three"
    assert main([str(messy), "--output", str(out3), "--symlink", "--no-report", "--quiet"]) == 0
    assert (out3 / "trainval.json").read_bytes() == first
    link = out3 / "images" / "a" / "img.png"
    assert link.is_symlink() and os.path.samefile(link, messy / "a" / "img.png")
    assert not (out3 / "images" / "embedded" / "emb_source.png").is_symlink()  # from imageData: a file

    # --strict: the same folder fails (through the real script), nothing written
    strict_out = tmp_path / "strict"
    proc = subprocess.run([sys.executable, "labelme2coco.py", str(messy), "--output", str(strict_out), "--strict"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "--strict" in proc.stderr and not strict_out.exists()
    capsys.readouterr()


def test_strict_passes_clean_input_and_nothing_usable_fails(tmp_path):
    clean = tmp_path / "clean"
    make_image(clean / "x.png", 32, 24)
    write_labelme(clean / "x.json", "x.png", 32, 24, [("cat", poly(2, 2, 8, 8), "polygon", None)])
    assert convert(str(clean), str(tmp_path / "o1"), strict=True, progress=False).exit_code == 0

    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "a.json").write_text("not json", encoding="utf-8")
    write_labelme(only_bad / "b.json", "b.png", 32, 24, [("cat", poly(2, 2, 8, 8), "polygon", None)])
    result = convert(str(only_bad), str(tmp_path / "o2"), progress=False)
    assert result.exit_code == 1 and not result.written and not (tmp_path / "o2").exists()
    # negatives only: nothing to train on
    negatives = tmp_path / "negatives"
    make_image(negatives / "n.png", 32, 24)
    write_labelme(negatives / "n.json", "n.png", 32, 24, [])
    assert convert(str(negatives), str(tmp_path / "o3"), progress=False).exit_code == 1


def test_labels_file_order_unknown_labels_and_mask_shapes(tmp_path):
    src = tmp_path / "in"
    make_image(src / "x.png", 40, 30)
    mask = np.zeros((6, 8), np.uint8)
    mask[1:5, 2:7] = 1
    buf = io.BytesIO()
    Image.fromarray(mask * 255).save(buf, format="PNG")
    doc_shapes = [("zebra", poly(1, 1, 5, 5), "polygon", None), ("ant", poly(10, 1, 5, 5), "polygon", None),
                  ("bee", poly(20, 1, 5, 5), "polygon", None), ("ant", [[10.7, 20.2], [17.7, 25.2]], "mask", 3),
                  ("ant", poly(30, 20, 5, 5), "polygon", 3)]
    write_labelme(src / "x.json", "x.png", 40, 30, doc_shapes)
    with open(src / "x.json") as f:
        doc = json.load(f)
    doc["shapes"][3]["mask"] = base64.b64encode(buf.getvalue()).decode()
    with open(src / "x.json", "w") as f:
        json.dump(doc, f)
    labels = tmp_path / "labels.txt"
    labels.write_text("__ignore__\n_background_\nzebra\nant\n", encoding="utf-8")
    assert read_labels_file(labels) == ["zebra", "ant"]
    result = convert(str(src), str(tmp_path / "out"), labels=read_labels_file(labels), progress=False)
    coco = check_coco_invariants(str(tmp_path / "out"))
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "zebra"), (2, "ant")]
    assert [p for p in result.problems] == ["x.json: unknown label 'bee' (not in --labels): 1 shape(s) skipped"]
    ants = [a for a in coco["annotations"] if a["category_id"] == 2]
    assert [isinstance(a["segmentation"], dict) for a in ants] == [False, True]  # mixed mask + polygon: RLE
    assert ants[1]["area"] == 4 * 5 + 25 and ants[1]["bbox"] == [12, 20, 23, 5]
    assert result.needs_bitmask


def test_split_puts_every_class_in_val_when_possible():
    # A in 10 images, B in 3, C in 2, D in 1 (cannot be in both), 4 negatives
    classes = [{"A"}] * 7 + [{"A", "B"}] * 2 + [{"A", "C"}] + [{"B"}, {"C"}, {"D"}] + [set()] * 4
    for seed in range(5):
        val = split_train_val(classes, 0.2, seed)
        assert val == split_train_val(classes, 0.2, seed)  # deterministic
        assert len(val) == 3  # round(17 * 0.2); three images can hold A, B and C
        in_val = set().union(*(classes[i] for i in val))
        in_train = set().union(*(classes[i] for i in range(len(classes)) if i not in val))
        assert {"A", "B", "C"} <= in_val and "D" not in in_val
        assert in_train == {"A", "B", "C", "D"}
    assert len({frozenset(split_train_val(classes, 0.2, s)) for s in range(5)}) > 1  # the seed matters
    assert split_train_val(classes, 0.0, 0) == set() and split_train_val([{"A"}], 0.5, 0) == set()


def test_split_in_files(messy_run):
    out, result = messy_run
    val = load(str(out), "val")
    names = {c["id"]: c["name"] for c in val["categories"]}
    val_classes = {names[a["category_id"]] for a in val["annotations"] if not a["iscrowd"]}
    # cat and dog are in several images: both in val; person and Person are in a/img.json only
    assert val_classes == {"cat", "dog"}
    assert result.instances["Person"] == [1, 0, 0] and result.instances["person"] == [2, 0, 0]
    assert len(val["images"]) == len(result.val_ids) >= 3


def test_output_folder_inside_input_is_not_read_back(tmp_path):
    src = tmp_path / "in"
    make_image(src / "x.png", 32, 24)
    write_labelme(src / "x.json", "x.png", 32, 24, [("cat", poly(2, 2, 8, 8), "polygon", None)])
    first = convert(str(src), str(src / "data"), progress=False)
    second = convert(str(src), str(src / "data"), progress=False)
    assert first.num_json == second.num_json == 1 and second.problems == []
    assert len(load(str(src / "data"))["images"]) == 1
    shutil.rmtree(src / "data")


def test_exact_duplicate_images_share_a_split_and_provenance_is_recorded(tmp_path):
    # 4 distinct photos, each saved 3 times under other names (web-collected sets do this)
    src = tmp_path / "in"
    for k in range(4):
        make_image(src / f"orig{k}.png", 40, 30, seed=k)
        for name in (f"orig{k}", f"copy{k}a", f"copy{k}b"):
            if name != f"orig{k}":
                shutil.copyfile(src / f"orig{k}.png", src / f"{name}.png")
            write_labelme(src / f"{name}.json", f"{name}.png", 40, 30,
                          [("cat", poly(3, 3, 10, 10), "polygon", None)])
    for seed in range(4):
        out = tmp_path / f"out{seed}"
        result = convert(str(src), str(out), val_fraction=0.25, seed=seed, progress=False)
        assert result.written
        trainval, val = load(str(out)), load(str(out), "val")
        val_names = {im["file_name"] for im in val["images"]}
        for k in range(4):
            copies = {f"orig{k}.png", f"copy{k}a.png", f"copy{k}b.png"}
            assert copies <= val_names or not copies & val_names, (seed, k, val_names)
        assert len(val_names) == 3  # one photo's copies: round(12 * 0.25)
        assert trainval["info"]["source"] == str(src)
        for im in trainval["images"]:
            assert im["source_file"] == im["labelme_file"] == os.path.splitext(im["file_name"])[0] + ".json"


# ---------------------------------------------------------------- numbered labels, renaming

def make_numbered_folder(root):
    """4 images numbering their yolks from 1 (yolk1 .. yolk5, yolk5 used once), beside labels that
    are not numbered per instance: car, person, PS4-Controller and a lone model3. Returns the bytes
    of each LabelMe file, to check they are never changed."""
    for k in range(4):
        make_image(root / f"im{k}.png", 80, 60, seed=k)
        shapes = [(f"yolk{j + 1}", poly(2 + 12 * j, 2, 8, 8), "polygon", None) for j in range(k + 2)]
        shapes += [("car", poly(2, 40, 8, 8), "polygon", None), ("person", poly(14, 40, 8, 8), "polygon", None),
                   ("PS4-Controller", poly(26, 40, 8, 8), "polygon", None),
                   ("model3", poly(38, 40, 8, 8), "polygon", None)]
        write_labelme(root / f"im{k}.json", f"im{k}.png", 80, 60, shapes)
    return labelme_bytes(root)


def labelme_bytes(root):
    return {p.name: p.read_bytes() for p in sorted(root.glob("*.json"))}


YOLKS = {"yolk1": 4, "yolk2": 4, "yolk3": 3, "yolk4": 2, "yolk5": 1}
FLAGGED = ('labels look numbered per instance: yolk1..yolk5 (5 labels, 1 used once) -> rerun with --merge-numbered '
           'to make them one class "yolk"')


def test_numbered_label_rule():
    def groups(*images):
        return [(g.stem, g.labels) for g in numbered_groups(images)]

    assert groups({"yolk1": 1, "yolk_2": 1, "yolk-03": 1}, {"yolk1": 1, "yolk 4": 1}) == [
        ("yolk", ["yolk1", "yolk_2", "yolk-03", "yolk 4"])]  # separators, in number order
    assert groups({"car": 3, "person": 2, "PS4-Controller": 1}, {"car": 1}) == []
    assert groups({"model3": 1, "car": 1}, {"model3": 1}) == []  # one numbered label: a name
    assert groups({"PS4": 1}, {"PS5": 1}, {"A320": 1, "A380": 1}) == []  # names' numbers do not count from 1
    assert groups({"grade1": 5, "grade2": 3}, {"grade1": 2, "grade2": 2}) == []  # each marks many objects: kinds
    assert groups({"cell0": 1, "cell1": 2}) == [("cell", ["cell0", "cell1"])]  # cell0 once per image: numbered
    assert groups({"Yolk1": 1, "yolk2": 1}) == []  # stems as written, case-sensitive


def test_numbered_labels_are_flagged_in_summary_and_report_and_kept(tmp_path, capsys):
    src = tmp_path / "in"
    before = make_numbered_folder(src)
    out = tmp_path / "out"
    assert main([str(src), "--output", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert [line for line in printed.splitlines() if "numbered per instance" in line] == [
        FLAGGED,
        'classes look numbered per instance: yolk1..yolk5 (5 classes, 1 used once): probably one class "yolk" '
        "(labelme2coco.py --merge-numbered merges them)"]
    coco = check_coco_invariants(str(out))
    assert [c["name"] for c in coco["categories"]] == ["PS4-Controller", "car", "model3", "person", *YOLKS]
    report = json.loads((out / "report.json").read_text())
    assert report["numbered_classes"] == [{"stem": "yolk", "instances": YOLKS, "used_once": 1}]
    assert [w for w in report["warnings"] if "numbered" in w] == [
        'classes look numbered per instance: yolk1..yolk5 (5 classes, 1 used once): probably one class "yolk"']
    assert labelme_bytes(src) == before


def test_merge_numbered_makes_one_class_of_all_instances(tmp_path):
    src = tmp_path / "in"
    make_numbered_folder(src)
    # group_id 1 on yolk1 (2 polygons) and on yolk2: two objects, as LabelMe groups by (label, group_id)
    make_image(src / "im4.png", 80, 60, seed=4)
    write_labelme(src / "im4.json", "im4.png", 80, 60, [
        ("yolk1", poly(2, 2, 8, 8), "polygon", 1), ("yolk1", poly(14, 2, 8, 8), "polygon", 1),
        ("yolk2", poly(26, 2, 8, 8), "polygon", 1)])
    before = labelme_bytes(src)
    result = convert(str(src), str(tmp_path / "out"), merge_numbered=True, progress=False)
    assert result.written and result.problems == []
    coco = check_coco_invariants(str(tmp_path / "out"))
    assert [c["name"] for c in coco["categories"]] == ["PS4-Controller", "car", "model3", "person", "yolk"]
    assert sum(result.instances["yolk"]) == sum(YOLKS.values()) + 2
    assert sorted(len(a["segmentation"]) for a in by_labelme_file(coco)["im4.json"][1]) == [1, 2]
    assert result.advice == ['merged numbered labels: yolk1..yolk5 (5 labels, 1 used once) -> one class "yolk"']
    assert labelme_bytes(src) == before


def test_label_map_renames_and_merges(tmp_path, capsys):
    src = tmp_path / "in"
    before = make_numbered_folder(src)
    label_map = tmp_path / "map.json"
    label_map.write_text(json.dumps({"car": "vehicle", "model3": "vehicle", "PS4-Controller": "controller",
                                     "yolk": "egg yolk", "bus": "vehicle"}), encoding="utf-8")
    out = tmp_path / "out"
    assert main([str(src), "--output", str(out), "--label-map", str(label_map), "--merge-numbered",
                 "--quiet", "--no-report"]) == 0
    printed = capsys.readouterr()
    coco = check_coco_invariants(str(out))
    counts = {c["name"]: sum(a["category_id"] == c["id"] for a in coco["annotations"]) for c in coco["categories"]}
    assert counts == {"controller": 4, "egg yolk": 14, "person": 4, "vehicle": 8}  # the map renames the merged stem
    renamed = "--label-map renamed 3 label(s): PS4-Controller -> controller, car -> vehicle, model3 -> vehicle"
    assert renamed in printed.out
    assert 'merged numbered labels: yolk1..yolk5 (5 labels, 1 used once) -> one class "egg yolk"' in printed.out
    assert printed.err == f"warning: --label-map {label_map}: no instance is labelled 'bus' (left unused)\n"

    # labels the map names are its own: no longer flagged as numbered
    label_map.write_text(json.dumps({name: "yolk" for name in YOLKS}), encoding="utf-8")
    assert main([str(src), "--output", str(out), "--label-map", str(label_map), "--quiet", "--no-report"]) == 0
    printed = capsys.readouterr()
    assert "numbered" not in printed.out and printed.err == ""
    assert [c["name"] for c in load(str(out))["categories"]] == ["PS4-Controller", "car", "model3", "person", "yolk"]
    assert labelme_bytes(src) == before


@pytest.mark.parametrize("content, problem", [
    (None, "cannot be read"),
    (b'{"car": "vehicle",', "not valid JSON (Expecting property name enclosed in double quotes at line 1"),
    (b'["car", "vehicle"]', "must be one JSON object"),
    (b'{"car": ""}', "a new label is a non-empty string"),
    (b'{"car": ["vehicle"]}', "a new label is a non-empty string"),
    (b'{"car": "a", "car": "b"}', "the label 'car' is mapped twice"),
    (b'{"car": "__ignore__"}', "LabelMe's __ignore__ can be neither renamed nor a new name"),
    (b'{"car": "v\xe9hicule"}', "not UTF-8 text"),
], ids=["missing", "syntax", "list", "empty", "not-a-string", "twice", "reserved", "latin1"])
def test_bad_label_map_is_one_line_naming_the_file(tmp_path, capsys, content, problem):
    src = tmp_path / "in"
    make_image(src / "x.png", 32, 24)
    write_labelme(src / "x.json", "x.png", 32, 24, [("car", poly(2, 2, 8, 8), "polygon", None)])
    label_map = tmp_path / "my map.json"
    if content is not None:
        label_map.write_bytes(content)
    assert main([str(src), "--output", str(tmp_path / "out"), "--label-map", str(label_map), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --label-map {label_map}: ") and problem in err, err
    assert not (tmp_path / "out").exists()


def test_labels_file_lists_the_class_names_after_renaming(tmp_path, capsys):
    src = tmp_path / "in"
    before = make_numbered_folder(src)
    labels = tmp_path / "labels.txt"
    labels.write_text("__ignore__\n_background_\nyolk\ncontroller\ncar\n", encoding="utf-8")
    result = convert(str(src), str(tmp_path / "out"), labels=read_labels_file(labels), merge_numbered=True,
                     label_map={"PS4-Controller": "controller", "model3": "vehicle"}, progress=False)
    coco = check_coco_invariants(str(tmp_path / "out"))
    assert [c["name"] for c in coco["categories"]] == ["yolk", "controller", "car"]
    assert sum(result.instances["yolk"]) == 14 and sum(result.instances["controller"]) == 4
    assert result.problems[:2] == [  # renamed labels outside --labels are named as they are written too
        "im0.json: unknown label 'person' (not in --labels): 1 shape(s) skipped",
        "im0.json: unknown label 'vehicle' (renamed from 'model3', not in --labels): 1 shape(s) skipped"]

    # LabelMe's labels.txt naming the numbered labels: an error, not 5 empty classes and no yolk
    as_written = tmp_path / "labels_as_written.txt"
    as_written.write_text("".join(f"{name}\n" for name in [*YOLKS, "car"]), encoding="utf-8")
    out = tmp_path / "out2"
    assert main([str(src), "--output", str(out), "--labels", str(as_written), "--merge-numbered", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: --labels {as_written} lists labels as written, not the class names after renaming: "
                   f"'yolk1', 'yolk2', 'yolk3', 'yolk4' and 1 more -> 'yolk'; nothing written to {out}\n")
    assert not out.exists()
    # without --merge-numbered the same file gives its own classes, and says they look numbered
    assert main([str(src), "--output", str(out), "--labels", str(as_written), "--quiet", "--no-report"]) == 0
    assert FLAGGED in capsys.readouterr().out
    assert [c["name"] for c in load(str(out))["categories"]] == [*YOLKS, "car"]
    assert labelme_bytes(src) == before
