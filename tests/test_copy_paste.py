"""Copy-paste (INPUT.COPY_PASTE, segkit/data/copy_paste.py) on generated images with known masks.

Each image is noise (so that every pixel tells where it came from) with rectangles and polygons of
known masks. The tests follow single pastes with their randomness fixed, and check pixels, masks
and boxes against what the known masks say they must be.
"""

import copy

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetMapper
from detectron2.structures import BitMasks, BoxMode, PolygonMasks

from segkit.data.augmentation import build_train_mapper
from segkit.data.copy_paste import CopyPasteMapper
from segkit.modeling.config import get_segkit_cfg

H, W = 96, 128


def _record(folder, name, seed, objects, crowd=()):
    """An image of noise on disk and its dataset dict; ``objects``: [(class, polygon [(x, y), ...])]."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    path = folder / f"{name}.png"
    cv2.imwrite(str(path), image)
    annotations = []
    for class_id, poly in list(objects) + list(crowd):
        mask = _fill(poly)
        ys, xs = np.nonzero(mask)
        annotations.append({
            "bbox": [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())],
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": class_id,
            "iscrowd": 0,
            "segmentation": [[float(v) for xy in poly for v in xy]],
        })
    for anno in annotations[len(objects):]:  # crowd regions as the converter writes them: RLE
        anno["iscrowd"] = 1
        anno["segmentation"] = mask_util.encode(np.asfortranarray(_fill_from(anno).astype(np.uint8)))
    return {"file_name": str(path), "height": H, "width": W, "image_id": seed, "annotations": annotations}, image


def _fill(poly):
    """The mask detectron2 rasterises for a polygon (pycocotools, as PolygonMasks does)."""
    flat = [float(v) for xy in poly for v in xy]
    rle = mask_util.merge(mask_util.frPyObjects([flat], H, W))
    return mask_util.decode(rle).astype(bool)


def _fill_from(anno):
    """The annotation's mask: its polygon filled, or its RLE decoded."""
    if isinstance(anno["segmentation"], dict):
        return mask_util.decode(anno["segmentation"]).astype(bool)
    return _fill(np.array(anno["segmentation"][0]).reshape(-1, 2).tolist())


