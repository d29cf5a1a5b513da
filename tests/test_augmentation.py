"""Masks must follow the objects through every training augmentation.

A synthetic image holds two objects of unique colours (a red pentagon, class 0, and a green
quadrilateral, class 1) on a grey background. After each augmentation, the object is found again
in the *augmented image* by its colour and compared with the augmented ground-truth mask of its
instance: geometric transforms must move both the same way (IoU >= 0.9), photometric ones must
leave boxes and masks exactly as they were.
"""

import importlib.util

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, BoxMode, PolygonMasks
from detectron2.utils.env import seed_all_rng

from segkit.data.augmentation import (
    AlbumentationsPhotometric,
    AlbumentationsTransform,
    build_train_augmentations,
    build_train_mapper,
)
from segkit.modeling.config import get_segkit_cfg

H, W = 120, 160
BACKGROUND = (60, 60, 60)  # BGR
# class id -> (polygon in x, y pixels, BGR colour)
OBJECTS = {
    0: ([(20, 20), (75, 15), (85, 55), (55, 85), (15, 65)], (30, 30, 230)),  # red
    1: ([(95, 40), (150, 30), (145, 105), (100, 95)], (30, 230, 30)),  # green
}
GEOMETRIC = (T.ResizeShortestEdge, T.RandomFlip, T.RandomCrop)
PHOTOMETRIC = (T.RandomBrightness, T.RandomContrast, AlbumentationsPhotometric)
MIN_IOU = 0.9
HAVE_SHAPELY = importlib.util.find_spec("shapely") is not None


def _locate(image_bgr, class_id):
    """Pixels of the object's unique colour: its channel clearly above the other two.

    The cut is half-way up the colour's contrast in this image, so edges blurred by resizing or
    JPEG chroma subsampling split at their middle, whatever brightness or saturation did.
    """
    img = image_bgr.astype(np.int32)
    channel = 2 if class_id == 0 else 1
    others = [c for c in range(3) if c != channel]
    excess = img[..., channel] - img[..., others].max(axis=-1)
    return excess > max(40.0, 0.5 * np.percentile(excess, 99.5))


def _iou(a, b):
    union = np.logical_or(a, b).sum()
    return np.logical_and(a, b).sum() / union if union else 1.0


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """An image on disk plus its detectron2 dataset dict (polygons, and the same masks as RLE)."""
    folder = tmp_path_factory.mktemp("aug")
    image = np.full((H, W, 3), BACKGROUND, np.uint8)
    annotations, rle_annotations = [], []
    for class_id, (poly, colour) in OBJECTS.items():
        pts = np.array(poly, np.int32)
        cv2.fillPoly(image, [pts], colour)
        x0, y0 = pts.min(axis=0)
        x1, y1 = pts.max(axis=0)
        mask = np.zeros((H, W), np.uint8)
        cv2.fillPoly(mask, [pts], 1)
        anno = {
            # cv2 fills the pixels x0..x1 inclusive: the box's far edge is x1 + 1.
            "bbox": [float(x0), float(y0), float(x1 + 1 - x0), float(y1 + 1 - y0)],
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": class_id,
            "iscrowd": 0,
        }
        annotations.append({**anno, "segmentation": [[float(v) for xy in poly for v in xy]]})
        rle_annotations.append({**anno, "segmentation": mask_util.encode(np.asfortranarray(mask))})
    path = folder / "objects.png"
    cv2.imwrite(str(path), image)
    record = {"file_name": str(path), "height": H, "width": W, "image_id": 1}
    return {"polygon": {**record, "annotations": annotations}, "rle": {**record, "annotations": rle_annotations}}


