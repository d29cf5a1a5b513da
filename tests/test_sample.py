"""The deterministic sample generators: LabelMe instance set and trimap set."""

import json
from collections import Counter, defaultdict
from itertools import combinations

import cv2
import numpy as np
import pytest

from segkit.data.sample import CLASSES, main, make_instance_sample, make_trimap_sample

LABELME_KEYS = ["version", "flags", "shapes", "imagePath", "imageData", "imageHeight", "imageWidth"]
SHAPE_KEYS = ["label", "points", "group_id", "description", "shape_type", "flags", "mask"]
NUM = 20


@pytest.fixture(scope="module")
def instance_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    paths = make_instance_sample(str(out), num_images=NUM, seed=0)
    return out, paths


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _instances(doc):
    """Rasterised visible masks, one per instance (shapes sharing a group_id are one instance)."""
    h, w = doc["imageHeight"], doc["imageWidth"]
    groups = defaultdict(list)
    for i, shape in enumerate(doc["shapes"]):
        key = ("g", shape["group_id"]) if shape["group_id"] is not None else ("s", i)
        groups[key].append(shape)
    masks = []
    for shapes in groups.values():
        assert len({s["label"] for s in shapes}) == 1, "a group_id must join shapes of one label"
        m = np.zeros((h, w), np.uint8)
        cv2.fillPoly(m, [np.int32(np.round(s["points"])) for s in shapes], 1)
        masks.append((shapes[0]["label"], m.astype(bool)))
    return masks


def test_same_seed_same_bytes_other_seed_differs(instance_set, tmp_path):
    out, paths = instance_set
    again = tmp_path / "again"
    make_instance_sample(str(again), num_images=NUM, seed=0)
    assert _files(out) == _files(again)
    assert len(paths) == NUM and len(_files(out)) == 2 * NUM + 1  # json + jpg each, labels.txt

    other = tmp_path / "other"
    make_instance_sample(str(other), num_images=NUM, seed=1)
    a, b = _files(out), _files(other)
    assert a.keys() == b.keys()
    assert sum(a[k] != b[k] for k in a if k.endswith(".jpg")) == NUM
    assert sum(a[k] != b[k] for k in a if k.endswith(".json")) >= NUM - 3  # negatives may coincide

    # the first images do not depend on how many are made; stale files of a larger run go away
    make_instance_sample(str(other), num_images=3, seed=0)
    assert _files(other) == {k: v for k, v in a.items() if k == "labels.txt" or k[7:11] in ("0000", "0001", "0002")}


def test_files_are_labelme_files(instance_set):
    out, paths = instance_set
    assert (out / "labels.txt").read_text().split() == ["__ignore__", "_background_", *CLASSES]
    for path in paths:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        assert list(doc) == LABELME_KEYS
        assert doc["version"] == "5.5.0" and doc["flags"] == {} and doc["imageData"] is None
        image = cv2.imread(str(out / doc["imagePath"]))
        assert image is not None and "/" not in doc["imagePath"]
        assert image.shape == (doc["imageHeight"], doc["imageWidth"], 3) == (240, 320, 3)
        for shape in doc["shapes"]:
            assert list(shape) == SHAPE_KEYS
            assert shape["shape_type"] == "polygon" and shape["description"] == "" and shape["mask"] is None
            assert shape["flags"] == {} and shape["label"] in CLASSES
            assert shape["group_id"] is None or isinstance(shape["group_id"], int)
            assert len(shape["points"]) >= 3
            for x, y in shape["points"]:
                assert isinstance(x, float) and isinstance(y, float)
                assert 0 <= x <= doc["imageWidth"] - 1 and 0 <= y <= doc["imageHeight"] - 1


