"""The many-class tuning set (segkit/data/many_classes.py): generated from the shared real photos,
converted by labelme2coco's converter, with the classes and counts it promises."""

import json
import os
from collections import Counter

import numpy as np
import pytest
from conftest import SHARED

from segkit.data.coco_convert import convert
from segkit.data.many_classes import SHAPE_CLASSES, SourceError, main, make_many_class_set

CONTROLLERS = SHARED / "datasets" / "controllers" / "train"
VOC = SHARED / "labelme-examples" / "instance_segmentation" / "data_annotated"
pytestmark = pytest.mark.skipif(not (CONTROLLERS.is_dir() and VOC.is_dir()),
                                reason="../shared controllers frames and LabelMe examples are not present")


def _snapshot(folder):
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir())


def test_generates_many_classes_with_few_examples_each_and_converts(tmp_path):
    before = _snapshot(CONTROLLERS), _snapshot(VOC)
    out = tmp_path / "many"
    paths, classes = make_many_class_set([CONTROLLERS, VOC], out, seed=1, per_class=(3, 6))
    assert (_snapshot(CONTROLLERS), _snapshot(VOC)) == before  # sources only read
    real = {"PS4-Controller", "Smart-Switch", "Smart-Plug", "person", "bus", "car", "bottle", "chair", "sofa"}
    assert set(classes) == real | set(SHAPE_CLASSES) and len(classes) >= 10

    # the LabelMe files: each class 3..6 times, each object one instance (shapes joined by group_id)
    per_class = Counter()
    for p in paths:
        doc = json.loads(open(p).read())
        assert os.path.isfile(os.path.join(os.path.dirname(p), doc["imagePath"]))
        instances = {(s["label"], s["group_id"] if s["group_id"] is not None else id(s)) for s in doc["shapes"]}
        per_class.update(label for label, _ in instances)
    assert set(per_class) == set(classes) and all(3 <= n <= 6 for n in per_class.values()), per_class

    result = convert(out, tmp_path / "data", val_fraction=0.2, seed=0, progress=False, strict=True)
    assert result.exit_code == 0, result.reason
    coco = {s: json.loads((tmp_path / "data" / f"{s}.json").read_text()) for s in ("train", "val")}
    assert {c["name"] for c in coco["train"]["categories"]} == set(classes)
    names = {c["id"]: c["name"] for c in coco["train"]["categories"]}
    in_coco = Counter(names[a["category_id"]] for s in coco.values() for a in s["annotations"] if not a["iscrowd"])
    assert in_coco == per_class
    train_counts = Counter(names[a["category_id"]] for a in coco["train"]["annotations"])
    assert np.median(list(train_counts.values())) <= 5, train_counts  # few examples per class

    # same seed, same files
    again, _ = make_many_class_set([CONTROLLERS, VOC], tmp_path / "again", seed=1, per_class=(3, 6))
    for a, b in zip(paths, again):
        for ext in (".json", ".jpg"):
            assert open(a[:-5] + ext, "rb").read() == open(b[:-5] + ext, "rb").read()


def test_bad_source_is_one_line_naming_it(tmp_path, capsys):
    with pytest.raises(SourceError, match="no LabelMe JSON"):
        make_many_class_set([tmp_path], tmp_path / "out")
    assert main(["--sources", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing: not a folder" in err
