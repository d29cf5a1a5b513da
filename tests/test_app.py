"""The Gradio app through its API (gradio_client), launched in-process on 127.0.0.1."""

import json
import os
import re
import shutil
import struct
import textwrap
import urllib.request
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gradio_client import Client, handle_file  # noqa: E402

from segkit.app.gradio_app import build_app  # noqa: E402
from segkit.app.model import AppModel, eval_markdown  # noqa: E402
from segkit.engine.checkpoint import load_for_inference  # noqa: E402
from segkit.inference.predictor import Predictor  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:torch.meshgrid"), pytest.mark.usefixtures("one_thread")]


def huge_png(path, w=20000, h=20000):
    """A valid 1-bit PNG of w x h pixels that is only ~50 KB on disk."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = zlib.compress(b"\x00" * (((w + 7) // 8 + 1) * h), 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def run_dir(trained_mini_checkpoint, tmp_path_factory):
    """The checkpoint's run folder as the app sees it: model_final.pth and eval/."""
    src = Path(trained_mini_checkpoint).parent
    d = tmp_path_factory.mktemp("app_run")
    try:
        os.link(trained_mini_checkpoint, d / "model_final.pth")
    except OSError:
        shutil.copy(trained_mini_checkpoint, d / "model_final.pth")
    if (src / "eval").is_dir():
        shutil.copytree(src / "eval", d / "eval")
    return d


@pytest.fixture(scope="module")
def images(sample_data):
    return sorted((Path(sample_data) / "images").glob("*.jpg"))


@pytest.fixture(scope="module")
def app(run_dir, serve_app):
    seg_app = build_app(run_dir / "model_final.pth", device="cpu")
    with serve_app(seg_app) as url:
        yield seg_app, Client(url, download_files=str(run_dir / "downloads"), verbose=False)


def test_starts_without_checkpoint(tmp_path, images, serve_app):
    seg_app = build_app(tmp_path / "missing" / "model_final.pth")
    assert not seg_app.model.ready
    with serve_app(seg_app) as url:
        page_config = urllib.request.urlopen(url + "config", timeout=30).read().decode()
        assert "train_net.py --config-file" in page_config  # the page says what to run first
        client = Client(url, download_files=str(tmp_path / "dl"), verbose=False)
        overlay, table, files, message = client.predict(handle_file(str(images[0])), 0.5, [],
                                                        api_name="/predict")
    assert overlay is None and not files and "train_net.py" in message


def test_predict_api(app, images, run_dir):
    seg_app, client = app
    names = seg_app.model.class_names
    reference = Predictor.from_checkpoint(run_dir / "model_final.pth", device="cpu",
                                          confidence_threshold=0.5)(images[0])
    assert len(reference) > 0
    overlay, table, files, message = client.predict(handle_file(str(images[0])), 0.5, names,
                                                    api_name="/predict")
    w, h = Image.open(images[0]).size
    assert Image.open(overlay).size == (w, h)
    assert table["headers"] == ["#", "class", "score", "area (px)", "box (x0, y0, x1, y1)"]
    rows = table["data"]
    assert [r[1] for r in rows] == [r["class"] for r in reference.records()]
    assert [r[3] for r in rows] == [r["area"] for r in reference.records()]
    assert all(float(r[2]) >= 0.5 for r in rows)
    assert f"{len(rows)} of" in message
    shown = {n: sum(r[1] == n for r in rows) for n in names}  # counts of the rows shown, by class
    counts = ", ".join(f"{c} {n}" for n, c in sorted(shown.items(), key=lambda x: (-x[1], x[0])) if c)
    assert f"Counts: {counts}." in message, message

    by_suffix = {Path(f).name.split("_")[-1]: f for f in files}
    assert len(files) == 4
    with zipfile.ZipFile(by_suffix["masks.zip"]) as z:
        assert len(z.namelist()) == len(rows)
        first = np.asarray(Image.open(z.open(sorted(z.namelist())[0])))
        assert first.shape == (h, w) and set(np.unique(first)) <= {0, 255}
    coco = json.loads(Path(by_suffix["results.json"]).read_text())
    assert len(coco) == len(rows) and all(r["segmentation"]["size"] == [h, w] for r in coco)
    labelme = json.loads(Path(next(f for f in files if f.endswith(f"{images[0].stem}.json"))).read_text())
    assert labelme["imagePath"] == images[0].name and labelme["imageData"] is None
    assert {s["label"] for s in labelme["shapes"]} == {r[1] for r in rows}

    # the class filter of the API call
    only = names[:1]
    _, table, _, _ = client.predict(handle_file(str(images[0])), 0.5, only, api_name="/predict")
    assert {r[1] for r in table["data"]} <= set(only)


