"""Dataset report and browse overlays on a small hand-made COCO folder with known problems."""

import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from segkit.data.report import DatasetReportError, load_coco, main as report_main, report_data_dir

from conftest import ROOT, uncompressed_rle_counts

SIZE = 128


def _square(x0, y0, x1, y1):
    return [[float(x0), float(y0), float(x1), float(y0), float(x1), float(y1), float(x0), float(y1)]]


def _rle(y0, y1, x0, x1, compressed=True):
    m = np.zeros((SIZE, SIZE), np.uint8, order="F")
    m[y0:y1, x0:x1] = 1
    if compressed:
        rle = mask_utils.encode(m)
        rle["counts"] = rle["counts"].decode("ascii")
        return rle
    return {"size": [SIZE, SIZE], "counts": uncompressed_rle_counts(m)}  # what COCO uses for iscrowd


def _image(seed):
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(40, 120, (8, 8, 3)).astype(np.uint8), (SIZE, SIZE),
                      interpolation=cv2.INTER_LINEAR)
    return base


@pytest.fixture
def coco_dir(tmp_path):
    """5 images: a.png and b.png identical (b in val), c.png negative, d.png with one tiny and one
    1-px-thin mask, e.png with a crowd region; 'dog' and 'bird' have no instance in val."""
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    for name, seed in (("a.png", 1), ("c.png", 3), ("d.png", 4), ("e.png", 5)):
        cv2.imwrite(str(data / "images" / name), _image(seed))
    shutil.copyfile(data / "images" / "a.png", data / "images" / "b.png")
    categories = [{"id": 1, "name": "cat", "supercategory": ""}, {"id": 2, "name": "dog", "supercategory": ""},
                  {"id": 3, "name": "bird", "supercategory": ""}]
    images = [{"id": i, "file_name": n, "width": SIZE, "height": SIZE}
              for i, n in enumerate(("a.png", "b.png", "c.png", "d.png", "e.png"), start=1)]

    def ann(aid, image_id, cat, seg, iscrowd=0):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, SIZE, SIZE)) if isinstance(seg, list) else (
            mask_utils.frPyObjects(seg, SIZE, SIZE) if isinstance(seg["counts"], list)
            else {"size": seg["size"], "counts": seg["counts"].encode()})
        return {"id": aid, "image_id": image_id, "category_id": cat, "segmentation": seg,
                "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": iscrowd}

    anns = [
        ann(1, 1, 1, _square(10, 10, 30, 30)),  # cat, area 400: small
        ann(2, 1, 2, _rle(50, 90, 60, 100)),  # dog, RLE, area 1600: medium
        ann(3, 2, 1, _square(10, 10, 110, 110)),  # cat, area 10000: large (val)
        ann(4, 4, 1, _square(10, 10, 13, 13)),  # cat, area 9: tiny
        ann(5, 4, 1, _square(10, 50, 40, 51)),  # cat, 30 x 1 px: degenerate box
        ann(6, 5, 1, _square(70, 70, 90, 90)),  # cat, area 400 (val)
        ann(7, 5, 2, _rle(0, 20, 0, 20, compressed=False), iscrowd=1),  # dog crowd region (val)
    ]

    def write(split, image_ids):
        coco = {"images": [im for im in images if im["id"] in image_ids],
                "annotations": [a for a in anns if a["image_id"] in image_ids],
                "categories": categories}
        (data / f"{split}.json").write_text(json.dumps(coco))

    write("train", {1, 3, 4})
    write("val", {2, 5})
    write("trainval", {1, 2, 3, 4, 5})
    return data