def _cfg(**albumentations):
    cfg = get_segkit_cfg()
    cfg.MODEL.MASK_ON = True
    # Down- and up-scaling from the 120 px short edge, and aspect changes through MAX_SIZE.
    cfg.INPUT.MIN_SIZE_TRAIN = (96, 160, 256)
    cfg.INPUT.MAX_SIZE_TRAIN = 300
    cfg.INPUT.AUG.BRIGHTNESS = (0.7, 1.3)
    cfg.INPUT.AUG.CONTRAST = (0.7, 1.3)
    cfg.INPUT.AUG.ALBUMENTATIONS.ENABLED = True
    cfg.INPUT.AUG.ALBUMENTATIONS.PROB = 1.0
    for key, value in albumentations.items():
        cfg.INPUT.AUG.ALBUMENTATIONS[key] = value
    return cfg


def _mapper(augmentations, mask_format):
    return DatasetMapper(
        is_train=True,
        augmentations=augmentations,
        image_format="BGR",
        use_instance_mask=True,
        instance_mask_format=mask_format,
    )


def _masks(out):
    inst = out["instances"]
    h, w = out["image"].shape[1:]
    masks = inst.gt_masks
    if isinstance(masks, PolygonMasks):
        masks = BitMasks.from_polygon_masks(masks, h, w)
    return {int(c): m.numpy() for c, m in zip(inst.gt_classes, masks.tensor)}


def _check_masks_cover_objects(out, what):
    image = out["image"].permute(1, 2, 0).numpy()
    masks = _masks(out)
    assert masks, f"{what}: every instance was dropped"
    for class_id, mask in masks.items():
        found = _locate(image, class_id)
        if mask.sum() < 150 and found.sum() < 150:
            continue  # a sliver left at a crop border: too few pixels for an IoU to mean anything
        iou = _iou(mask, found)
        assert iou >= MIN_IOU, f"{what}: class {class_id} mask IoU {iou:.3f} with the object in the image"
        box = out["instances"].gt_boxes.tensor[list(masks).index(class_id)].numpy()
        ys, xs = np.nonzero(mask)
        assert box[0] <= xs.min() + 1 and box[1] <= ys.min() + 1, f"{what}: box does not contain the mask"
        assert box[2] >= xs.max() and box[3] >= ys.max(), f"{what}: box does not contain the mask"


FORMATS = [("polygon", "polygon"), ("polygon", "bitmask"), ("rle", "bitmask")]


@pytest.mark.parametrize("segm,mask_format", FORMATS)
def test_identity_baseline(sample, segm, mask_format):
    """Without augmentation the colour finder and the annotation agree: the test can see misalignment."""
    _check_masks_cover_objects(_mapper([], mask_format)(sample[segm]), "no augmentation")


@pytest.mark.parametrize("segm,mask_format", FORMATS)
def test_every_augmentation_keeps_masks_on_objects(sample, segm, mask_format):
    cfg = _cfg()
    augs = build_train_augmentations(cfg)
    assert [type(a) for a in augs] == [
        T.ResizeShortestEdge,
        T.RandomFlip,
        T.RandomBrightness,
        T.RandomContrast,
        AlbumentationsPhotometric,
    ]
    augs += [
        T.RandomFlip(prob=1.0, horizontal=True, vertical=False),
        T.RandomFlip(prob=1.0, horizontal=False, vertical=True),
    ]
    if segm == "rle" or HAVE_SHAPELY:  # fvcore crops polygons with shapely
        augs.append(T.RandomCrop("relative_range", (0.6, 0.6)))
    reference = _masks(_mapper([], mask_format)(sample[segm]))
    reference_boxes = _mapper([], mask_format)(sample[segm])["instances"].gt_boxes.tensor
    seed_all_rng(0)
    for aug in augs:
        mapper = _mapper([aug], mask_format)
        for draw in range(12):
            out = mapper(sample[segm])
            what = f"{aug} draw {draw}"
            _check_masks_cover_objects(out, what)
            if isinstance(aug, PHOTOMETRIC):
                assert tuple(out["image"].shape[1:]) == (H, W), what
                masks = _masks(out)
                assert masks.keys() == reference.keys(), what
                for class_id, mask in masks.items():
                    assert np.array_equal(mask, reference[class_id]), f"{what}: photometric moved a mask"
                assert torch.equal(out["instances"].gt_boxes.tensor, reference_boxes), what
            else:
                assert isinstance(aug, GEOMETRIC), f"classify {aug} as geometric or photometric"


