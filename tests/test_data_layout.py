"""The data folder layout lives in one detectron2-free module, so converting a folder stays light."""

import json
import os
import subprocess
import sys

from conftest import ROOT

from segkit.data import layout

# Runs labelme2coco.py as __main__ in a fresh interpreter, then lists which heavy modules it imported.
_PROBE = """
import runpy, sys
sys.argv = ["labelme2coco.py"] + sys.argv[1:]
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit as e:
    code = e.code
print("HEAVY=" + ",".join(m for m in ("torch", "detectron2", "torchvision") if m in sys.modules))
print("CODE=" + str(code))
"""


def test_labelme2coco_converts_without_torch_or_detectron2(tmp_path):
    from segkit.data.sample import make_instance_sample

    make_instance_sample(tmp_path / "labelme", num_images=3, size=(64, 64), seed=1)
    probe = _PROBE.format(script=str(ROOT / "labelme2coco.py"))
    proc = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "labelme"), "--output", str(tmp_path / "data"),
                           "--quiet"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert "CODE=0" in proc.stdout, proc.stdout + proc.stderr
    assert "HEAVY=\n" in proc.stdout, proc.stdout
    for line in layout.config_lines(str(tmp_path / "data")):  # the config lines are still printed
        assert line in proc.stdout
    assert (tmp_path / "data" / layout.REPORT_JSON).is_file()
    trainval = json.loads((tmp_path / "data" / "trainval.json").read_text())
    assert len(trainval["images"]) == 3


def test_registered_names_point_at_the_layout_files(tmp_path, sample_data):
    from detectron2.data import MetadataCatalog

    from segkit.data.catalog import register_data_dir

    names = register_data_dir(str(sample_data), prefix="layouttest")
    present = [s for s in layout.SPLITS if s != layout.TEST_SPLIT]  # the sample has no test split
    assert names == [layout.dataset_name(s, "layouttest") for s in present]
    for split, name in zip(present, names):
        meta = MetadataCatalog.get(name)
        assert meta.json_file == layout.split_json(str(sample_data), split)
        assert meta.image_root == layout.image_root(str(sample_data))


def test_import_data_imports_neither_torch_nor_detectron2(tmp_path):
    from PIL import Image

    (tmp_path / "yolo" / "labels").mkdir(parents=True)
    (tmp_path / "yolo" / "images").mkdir()
    for k in range(2):
        Image.new("RGB", (32, 32), (k * 80, 0, 0)).save(tmp_path / "yolo" / "images" / f"{k}.png")
        (tmp_path / "yolo" / "labels" / f"{k}.txt").write_text("0 0.1 0.1 0.6 0.1 0.6 0.6\n")
    (tmp_path / "yolo" / "classes.txt").write_text("thing\n")
    probe = _PROBE.format(script=str(ROOT / "import_data.py")).replace('"labelme2coco.py"', '"import_data.py"')
    proc = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "yolo"), "--output", str(tmp_path / "data"),
                           "--quiet"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert "CODE=0" in proc.stdout and "detected yolo" in proc.stdout, proc.stdout + proc.stderr
    assert "HEAVY=\n" in proc.stdout, proc.stdout


def test_a_test_split_is_registered_and_reported(tmp_path, sample_data):
    import shutil

    from detectron2.data import MetadataCatalog

    from segkit.data.catalog import register_data_dir
    from segkit.data.report import build_report

    data = tmp_path / "data"
    shutil.copytree(sample_data, data)
    shutil.copy(data / "val.json", data / "test.json")  # as an import with a test split writes it
    names = register_data_dir(str(data), prefix="testsplit")
    assert names[-1] == "testsplit_test"
    assert MetadataCatalog.get("testsplit_test").json_file == layout.split_json(str(data), "test")
    val_images = len(json.loads((data / "val.json").read_text())["images"])
    assert build_report(str(data))["splits"]["test"]["images"] == val_images


def test_converters_and_predict_take_the_same_image_files(tmp_path):
    """One image-extension list: a folder's images are the same for the importers and predict.py
    (three lists differed: .jfif/.pbm/.pgm/.ppm were images to predict.py only, .gif not to the
    semantic importer)."""
    from segkit.data.formats.images import list_images
    from segkit.data.image_files import IMAGE_EXTENSIONS
    from segkit.inference.predict_cli import expand_inputs

    for ext in IMAGE_EXTENSIONS + (".txt", ".json"):
        (tmp_path / f"a{ext.upper() if ext == '.png' else ext}").write_bytes(b"")
    by_importers = sorted(os.path.basename(p) for p in list_images(str(tmp_path)))
    by_predict = sorted(os.path.basename(p) for p in expand_inputs([str(tmp_path)])[0])
    assert by_importers == by_predict and len(by_predict) == len(IMAGE_EXTENSIONS)


def test_inside_a_folder_is_judged_on_names(tmp_path):
    """One is_inside: an annotation's ``../`` cannot leave the folder, and a link the user placed in
    the folder is inside it (one version resolved links and refused such images, one did not)."""
    from segkit.data.file_names import is_inside

    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (elsewhere / "img.png").write_bytes(b"")
    (root / "img.png").symlink_to(elsewhere / "img.png")
    assert is_inside(root / "img.png", root)
    assert is_inside(root / "sub" / ".." / "img.png", root)
    assert not is_inside(root / ".." / "elsewhere" / "img.png", root)
    assert not is_inside(root, root / "sub")