def test_report_counts_exactly(coco_dir, capsys):
    report = report_data_dir(str(coco_dir))
    printed = capsys.readouterr().out

    assert report["classes"] == ["cat", "dog", "bird"]
    tv, train, val = (report["splits"][s] for s in ("trainval", "train", "val"))
    assert (tv["images"], tv["instances"], tv["crowd_regions"], tv["images_without_annotations"]) == (5, 6, 1, 1)
    assert tv["instances_per_class"] == {"cat": 5, "dog": 1, "bird": 0}
    assert (train["images"], train["instances"], train["images_without_annotations"]) == (3, 4, 1)
    assert train["instances_per_class"] == {"cat": 3, "dog": 1, "bird": 0}
    assert (val["images"], val["instances"], val["crowd_regions"]) == (2, 2, 1)
    assert val["instances_per_class"] == {"cat": 2, "dog": 0, "bird": 0}

    sizes = report["size_distribution"]
    assert (sizes["small"], sizes["medium"], sizes["large"]) == (4, 1, 1)
    hist = {h["bin"]: h["count"] for h in sizes["sqrt_area_histogram"]}
    assert sum(hist.values()) == 6
    assert (hist["0-4"], hist["4-8"], hist["16-24"], hist["32-48"], hist["96-128"]) == (1, 1, 2, 1, 1)
    assert report["instances_per_image"] == {0: 1, 1: 1, 2: 3}

    assert report["images_without_annotations"] == ["c.png"]
    problems = sorted((p["image"], p["annotation_id"], p["reason"]) for p in report["tiny_or_degenerate"])
    assert problems == [("d.png", 4, "area < 16 px"), ("d.png", 5, "bbox side < 2 px")]
    assert report["duplicate_images"] == [["a.png", "b.png"]]
    assert report["duplicates_across_train_val"] == [["a.png", "b.png"]]
    assert report["missing_images"] == []
    assert report["classes_missing_from_val"] == ["dog", "bird"]

    # written files: the JSON equals the returned dict, the PNG is a real multi-panel image
    on_disk = json.loads((coco_dir / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    png = cv2.imread(str(coco_dir / "report.png"))
    assert png is not None and png.shape[0] > 500 and png.shape[1] > 1000
    assert len(np.unique(png.reshape(-1, 3), axis=0)) > 20
    assert not list(coco_dir.glob(".*.tmp"))

    # the printed table is aligned and names the problems
    assert "classes missing from val: dog, bird" in printed
    assert "a.png = b.png" in printed
    rows = [line for line in printed.splitlines() if line.startswith(("cat ", "dog ", "bird ", "total "))]
    assert len(rows) == 4 and len({len(r) for r in rows}) == 1


def test_report_missing_image_and_same_output_twice(coco_dir):
    (coco_dir / "images" / "e.png").unlink()
    first = report_data_dir(str(coco_dir), print_fn=None)
    assert first["missing_images"] == ["e.png"]
    json1 = (coco_dir / "report.json").read_bytes()
    png1 = (coco_dir / "report.png").read_bytes()
    report_data_dir(str(coco_dir), print_fn=None)
    assert (coco_dir / "report.json").read_bytes() == json1
    assert (coco_dir / "report.png").read_bytes() == png1


def test_report_errors_name_the_file(coco_dir, capsys):
    (coco_dir / "val.json").write_text('{"images": [')
    with pytest.raises(DatasetReportError, match=r"val\.json: not valid JSON"):
        report_data_dir(str(coco_dir), print_fn=None)
    (coco_dir / "val.json").write_text('{"images": []}')
    with pytest.raises(DatasetReportError, match=r"val\.json: not a COCO instances file \(no 'annotations' list\)"):
        load_coco(str(coco_dir / "val.json"))
    (coco_dir / "trainval.json").unlink()
    assert report_main([str(coco_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trainval.json: file not found" in err
    assert not (coco_dir / "report.json").exists()


def test_report_cli_runs(coco_dir):
    result = subprocess.run([sys.executable, "-m", "segkit.data.report", str(coco_dir)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "tiny or degenerate masks: 2" in result.stdout
    assert (coco_dir / "report.png").is_file()


def test_browse_draws_ground_truth(coco_dir, tmp_path):
    from segkit.data.browse import browse

    out = tmp_path / "overlays"
    paths = browse(str(coco_dir), split="trainval", out_dir=str(out), progress=False)
    names = sorted(p.rsplit("/", 1)[-1] for p in paths)
    assert names == ["a.png", "b.png", "c.png", "d.png", "e.png"]
    for path in paths:
        assert path.startswith(str(out / "trainval"))

    def diff(name):
        original = cv2.imread(str(coco_dir / "images" / name)).astype(int)
        drawn = cv2.imread(str(out / "trainval" / name)).astype(int)
        assert drawn.shape == original.shape
        return np.abs(drawn - original).sum(axis=2)

    d = diff("a.png")
    assert d[15:26, 15:26].mean() > 20  # inside the cat square
    assert d[55:85, 65:95].mean() > 20  # inside the dog RLE mask
    assert d[110:, :40].mean() < 5  # far from every object: untouched
    assert diff("c.png").mean() < 5  # negative image: nothing drawn (Visualizer resamples slightly)

    limited = browse(str(coco_dir), split="val", out_dir=str(out), limit=1, progress=False)
    assert len(limited) == 1 and limited[0].endswith("val/b.png")


def test_sample_convert_report_end_to_end(tmp_path):
    from segkit.data.sample import make_instance_sample

    make_instance_sample(str(tmp_path / "sample"), num_images=10, seed=0)
    out = tmp_path / "data"
    result = subprocess.run([sys.executable, "labelme2coco.py", str(tmp_path / "sample"), "--output", str(out), "--no-report"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    report = report_data_dir(str(out), print_fn=None)
    assert report["classes"] == ["disc", "square", "triangle"]
    assert report["splits"]["trainval"]["images"] == 10
    assert [os.path.basename(n) for n in report["images_without_annotations"]] == ["sample_0005.jpg"]
    assert report["duplicate_images"] == [] and report["missing_images"] == []
    shapes = [json.loads(p.read_text())["shapes"] for p in sorted((tmp_path / "sample").glob("*.json"))]
    instances = sum(len({(s["label"], s["group_id"]) if s["group_id"] is not None else id(s) for s in sh})
                    for sh in shapes)
    assert report["splits"]["trainval"]["instances"] == instances