@pytest.mark.parametrize("segm,mask_format", FORMATS)
def test_full_pipeline_many_draws(sample, segm, mask_format):
    cfg = _cfg(PROB=0.7)
    cfg.INPUT.RANDOM_FLIP = "horizontal"
    cfg.INPUT.MASK_FORMAT = mask_format
    mapper = build_train_mapper(cfg)
    assert isinstance(mapper, DatasetMapper)
    seed_all_rng(1)
    sizes, flipped = set(), 0
    for draw in range(40):
        out = mapper(sample[segm])
        _check_masks_cover_objects(out, f"full pipeline draw {draw}")
        sizes.add(tuple(out["image"].shape[1:]))
        red_x = np.nonzero(_locate(out["image"].permute(1, 2, 0).numpy(), 0))[1].mean()
        flipped += red_x > out["image"].shape[2] / 2
    assert len(sizes) == 3, f"multi-scale resize drew only {sizes}"
    assert 0 < flipped < 40, "RandomFlip never or always flipped"


def test_crop_from_config(sample):
    cfg = _cfg()
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "relative_range"
    cfg.INPUT.CROP.SIZE = [0.7, 0.7]
    if not HAVE_SHAPELY:
        # Said when the mapper is built, not by a DataLoader worker at the first cropped polygon.
        with pytest.raises(RuntimeError, match="shapely"):
            build_train_mapper(cfg)
        cfg.MODEL.MASK_ON = False
        assert isinstance(build_train_augmentations(cfg)[0], T.RandomCrop)
        return
    assert isinstance(build_train_augmentations(cfg)[0], T.RandomCrop)
    mapper = build_train_mapper(cfg)
    assert mapper.recompute_boxes  # DatasetMapper.from_config's choice for crops with masks is kept
    seed_all_rng(2)
    for draw in range(15):
        _check_masks_cover_objects(mapper(sample["polygon"]), f"crop pipeline draw {draw}")


def test_photometric_transform_is_identity_on_geometry(sample):
    image = cv2.imread(sample["polygon"]["file_name"])
    aug = AlbumentationsPhotometric(jpeg_quality=(20, 40), noise_std=(0.05, 0.1), color_jitter=0.3, prob=1.0)
    np.random.seed(3)
    tfm = aug.get_transform(image)
    assert isinstance(tfm, AlbumentationsTransform)
    out = tfm.apply_image(image)
    assert out.shape == image.shape and out.dtype == image.dtype
    assert np.abs(out.astype(int) - image).mean() > 1, "the photometric block did nothing"
    assert np.array_equal(tfm.apply_image(image), out), "a Transform must be deterministic"
    coords = np.array([[1.5, 2.5], [100.0, 50.0]])
    assert np.array_equal(tfm.apply_coords(coords.copy()), coords)
    boxes = np.array([[10.0, 20.0, 30.0, 40.0]])
    assert np.array_equal(tfm.apply_box(boxes.copy()), boxes)
    seg = (image[..., 2] > 200).astype(np.uint8)
    assert np.array_equal(tfm.apply_segmentation(seg.copy()), seg)
    # prob 0: nothing is applied, whatever the draw.
    off = AlbumentationsPhotometric(prob=0.0).get_transform(image)
    assert np.array_equal(off.apply_image(image), image)