def _rect(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _base(mask_format):
    # No augmentation: every image keeps its size and pixels, so the tests know where things go.
    return DatasetMapper(is_train=True, augmentations=[], image_format="BGR", use_instance_mask=True,
                         instance_mask_format=mask_format, recompute_boxes=False)


def _masks(instances, h=H, w=W):
    m = instances.gt_masks
    if isinstance(m, PolygonMasks):
        m = BitMasks.from_polygon_masks(m, h, w)
    return m.tensor.numpy().astype(bool)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("copy_paste")
    # target: class 0 rectangle on the left, class 1 triangle on the right, class 2 small square
    target, target_px = _record(folder, "target", 1, [
        (0, _rect(10, 10, 50, 60)), (1, [(70, 10), (120, 20), (90, 70)]), (2, _rect(100, 75, 110, 85))])
    # source: one object per class; its class-1 rectangle covers the target's small square whole,
    # its class-2 rectangle part of the target's class-0 rectangle, and a crowd region (class 1) on the far left that must never be pasted.
    source, source_px = _record(folder, "source", 2, [
        (2, _rect(30, 30, 80, 50)), (0, [(5, 70), (40, 65), (30, 90)]), (1, _rect(95, 70, 120, 90))],
        crowd=[(1, _rect(0, 0, 8, 40))])
    return {"target": (target, target_px), "source": (source, source_px)}


def _paste_all(images, mask_format, min_visible=0.1):
    """The target with every instance of the source pasted at offset (0, 0) (same sizes)."""
    target, _ = images["target"]
    source, _ = images["source"]
    mapper = CopyPasteMapper(_base(mask_format), [target, source], prob=1.0, max_objects=10,
                             min_visible=min_visible)
    for seed in range(200):  # the seed that pastes all three (the count is drawn 1..3)
        np.random.seed(seed)
        out = mapper(copy.deepcopy(target))
        if len(out["instances"]) and (out["image"] != _base(mask_format)(copy.deepcopy(target))["image"]).any():
            src_out = _base(mask_format)(copy.deepcopy(source))
            pasted = _masks(src_out["instances"])
            n_target = len(out["instances"]) - len(pasted)
            if n_target >= 0 and np.array_equal(_masks(out["instances"])[n_target:], pasted):
                return out, src_out, n_target
    pytest.fail("no seed pasted every source instance")


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_pasted_pixels_are_the_source_pixels_and_occluded_masks_lose_the_overlap(images, mask_format):
    out, src_out, n_target = _paste_all(images, mask_format)
    target, target_px = images["target"]
    _, source_px = images["source"]
    image = out["image"].permute(1, 2, 0).numpy()
    pasted = _masks(src_out["instances"])
    cover = pasted.any(axis=0)
    # pasted objects: exactly the source image's pixels under their masks; elsewhere the target's
    assert np.array_equal(image[cover], source_px[cover])
    assert np.array_equal(image[~cover], target_px[~cover])
    # the crowd region of the source was not pasted
    crowd = _fill_from(images["source"][0]["annotations"][3])
    assert np.array_equal(image[crowd & ~cover], target_px[crowd & ~cover])
    assert not (crowd & cover).any()

    # target instances: each shrinks by exactly its overlap with the pasted objects; the small square
    # (class 2, under the source's class-2 rectangle) is fully covered and dropped
    originals = [_fill_from(a) for a in target["annotations"]]
    overlap = [int((m & cover).sum()) for m in originals]
    assert overlap[0] > 0 and overlap[2] == originals[2].sum(), overlap  # the fixture does what it says
    kept = _masks(out["instances"])[:n_target]
    classes = out["instances"].gt_classes.tolist()
    assert classes[:n_target] == [0, 1]
    for got, original in zip(kept, originals[:2]):
        assert got.sum() == original.sum() - (original & cover).sum()
        assert np.array_equal(got, original & ~cover)
    assert classes[n_target:] == src_out["instances"].gt_classes.tolist()


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_boxes_are_the_masks_boxes(images, mask_format):
    out, _, _ = _paste_all(images, mask_format)
    masks = _masks(out["instances"])
    for box, mask in zip(out["instances"].gt_boxes.tensor.numpy(), masks):
        ys, xs = np.nonzero(mask)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_nearly_covered_instance_dropped_by_threshold(images):
    # The target's class-0 rectangle loses part of itself to the source's class-2 rectangle: kept at
    # threshold 0, dropped at a threshold just above the fraction it keeps visible.
    target = images["target"][0]
    original = _fill_from(target["annotations"][0])
    out, src_out, n_target = _paste_all(images, "bitmask", min_visible=0.0)
    cover = _masks(src_out["instances"]).any(axis=0)
    left = (original & ~cover).sum() / original.sum()
    assert 0 < left < 1
    out, _, n_target_high = _paste_all(images, "bitmask", min_visible=left + 0.01)
    assert 0 not in out["instances"].gt_classes.tolist()[:n_target_high]
    assert n_target_high == n_target - 1


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_prob_zero_is_detectron2s_mapper_bit_for_bit(images, mask_format, tmp_path):
    cfg = get_segkit_cfg()
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.MASK_FORMAT = mask_format
    cfg.INPUT.MIN_SIZE_TRAIN = (64, 96, 128)
    cfg.INPUT.MAX_SIZE_TRAIN = 200
    cfg.INPUT.AUG.BRIGHTNESS = ()  # our photometric additions off: the lists are detectron2's own
    cfg.INPUT.AUG.CONTRAST = ()
    dicts = [images["target"][0], images["source"][0]]
    ours = CopyPasteMapper(build_train_mapper(cfg, dicts), dicts, prob=0.0)
    theirs = DatasetMapper(cfg, is_train=True)
    for seed in range(5):
        for d in dicts:
            np.random.seed(seed)
            a = ours(copy.deepcopy(d))
            next_a = np.random.randint(2**31)
            np.random.seed(seed)
            b = theirs(copy.deepcopy(d))
            assert next_a == np.random.randint(2**31)  # no extra draw either
            assert torch.equal(a["image"], b["image"])
            assert torch.equal(a["instances"].gt_boxes.tensor, b["instances"].gt_boxes.tensor)
            assert torch.equal(a["instances"].gt_classes, b["instances"].gt_classes)
            assert np.array_equal(_masks(a["instances"], *a["image"].shape[1:]),
                                  _masks(b["instances"], *b["image"].shape[1:]))
    cfg.INPUT.COPY_PASTE.PROB = 0.0
    assert type(build_train_mapper(cfg, dicts)) is DatasetMapper


@pytest.mark.parametrize("crop", [False, True])
def test_config_builds_it_with_augmentation_and_object_crop(images, crop):
    """From the config, with random resize (sources of other sizes placed at random offsets) and
    with ObjectCrop: every output has non-empty masks inside the image with their boxes."""
    cfg = get_segkit_cfg()
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.MIN_SIZE_TRAIN = (64, 96, 160)
    cfg.INPUT.MAX_SIZE_TRAIN = 260
    if crop:
        pytest.importorskip("shapely")
        cfg.INPUT.CROP.ENABLED = True
        cfg.INPUT.CROP.TYPE = "absolute"
        cfg.INPUT.CROP.SIZE = [80, 80]
        cfg.INPUT.CROP.OBJECT_PROB = 0.5
    cfg.INPUT.COPY_PASTE.PROB = 1.0
    dicts = [images["target"][0], images["source"][0]]
    with pytest.raises(ValueError, match="dataset_dicts"):
        build_train_mapper(cfg)
    mapper = build_train_mapper(cfg, dicts)
    assert isinstance(mapper, CopyPasteMapper)
    changed = 0
    for seed in range(30):
        np.random.seed(seed)
        out = mapper(copy.deepcopy(dicts[0]))
        np.random.seed(seed)
        plain = mapper.mapper(copy.deepcopy(dicts[0]))
        if torch.equal(out["image"], plain["image"]):
            continue  # nothing pasted (nothing left of the source after its crop): the mapper's own output
        changed += 1
        inst = out["instances"]
        h, w = out["image"].shape[1:]
        masks = _masks(inst, h, w)
        assert masks.any(axis=(1, 2)).all()
        for box, mask in zip(inst.gt_boxes.tensor.numpy(), masks):
            ys, xs = np.nonzero(mask)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert changed >= 15, changed  # prob 1: most draws paste something visible
    cfg.MODEL.MASK_ON = False
    with pytest.raises(ValueError, match="MASK_ON"):
        build_train_mapper(cfg, dicts)


@pytest.mark.slow
def test_trains_with_copy_paste_in_worker_processes(sample_data, tmp_path):
    """A short real training with every image pasted on, its data mapped in a worker process: it
    runs, says copy-paste is on, and the loss falls. (From scratch the loss first rises for some 60
    iterations, as proposals find objects and the box and mask losses join in: 140 are needed.)"""
    import json

    from conftest import ROOT, TINY_OVERRIDES, run_train_net

    proc = run_train_net(
        "--config-file", ROOT / "configs/mask_rcnn_R_18_FPN_mini.yaml",
        "DATASETS.DATA_DIR", sample_data, "OUTPUT_DIR", tmp_path,
        "DATASETS.TRAIN", "('mydata_trainval',)", "DATASETS.TEST", "()",
        "SOLVER.MAX_ITER", "140", "SOLVER.STEPS", "(9999,)", "SOLVER.WARMUP_ITERS", "20",
        "SOLVER.CHECKPOINT_PERIOD", "1000", "TEST.EVAL_PERIOD", "0", "INPUT.AUG.PREVIEW_BATCHES", "0",
        "INPUT.COPY_PASTE.PROB", "1.0", "SEED", "0", *TINY_OVERRIDES, "DATALOADER.NUM_WORKERS", "1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Copy-paste: 100% of training images" in (tmp_path / "log.txt").read_text()
    rows = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    losses = [r["total_loss"] for r in rows if "total_loss" in r]
    # below where it started, and well below its peak (from scratch it first rises, see above)
    assert len(losses) >= 3 and losses[-1] < losses[0] and losses[-1] < 0.85 * max(losses), losses