def test_content_classes_negatives_sizes_occlusion(instance_set):
    out, paths = instance_set
    docs = [json.loads(open(p, encoding="utf-8").read()) for p in paths]
    per_class = Counter()
    negatives = 0
    extents = []
    for doc in docs:
        instances = _instances(doc)
        negatives += not instances
        for label, m in instances:
            per_class[label] += 1
            ys, xs = np.nonzero(m)
            extents.append(max(np.ptp(xs), np.ptp(ys)) + 1)
        # visible parts of different instances barely overlap (only along shared boundaries)
        for (_, a), (_, b) in combinations(instances, 2):
            inter = (a & b).sum()
            if inter:
                assert inter / (a | b).sum() < 0.05
                assert inter <= 0.2 * min(a.sum(), b.sum())
    assert set(per_class) == set(CLASSES) and min(per_class.values()) >= 10
    assert 1 <= negatives <= NUM // 5
    assert sum(per_class.values()) >= 3 * (NUM - negatives)  # several instances per image
    assert np.percentile(extents, 5) >= 10 and max(extents) >= 80 and np.median(extents) >= 25
    # partial occlusion happens: every class is convex, so a clearly non-convex visible part (or
    # one split in pieces) is an object partly hidden by a later one
    occluded = 0
    for doc in docs:
        for _, m in _instances(doc):
            contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            hull = cv2.convexHull(np.concatenate(contours))
            occluded += m.sum() < 0.85 * cv2.contourArea(hull)
    assert occluded >= 5


def test_polygons_match_the_pixels(instance_set):
    """An annotated object differs in colour from its surroundings: the polygon is where the object is."""
    out, paths = instance_set
    contrast = []
    for path in paths[:8]:
        doc = json.loads(open(path, encoding="utf-8").read())
        image = cv2.imread(str(out / doc["imagePath"])).astype(np.float32)
        for _, m in _instances(doc):
            if m.sum() < 400:
                continue
            inner = cv2.erode(m.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            ring = cv2.dilate(m.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~cv2.dilate(
                m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            inside = image[inner]
            assert inside.std(axis=0).mean() < 25  # an object is one shaded colour
            contrast.append(np.abs(inside.mean(axis=0) - image[ring].mean(axis=0)).max())
    # ... which differs from what lies just outside its polygon
    assert len(contrast) >= 5 and np.mean(np.array(contrast) > 30) >= 0.8


def test_trimap_set(tmp_path):
    paths = make_trimap_sample(str(tmp_path / "tri"), num_images=6, seed=0)
    root = tmp_path / "tri"
    assert json.loads((root / "classes.json").read_text()) == {"1": "pet", "2": "background", "3": "outline"}
    stems = sorted(p.stem for p in (root / "images").glob("*.jpg"))
    assert stems == sorted(p.stem for p in (root / "annotations").glob("*.png")) and len(stems) == 6
    assert len(paths) == 6
    for stem in stems:
        image = cv2.imread(str(root / "images" / f"{stem}.jpg"))
        label = cv2.imread(str(root / "annotations" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert label.ndim == 2 and label.dtype == np.uint8 and label.shape == image.shape[:2] == (256, 256)
        assert set(np.unique(label)) == {1, 2, 3}
        pet, bg, band = label == 1, label == 2, label == 3
        assert pet.mean() > 0.03 and bg.mean() > 0.3
        # the band separates pet from background: a pet pixel is never next to a background pixel
        near_pet = cv2.dilate(pet.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert not (near_pet & bg).any()
        # ... and it is a thin band (~3 px) hugging the pets (only sharp ear tips are all band)
        far = band & ~cv2.dilate(pet.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
        assert far.sum() < 0.02 * band.sum()
        near_band = cv2.dilate(band.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        edge = pet & ~cv2.erode(pet.astype(np.uint8), np.ones((3, 3), np.uint8), borderValue=1).astype(bool)
        assert (edge & near_band).sum() >= 0.95 * edge.sum()  # the band surrounds the pets
        assert band.sum() < 0.6 * pet.sum()
        # learnable: pets look different from the background
        img = image.astype(np.float32)
        assert np.abs(img[pet].mean(axis=0) - img[bg].mean(axis=0)).max() > 25
    again = make_trimap_sample(str(tmp_path / "tri2"), num_images=6, seed=0)
    assert [open(p, "rb").read() for p in again] == [open(p, "rb").read() for p in paths]
    assert _files(root) == _files(tmp_path / "tri2")


def test_cli(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "inst"), "--num-images", "2", "--seed", "3"]) == 0
    assert "wrote 2 LabelMe files" in capsys.readouterr().out
    assert len(list((tmp_path / "inst").glob("*.json"))) == 2
    assert main(["--kind", "trimap", "--out", str(tmp_path / "tri"), "--num-images", "2"]) == 0
    assert len(list((tmp_path / "tri" / "annotations").glob("*.png"))) == 2
