"""Predictor (DefaultPredictor wrapper) and visualization on a small Mask R-CNN checkpoint."""

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import segkit
from segkit.inference import visualization as vis
from segkit.inference.image_io import ImageLoadError, to_rgb_uint8
from segkit.inference.predictor import Prediction, Predictor

CLASSES = ["disc", "square", "triangle"]
ROOT = Path(segkit.__file__).resolve().parents[1]
pytestmark = [pytest.mark.filterwarnings("ignore:torch.meshgrid"), pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def predictor(trained_mini_checkpoint):
    return Predictor.from_checkpoint(trained_mini_checkpoint, device="cpu", confidence_threshold=0.3)


@pytest.fixture(scope="module")
def images(sample_data):
    """The sample set's images (the ones the mini checkpoint was trained on)."""
    return sorted((Path(sample_data) / "images").glob("*.jpg"))


@pytest.fixture(scope="module")
def rgb(images):
    """An RGB sample image with objects, as a lossless array."""
    return np.asarray(Image.open(images[0]).convert("RGB")).copy()


@pytest.fixture(scope="module")
def base(predictor, rgb):
    return predictor(rgb, rgb=True)


def assert_same(a, b, score_tol=1e-4, min_iou=0.99):
    assert a.instances.pred_classes.tolist() == b.instances.pred_classes.tolist()
    assert torch.allclose(a.instances.scores, b.instances.scores, atol=score_tol)
    ious = mask_ious(a.instances.pred_masks, b.instances.pred_masks)
    assert ious.numel() == 0 or ious.min() >= min_iou, ious


def mask_ious(a, b):
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def test_prediction_fields(predictor, base, rgb):
    assert isinstance(base, Prediction)
    assert base.class_names == CLASSES
    inst = base.instances
    assert len(inst) > 0, "the checkpoint should find something in a sample image"
    h, w = rgb.shape[:2]
    assert base.image_size == (h, w)
    assert inst.pred_masks.shape == (len(inst), h, w) and inst.pred_masks.dtype == torch.bool
    assert inst.pred_boxes.tensor.device.type == "cpu"
    assert set(inst.pred_classes.tolist()) <= set(range(len(CLASSES)))
    assert (inst.scores >= 0.05).all()
    # Visualizer labels with names only if the metadata has them
    assert list(base.metadata.thing_classes) == CLASSES
    assert len(base.metadata.thing_colors) == len(CLASSES)
    recs = base.records()
    assert recs[0]["class"] == CLASSES[recs[0]["class_id"]]
    assert recs[0]["area"] == int(inst.pred_masks[0].sum())


def test_input_kinds_agree(predictor, base, rgb, tmp_path):
    png = tmp_path / "a.png"
    Image.fromarray(rgb).save(png)
    bgr = cv2.imread(str(png))
    assert_same(base, predictor(bgr), score_tol=0)  # numpy defaults to BGR, like cv2
    assert_same(base, predictor(Image.open(png)), score_tol=0)
    assert_same(base, predictor(str(png)), score_tol=0)
    # channel order matters: RGB data passed as BGR is a different image
    swapped = predictor(rgb)
    assert not (len(swapped) == len(base) and torch.equal(swapped.instances.scores, base.instances.scores))


def test_image_modes(predictor, rgb, tmp_path):
    """Grayscale, RGBA, palette, 16-bit, CMYK and EXIF-rotated files: 3-channel 8-bit inputs,
    masks at the (rotated) input size, and the same result as the equivalent 8-bit RGB image."""
    h, w = rgb.shape[:2]
    gray = np.asarray(Image.fromarray(rgb).convert("L"))

    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    rgba = np.dstack([rgb, np.full((h, w), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(tmp_path / "pal.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.tif")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    assert Image.open(tmp_path / "cmyk.tif").mode == "CMYK"

    gray_pred = predictor(tmp_path / "gray.png")
    assert gray_pred.image.shape == (h, w, 3) and gray_pred.image.dtype == np.uint8
    assert_same(gray_pred, predictor(tmp_path / "gray16.png"), score_tol=0)
    assert_same(predictor(rgb, rgb=True), predictor(tmp_path / "rgba.png"), score_tol=0)
    for name in ("pal.png", "cmyk.tif"):
        p = predictor(tmp_path / name)
        assert p.image_size == (h, w) and p.instances.pred_masks.shape[1:] == (h, w)

    # EXIF orientation 6 (rotate 90 clockwise to display): stored sideways, shown upright
    sideways = np.ascontiguousarray(np.rot90(rgb, 1))  # what a camera stores
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(sideways).save(tmp_path / "exif.png", exif=exif)
    upright = predictor(tmp_path / "exif.png")
    assert upright.image_size == (h, w)
    assert np.array_equal(upright.image, rgb)
    assert_same(predictor(rgb, rgb=True), upright, score_tol=0)


def test_numpy_variants():
    a = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(to_rgb_uint8(a, rgb=True), a)
    assert np.array_equal(to_rgb_uint8(a), a[:, :, ::-1])
    assert to_rgb_uint8(a[:, :, 0]).shape == (5, 7, 3)
    assert np.array_equal(to_rgb_uint8(np.dstack([a, a[:, :, :1]]), rgb=True), a)
    assert np.array_equal(to_rgb_uint8(a.astype(np.uint16) * 257, rgb=True), a)
    assert np.array_equal(to_rgb_uint8(a.astype(np.float32) / 255, rgb=True), a)
    with pytest.raises(ImageLoadError):
        to_rgb_uint8(np.zeros((3, 5, 7), np.uint8))


def test_bad_files(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageLoadError, match="empty"):
        to_rgb_uint8(tmp_path / "empty.jpg")
    with pytest.raises(ImageLoadError, match="not an image"):
        to_rgb_uint8(tmp_path / "text.png")
    ok = tmp_path / "ok.jpg"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(ok)
    (tmp_path / "trunc.jpg").write_bytes(ok.read_bytes()[:200])
    with pytest.raises(ImageLoadError, match="truncated|broken"):
        to_rgb_uint8(tmp_path / "trunc.jpg")
    with pytest.raises(ImageLoadError, match="larger than"):
        to_rgb_uint8(ok, max_pixels=100)


def test_batch_is_one_forward_and_equals_single(predictor, rgb, images):
    other = np.asarray(Image.open(images[1]).convert("RGB"))
    assert other.shape == rgb.shape
    calls = []
    handle = predictor.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        batch = predictor.predict_batch([rgb, other], rgb=True)
    finally:
        handle.remove()
    assert len(calls) == 1
    singles = [predictor(rgb, rgb=True), predictor(other, rgb=True)]
    for b, s in zip(batch, singles):
        assert_same(b, s, score_tol=1e-4, min_iou=0.98)


def test_filter_and_class_map(base):
    hi = base.filter(min_score=float(base.instances.scores.median()))
    assert 0 < len(hi) <= len(base) and (hi.instances.scores >= base.instances.scores.median()).all()
    only = base.filter(classes=[base.class_names[int(base.instances.pred_classes[0])]])
    assert set(only.instances.pred_classes.tolist()) == {int(base.instances.pred_classes[0])}
    assert len(base.filter(classes=[])) == 0
    cmap = base.class_map()
    assert cmap.shape == base.image_size and cmap.max() <= len(CLASSES)
    assert ((cmap > 0) == base.instances.pred_masks.any(0).numpy()).all()


def test_visualizations(base, rgb, tmp_path):
    h, w = rgb.shape[:2]
    covered = base.instances.pred_masks.any(0).numpy()
    for mode in ("image", "segmentation", "bw"):
        over = vis.draw_prediction(base, mode=mode)
        assert over.shape == (h, w, 3) and over.dtype == np.uint8
        assert np.abs(over.astype(int) - rgb).sum(axis=2)[covered].mean() > 5  # masks drawn
    # reproducible colours
    assert np.array_equal(vis.draw_prediction(base), vis.draw_prediction(base))
    # zero instances: the image comes back (IMAGE mode)
    none = base.filter(min_score=1.01)
    assert np.abs(vis.draw_prediction(none).astype(int) - rgb).mean() < 3  # matplotlib resampling

    masked = vis.masked_image(base)
    assert (masked[~covered] == 0).all() and np.array_equal(masked[covered], rgb[covered])

    paths = vis.save_instance_masks(base, tmp_path / "masks", "img")
    assert len(paths) == len(base)
    m0 = np.asarray(Image.open(paths[0]))
    assert m0.shape == (h, w) and set(np.unique(m0)) <= {0, 255}
    assert np.array_equal(m0 > 0, base.instances.pred_masks[0].numpy())
    assert os.path.basename(paths[0]) == f"img_000_{base.class_names[int(base.instances.pred_classes[0])]}.png"

    lm = vis.label_map(base)
    assert lm.shape == (h, w, 3) and (lm[~covered] == 0).all()
    colours = {tuple(c) for c in lm[covered].reshape(-1, 3)}
    assert colours <= {tuple(c) for c in base.metadata.thing_colors}
    assert vis.label_map(base, by="instance").shape == (h, w, 3)

    small = vis.downscale(base, 100)
    assert max(small.image_size) == 100 and small.instances.pred_masks.shape[1:] == small.image_size
    vis.save_png(vis.draw_prediction(base), tmp_path / "overlay.png")
    assert Image.open(tmp_path / "overlay.png").size == (w, h)


def test_side_by_side_with_coco_ground_truth(base, images, sample_data):
    gt_file = Path(sample_data) / "trainval.json"
    h, w = base.image_size
    pair = vis.side_by_side(base, gt_file, file_name=f"some/dir/{images[0].name}")
    assert pair.shape[1] == 2 * w + 4 and pair.shape[0] > h
    gt_half = pair[-h:, :w].astype(int)
    assert np.abs(gt_half - base.image).sum(axis=2).mean() > 1  # ground truth drawn
    gt, meta = vis.load_gt(gt_file, images[0].name)
    assert list(meta.thing_classes) == CLASSES and len(gt["annotations"]) > 0
    with pytest.raises(KeyError):
        vis.side_by_side(base, gt_file, file_name="unknown.jpg")


def test_semantic_unet_checkpoint(unet_checkpoint, rgb):
    """A U-Net checkpoint gives sem_seg [C, H, W]; stuff classes; draw_sem_seg overlay."""
    path = unet_checkpoint.path
    pred = Predictor.from_checkpoint(path, device="cpu")(rgb, rgb=True)
    h, w = rgb.shape[:2]
    assert pred.is_semantic and pred.instances is None
    assert tuple(pred.sem_seg.shape) == (3, h, w)
    assert list(pred.metadata.stuff_classes) == unet_checkpoint.class_names
    cmap = vis.class_map(pred)
    assert cmap.shape == (h, w) and cmap.max() < 3
    assert np.array_equal(cmap, pred.sem_seg.argmax(0).numpy())
    over = vis.draw_prediction(pred)
    assert over.shape == (h, w, 3)
    assert len(vis.instance_masks(pred)) == len(np.unique(cmap))


def test_checkpoint_is_read_once_and_its_thresholds_apply_by_default(trained_mini_checkpoint, monkeypatch):
    """from_checkpoint reads the file once (config, classes, thresholds and weights from one read;
    it was read twice, and four times for predict.py --rank uncertainty), loads the same weights as
    detectron2's own loading, and keeps per class the instances above the checkpoint's stored
    thresholds unless a confidence threshold is given."""
    from detectron2.engine import DefaultPredictor

    from segkit.engine.checkpoint import load_for_inference

    reads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: reads.append(a[0]) or real_load(*a, **k))
    p = Predictor.from_checkpoint(trained_mini_checkpoint, device="cpu")
    assert len(reads) == 1, reads
    monkeypatch.setattr(torch, "load", real_load)
    loaded = load_for_inference(str(trained_mini_checkpoint))
    reference = DefaultPredictor(loaded.cfg).model.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in p.model.state_dict().items())
    stored = loaded.thresholds.get("score_thresholds") or {}
    if stored:
        assert {n: p.class_thresholds[n] for n, t in stored.items() if t is not None} == \
            pytest.approx({n: t for n, t in stored.items() if t is not None})
    else:
        assert p.confidence_threshold == 0.5 and "the default" in p.threshold_note
    assert not Predictor.from_checkpoint(trained_mini_checkpoint, device="cpu", confidence_threshold=0.3).class_thresholds


def test_an_image_that_reaches_the_detection_limit_is_named_in_one_warning(trained_mini_checkpoint, images, caplog):
    """Without tiles too: a full pass may have dropped objects from the results and from AP."""
    few = Predictor.from_checkpoint(trained_mini_checkpoint, device="cpu", confidence_threshold=0.0,
                                    opts=["TEST.DETECTIONS_PER_IMAGE", "2"])
    many = Predictor.from_checkpoint(trained_mini_checkpoint, device="cpu", confidence_threshold=0.3)
    with caplog.at_level("WARNING", logger="segkit.inference.predictor"):
        assert len(few(images[0])) == 2
        limited = [r.getMessage() for r in caplog.records]
        caplog.clear()
        assert len(many(images[0])) < many.cfg.TEST.DETECTIONS_PER_IMAGE
        unlimited = [r.getMessage() for r in caplog.records]
    assert len(limited) == 1 and images[0].name in limited[0] and "TEST.DETECTIONS_PER_IMAGE (2" in limited[0]
    assert unlimited == []


def _tta(checkpoint, *opts):
    return Predictor.from_checkpoint(checkpoint, device="cpu", confidence_threshold=0.3,
                                     opts=["TEST.AUG.ENABLED", "True", *opts])


def test_test_time_augmentation_of_one_size_without_flip_is_the_plain_prediction(trained_mini_checkpoint, predictor, base, rgb):
    """GeneralizedRCNNWithTTA gets our prepared input (resized, height/width of the original): one
    pass at the test size maps back onto the plain prediction."""
    single = _tta(trained_mini_checkpoint, "TEST.AUG.MIN_SIZES", f"({predictor.cfg.INPUT.MIN_SIZE_TEST},)",
                  "TEST.AUG.MAX_SIZE", str(predictor.cfg.INPUT.MAX_SIZE_TEST), "TEST.AUG.FLIP", "False")
    assert len(base) > 0
    assert_same(single(rgb, rgb=True), base, score_tol=1e-3, min_iou=0.98)


def test_test_time_augmentation_with_flips_and_sizes_stays_on_the_objects(trained_mini_checkpoint, base, rgb):
    """The config's sizes and flips: each object the plain pass found is found with augmentation,
    at the same place (a flip not undone would put it at the mirrored place)."""
    augmented = _tta(trained_mini_checkpoint)(rgb, rgb=True)
    assert augmented.instances.pred_masks.shape[1:] == rgb.shape[:2]
    sure = augmented.filter(min_score=0.5)
    assert len(sure) > 0
    from detectron2.structures import pairwise_iou

    iou = pairwise_iou(sure.instances.pred_boxes, base.instances.pred_boxes)
    same_class = sure.instances.pred_classes[:, None] == base.instances.pred_classes[None, :]
    assert ((iou > 0.7) & same_class).any(dim=0).all(), iou


def test_test_time_augmentation_is_refused_where_it_cannot_run(trained_mini_checkpoint, unet_checkpoint):
    with pytest.raises(ValueError, match="TEST.AUG.ENABLED .* do not combine"):
        _tta(trained_mini_checkpoint, "TEST.TILE_SIZE", "128")
    with pytest.raises(ValueError, match="TEST.AUG.ENABLED .* do not combine"):
        _tta(trained_mini_checkpoint).with_tiles(128)
    with pytest.raises(ValueError, match="for Mask R-CNN, not UNet"):
        _tta(unet_checkpoint.path)