def test_documented_api_snippet_as_written(app, images, run_dir, tmp_path, monkeypatch):
    """The Python call of docs/deployment.md, run as written (only the address is the test server's)."""
    seg_app, client = app
    readme = (Path(__file__).resolve().parents[1] / "docs" / "deployment.md").read_text(encoding="utf-8")
    snippet = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S)
                   if "api_name=\"/predict\"" in block)
    served_url = client.src if client.src.endswith("/") else client.src + "/"
    assert "http://127.0.0.1:7860/" in snippet
    snippet = textwrap.dedent(snippet).replace("http://127.0.0.1:7860/", served_url)
    shutil.copy(images[0], tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(snippet, "docs/deployment.md", "exec"), namespace)
    reference = Predictor.from_checkpoint(run_dir / "model_final.pth", device="cpu",
                                          confidence_threshold=0.5)(images[0])
    names = seg_app.model.class_names
    assert len(reference) > 0
    assert len(namespace["table"]["data"]) == len(reference), namespace["message"]
    assert f"{len(names)} of {len(names)} classes" in namespace["message"]
    assert Path(namespace["overlay_png"]).is_file() and len(namespace["files"]) == 4


def test_bad_uploads_keep_the_server_serving(app, images, tmp_path):
    seg_app, client = app
    (tmp_path / "text.jpg").write_text("this is not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "cut.jpg").write_bytes(images[0].read_bytes()[:600])
    huge = huge_png(tmp_path / "huge.png")
    calls = seg_app.model.calls
    for bad, why in [("text.jpg", "not an image"), ("empty.png", "empty"),
                     ("cut.jpg", "truncated"), ("huge.png", "20000x20000")]:
        path = huge if bad == "huge.png" else tmp_path / bad
        overlay, table, files, message = client.predict(handle_file(str(path)), 0.5, [],
                                                        api_name="/predict")
        assert overlay is None and not table["data"] and not files
        assert "Cannot use this upload" in message and why in message, message
    assert seg_app.model.calls == calls  # refused before the model
    overlay, table, files, message = client.predict(handle_file(str(images[1])), 0.5,
                                                    seg_app.model.class_names, api_name="/predict")
    assert overlay and len(files) == 4 and "Cannot" not in message


def test_redraw_uses_the_cached_prediction(app, images):
    seg_app, _ = app
    model = seg_app.model
    names = model.class_names
    *first, cached = seg_app.predict(str(images[0]), 0.05, names)
    calls = model.calls
    rows_low = len(first[1])
    scores = cached.instances.scores.tolist()
    assert rows_low == sum(s >= 0.05 for s in scores) > 0  # else the redraw below checks nothing
    # 0.9, or the best score when it is lower: some rows must stay (an empty table passes any "all")
    cut = min(0.9, max(scores))
    overlay, table, files, message = seg_app.redraw(cached, cut, names)
    assert 0 < len(table) == int((cached.instances.scores >= cut).sum()) <= rows_low
    assert (table["score"] >= round(cut, 3)).all()  # the table shows scores to 3 decimals
    _, table_none, _, _ = seg_app.redraw(cached, 0.05, [])
    assert len(table_none) == 0
    assert model.calls == calls  # no model run for either redraw


def test_slider_starts_at_the_checkpoint_threshold(app, run_dir):
    seg_app, _ = app
    model = seg_app.model
    stored = model.predictor.stored_thresholds["score_threshold"]
    assert model.default_score == pytest.approx(round(stored, 2))
    assert "best-F1 threshold of the checkpoint's evaluation" in model.score_note
    slider = next(c for c in seg_app.blocks.blocks.values() if getattr(c, "elem_id", None) == "confidence")
    assert slider.value == pytest.approx(model.default_score) and model.score_note in slider.info
    assert list((run_dir / "eval").glob("metrics_*.json"))
    assert "| best thr % | P | R | F1 |" in model.info_markdown()


def test_large_image_is_resized_for_display(app, images, tmp_path):
    seg_app, _ = app
    big = tmp_path / "big.png"
    Image.open(images[0]).resize((2400, 1800)).save(big)
    overlay, table, files, message = seg_app.predict(str(big), 0.5, seg_app.model.class_names)[:4]
    assert max(overlay.shape[:2]) == 1600 and "Shown at" in message


def test_model_panel_and_examples(run_dir, sample_data):
    weights = run_dir / "model_final.pth"
    cfg, names = load_for_inference(str(weights))[:2]
    cfg.DATASETS.DATA_DIR = str(sample_data)
    cfg.DATASETS.TEST = ("mydata_val",)
    model = AppModel(weights, predictor=Predictor(cfg, names, device="cpu"))
    examples = model.example_images()
    val = json.loads((Path(sample_data) / "val.json").read_text())
    assert [Path(p).name for p in examples] == [im["file_name"] for im in val["images"]][:8]
    text = model.info_markdown()
    assert all(f"`{n}`" in text for n in names)
    report = json.loads(next((run_dir / "eval").glob("metrics_*.json")).read_text())
    assert f"| AP | {report['bbox']['AP']:.1f} | {report['segm']['AP']:.1f} |" in text


def test_eval_markdown_reads_defensively(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "metrics_x.json").write_text(json.dumps(
        {"dataset": "x", "bbox": {"AP": 50.0, "AP50": None}, "segm": {"AP": float("nan")}}))
    (tmp_path / "sem_seg_metrics.json").write_text(json.dumps(
        {"mIoU": 0.75, "mDice": 0.8, "classes": [{"name": "pet", "dice": 0.9, "iou": 0.8}]}))
    text = "\n".join(eval_markdown(sorted(str(p) for p in tmp_path.glob("*.json"))))
    assert "| AP | 50.0 | n/a |" in text and "mIoU 75.0" in text and "| pet | 90.0 | 80.0 |" in text
    assert "No evaluation results" in "\n".join(eval_markdown([]))


def test_semantic_checkpoint(images, unet_checkpoint):
    """A U-Net checkpoint: class-map overlay, a per-class table, the class filter."""
    seg_app = build_app(unet_checkpoint.path, device="cpu")
    try:
        assert seg_app.model.semantic
        overlay, table, files, message, cached = seg_app.predict(str(images[0]), 0.5, unet_checkpoint.class_names)
        w, h = Image.open(images[0]).size
        assert overlay.shape == (h, w, 3) and list(table.columns) == ["#", "class", "area (px)", "share"]
        assert table["area (px)"].sum() == w * h and "class(es) present" in message
        assert len(files) == 4
        _, only, _, _ = seg_app.redraw(cached, 0.5, [table["class"][0]])
        assert list(only["class"]) == [table["class"][0]]
    finally:
        seg_app.workdirs.cleanup()


def test_model_panel_links_review_and_suspect_pages(run_dir, trained_mini_checkpoint, sample_data, tmp_path,
                                                    serve_app):
    """The error review and suspect pages found beside the checkpoint are linked from the model
    panel, and the links open in the browser (inline HTML, the review's pictures too)."""
    from segkit.loop import review
    from segkit.loop.suspect_outputs import write_html

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(run_dir / "model_final.pth", run / "model_final.pth")
    plain = build_app(run / "model_final.pth", device="cpu")
    assert plain.model.report_pages() == [] and "**Reports**" not in plain.model.info_markdown()
    plain.workdirs.cleanup()

    shutil.copytree(run_dir / "eval", run / "eval")
    shutil.copy(Path(trained_mini_checkpoint).parent / "config.yaml", run / "config.yaml")  # names the data folder
    assert review.main([str(run / "eval"), "--image-root", str(Path(sample_data) / "images"), "--quiet"]) == 0
    write_html(str(run / "suspects_train" / "index.html"), [], "Suspect labels: data train")
    seg_app = build_app(run / "model_final.pth", device="cpu")
    text = seg_app.model.info_markdown()
    links = re.findall(r"\]\((/gradio_api/file=[^)]+)\)", text)
    assert [Path(link).parent.name for link in links] == ["review", "suspects_train"]
    with serve_app(seg_app) as url:
        for link in links:
            with urllib.request.urlopen(url.rstrip("/") + link, timeout=30) as r:
                assert r.headers["Content-Type"].startswith("text/html")
                assert "attachment" not in r.headers.get("Content-Disposition", "")
                page = r.read().decode()
        review_page = urllib.request.urlopen(url.rstrip("/") + links[0], timeout=30).read().decode()
        picture = re.search(r"<img[^>]+src=['\"]([^'\"]+)['\"]", review_page).group(1)
        base = url.rstrip("/") + links[0].rsplit("/", 1)[0] + "/"
        with urllib.request.urlopen(base + picture, timeout=30) as r:
            assert r.headers["Content-Type"] == "image/png" and r.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "Suspect labels" in page