def test_same_seed_same_output(sample):
    mapper = build_train_mapper(_cfg(PROB=0.5))

    def run(seed):
        seed_all_rng(seed)
        return [mapper(sample["polygon"]) for _ in range(6)]

    first, again, other = run(5), run(5), run(6)
    for a, b in zip(first, again):
        assert torch.equal(a["image"], b["image"])
        assert torch.equal(a["instances"].gt_boxes.tensor, b["instances"].gt_boxes.tensor)
        assert all(np.array_equal(x, y) for x, y in zip(_masks(a).values(), _masks(b).values()))
    assert any(
        a["image"].shape != c["image"].shape or not torch.equal(a["image"], c["image"]) for a, c in zip(first, other)
    )
    # The albumentations block alone must also follow numpy's seed (it has its own RNG otherwise).
    image = cv2.imread(sample["polygon"]["file_name"])
    aug = AlbumentationsPhotometric(prob=1.0)
    outputs = []
    for seed in (9, 9, 10):
        np.random.seed(seed)
        outputs.append(aug.get_transform(image).apply_image(image))
    assert np.array_equal(outputs[0], outputs[1])
    assert not np.array_equal(outputs[0], outputs[2])


def test_config_switches():
    cfg = _cfg()
    cfg.INPUT.AUG.BRIGHTNESS = ()
    cfg.INPUT.AUG.CONTRAST = ()
    cfg.INPUT.AUG.ALBUMENTATIONS.ENABLED = False
    cfg.INPUT.RANDOM_FLIP = "none"
    assert [type(a) for a in build_train_augmentations(cfg)] == [T.ResizeShortestEdge]
    defaults = build_train_augmentations(get_segkit_cfg())
    assert not any(isinstance(a, AlbumentationsPhotometric) for a in defaults)  # off by default
    resize = defaults[0]
    assert resize.short_edge_length == get_segkit_cfg().INPUT.MIN_SIZE_TRAIN
    cfg.INPUT.AUG.BRIGHTNESS = (1.2,)
    with pytest.raises(ValueError, match="INPUT.AUG.BRIGHTNESS"):
        build_train_augmentations(cfg)


@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    """The two objects (80 x 90 px together) in one corner of a 1600 x 1200 image: a 128 px crop
    drawn uniformly holds any of them about 1 time in 40."""
    folder = tmp_path_factory.mktemp("sparse")
    big_h, big_w, ox, oy = 1200, 1600, 1400, 1050
    image = np.full((big_h, big_w, 3), BACKGROUND, np.uint8)
    annotations = []
    for class_id, (poly, colour) in OBJECTS.items():
        pts = np.array(poly, np.int32) + (ox, oy)
        cv2.fillPoly(image, [pts], colour)
        x0, y0 = pts.min(axis=0)
        x1, y1 = pts.max(axis=0)
        annotations.append({"bbox": [float(x0), float(y0), float(x1 + 1 - x0), float(y1 + 1 - y0)],
                            "bbox_mode": BoxMode.XYWH_ABS, "category_id": class_id, "iscrowd": 0,
                            "segmentation": [[float(v) for xy in pts.tolist() for v in xy]]})
    path = folder / "sparse.png"
    cv2.imwrite(str(path), image)
    return {"file_name": str(path), "height": big_h, "width": big_w, "image_id": 1, "annotations": annotations}


@pytest.mark.skipif(not HAVE_SHAPELY, reason="cropping polygon masks needs shapely")
@pytest.mark.parametrize("object_prob", [0.0, 0.5, 1.0])
def test_object_crop_holds_an_instance_as_often_as_asked(sparse, object_prob):
    cfg = _cfg()
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = [128, 128]
    cfg.INPUT.CROP.OBJECT_PROB = object_prob
    cfg.INPUT.MIN_SIZE_TRAIN = (128,)
    cfg.INPUT.MAX_SIZE_TRAIN = 128
    mapper = build_train_mapper(cfg)
    seed_all_rng(0)
    draws, held = 200, 0
    for draw in range(draws):
        out = mapper(sparse)
        assert tuple(out["image"].shape[1:]) == (128, 128)
        held += len(out["instances"]) > 0
    # uniform crops: 2.6% expected; object crops add object_prob (each holds its box whole)
    expected = object_prob + (1 - object_prob) * 0.026
    assert abs(held / draws - expected) < 0.08, (held, draws, expected)
