"""Training augmentations from the config, as detectron2 Augmentations inside its DatasetMapper.

Geometry is detectron2's own (ResizeShortestEdge, RandomFlip, and RandomCrop when INPUT.CROP is
enabled): the same Transform moves the image, boxes, polygons and masks, so they stay aligned.
Photometric changes (RandomBrightness/RandomContrast and the albumentations block below) return
Transforms whose coordinate and segmentation methods are the identity.

Randomness: every draw comes from numpy's global RNG, which ``detectron2.utils.env.seed_all_rng``
seeds (default_setup with SEED, and each DataLoader worker). albumentations 2 keeps its own RNG that
global seeds do not touch, so the albumentations block draws a seed from ``np.random`` per image
and hands it to albumentations; a run with a fixed SEED therefore stays reproducible.
"""

import importlib.util
import logging
import random

import numpy as np
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from fvcore.transforms.transform import NoOpTransform, Transform

from segkit.data.copy_paste import CopyPasteMapper

__all__ = [
    "AlbumentationsPhotometric",
    "ObjectCrop",
    "AlbumentationsTransform",
    "build_train_augmentations",
    "build_train_mapper",
]


def _albumentations_compose(jpeg_quality, noise_std, color_jitter, prob):
    import albumentations as A  # imported here: only runs with the block enabled pay for it

    jitter = float(color_jitter)
    return A.Compose(
        [
            A.ImageCompression(compression_type="jpeg", quality_range=tuple(int(q) for q in jpeg_quality), p=prob),
            # std_range is a fraction of the image's maximum value (255 for uint8).
            A.GaussNoise(std_range=tuple(float(s) for s in noise_std), p=prob),
            # Hue moves colours round the wheel, which can change what an object looks like far
            # more than the other three: it gets a quarter of the range.
            A.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=jitter / 4, p=prob),
        ],
        p=1.0,
    )


class AlbumentationsTransform(Transform):
    """Applies an albumentations pipeline to the image only, with a fixed seed.

    Deterministic like every detectron2 Transform: applying it twice to the same image gives the
    same result. Coordinates, boxes, polygons and segmentation masks pass through unchanged.
    """

    def __init__(self, compose, seed: int, rgb_input: bool):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        # One generator shared by the pipeline and its transforms (``set_random_seed`` would give
        # each transform the same seed, so their draws would be correlated).
        self.compose.set_random_state(np.random.default_rng(self.seed), random.Random(self.seed))
        dtype = img.dtype
        image = np.ascontiguousarray(img if self.rgb_input else img[..., ::-1])
        out = self.compose(image=image)["image"]
        if not self.rgb_input:
            out = out[..., ::-1]
        return np.ascontiguousarray(out).astype(dtype, copy=False)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def inverse(self) -> Transform:
        return NoOpTransform()

    def __repr__(self):
        return f"AlbumentationsTransform(seed={self.seed})"


class AlbumentationsPhotometric(T.Augmentation):
    """JPEG compression, Gaussian noise and colour jitter from albumentations, as an Augmentation.

    Each of the three is applied independently with probability ``prob``. ``image_format`` is
    detectron2's INPUT.FORMAT: albumentations expects RGB, so BGR images are flipped around it.
    """

    def __init__(
        self,
        jpeg_quality=(60, 100),
        noise_std=(0.01, 0.05),
        color_jitter=0.2,
        prob=0.5,
        image_format="BGR",
    ):
        super().__init__()
        if len(jpeg_quality) != 2 or len(noise_std) != 2:
            raise ValueError(f"jpeg_quality and noise_std must be (min, max) pairs, got {jpeg_quality} and {noise_std}")
        self._init(locals())
        self._compose = _albumentations_compose(jpeg_quality, noise_std, color_jitter, prob)

    def get_transform(self, image):
        if image.ndim != 3 or image.shape[2] != 3:
            return NoOpTransform()  # colour jitter needs 3 channels; grayscale input is left alone
        seed = int(np.random.randint(0, 2**31 - 1))
        return AlbumentationsTransform(self._compose, seed, rgb_input=self.image_format != "BGR")


class ObjectCrop(T.Augmentation):
    """detectron2's RandomCrop that, with probability ``object_prob``, places the crop to hold an
    instance: one box drawn at random, the window drawn uniformly among those that contain the
    box (or, for a box larger than the crop, its centre). Otherwise the crop is RandomCrop's.

    The boxes come from the image's annotations (``AugInput.boxes``, XYXY pixels, set by
    :class:`BoxesToAugmentations`): detectron2's DatasetMapper gives its augmentations the image
    and the semantic map only, so RandomCrop_CategoryAreaConstraint cannot serve instances."""

    def __init__(self, crop_type, crop_size, object_prob=0.5):
        super().__init__()
        self.crop = T.RandomCrop(crop_type, crop_size)
        self._init(locals())

    def get_transform(self, image, boxes=None):
        h, w = image.shape[:2]
        if boxes is None or not len(boxes) or np.random.rand() >= self.object_prob:
            return self.crop.get_transform(image)
        ch, cw = self.crop.get_crop_size((h, w))
        x0, y0, x1, y1 = np.asarray(boxes, dtype=np.float64)[np.random.randint(len(boxes))]
        return T.CropTransform(_start(x0, x1, cw, w), _start(y0, y1, ch, h), cw, ch)


def _start(lo, hi, crop, size):
    """A crop start along one axis, uniform among those holding [lo, hi) (its centre when the
    span is longer than the crop), inside [0, size - crop]."""
    if hi - lo > crop:
        lo = hi = (lo + hi) / 2
    first = max(0, int(np.ceil(hi)) - crop)
    last = min(size - crop, int(np.floor(lo)))
    if first > last:  # the box lies partly outside the image
        first, last = min(first, size - crop), min(first, size - crop)
    return int(np.random.randint(first, last + 1))


class BoxesToAugmentations(T.AugmentationList):
    """An AugmentationList that hands the current image's instance boxes to its augmentations
    (as ``AugInput.boxes``); the mapper sets ``boxes`` before each image."""

    boxes = None

    def __call__(self, aug_input):
        aug_input.boxes = self.boxes
        return super().__call__(aug_input)


class ObjectCropMapper(DatasetMapper):
    """DatasetMapper whose augmentations see the image's boxes (for :class:`ObjectCrop`)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.augmentations = BoxesToAugmentations(self.augmentations.augs)

    def __call__(self, dataset_dict):
        from detectron2.structures import BoxMode

        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                 for a in dataset_dict.get("annotations", []) if not a.get("iscrowd", 0)]
        self.augmentations.boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)
        return super().__call__(dataset_dict)


def _intensity_range(value, key):
    value = tuple(value)
    if not value:
        return None
    if len(value) != 2 or value[0] > value[1]:
        raise ValueError(f"{key} must be () to turn it off or (min, max) with min <= max, got {value}")
    return float(value[0]), float(value[1])


def build_train_augmentations(cfg):
    """The training augmentations the config asks for, in the order they are applied.

    RandomCrop (INPUT.CROP, when enabled), ResizeShortestEdge (INPUT.MIN_SIZE_TRAIN /
    MAX_SIZE_TRAIN / MIN_SIZE_TRAIN_SAMPLING) and RandomFlip (INPUT.RANDOM_FLIP) are what
    detectron2's DatasetMapper builds itself; then RandomBrightness (INPUT.AUG.BRIGHTNESS),
    RandomContrast (INPUT.AUG.CONTRAST) and, with INPUT.AUG.ALBUMENTATIONS.ENABLED, the
    albumentations photometric block, all on the resized image.
    """
    augs = utils.build_augmentation(cfg, is_train=True)
    if cfg.INPUT.CROP.ENABLED:
        if cfg.MODEL.MASK_ON and importlib.util.find_spec("shapely") is None:
            # fvcore's CropTransform.apply_polygons imports shapely: without it the first
            # cropped polygon would fail inside a DataLoader worker, mid-training.
            raise RuntimeError(
                "INPUT.CROP.ENABLED with MODEL.MASK_ON needs the shapely package to crop polygon "
                "masks: install it (pip install shapely) or set INPUT.CROP.ENABLED False."
            )
        if cfg.INPUT.CROP.OBJECT_PROB > 0:
            augs.insert(0, ObjectCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE, cfg.INPUT.CROP.OBJECT_PROB))
        else:
            augs.insert(0, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    brightness = _intensity_range(cfg.INPUT.AUG.BRIGHTNESS, "INPUT.AUG.BRIGHTNESS")
    if brightness:
        augs.append(T.RandomBrightness(*brightness))
    contrast = _intensity_range(cfg.INPUT.AUG.CONTRAST, "INPUT.AUG.CONTRAST")
    if contrast:
        augs.append(T.RandomContrast(*contrast))
    alb = cfg.INPUT.AUG.ALBUMENTATIONS
    if alb.ENABLED:
        augs.append(
            AlbumentationsPhotometric(
                jpeg_quality=tuple(alb.JPEG_QUALITY),
                noise_std=tuple(alb.NOISE_STD),
                color_jitter=alb.COLOR_JITTER,
                prob=alb.PROB,
                image_format=cfg.INPUT.FORMAT,
            )
        )
    return augs


def build_train_mapper(cfg, dataset_dicts=None):
    """detectron2's DatasetMapper for training, with our augmentation list.

    Everything else (image format, mask format, keypoints, box recomputation after cropping)
    comes from ``DatasetMapper.from_config``. With INPUT.COPY_PASTE.PROB > 0 it is wrapped in
    :class:`~segkit.data.copy_paste.CopyPasteMapper`, which draws its sources from
    ``dataset_dicts`` (the training set's records).
    """
    kwargs = DatasetMapper.from_config(cfg, is_train=True)
    kwargs["augmentations"] = build_train_augmentations(cfg)
    if any(isinstance(a, ObjectCrop) for a in kwargs["augmentations"]):
        mapper = ObjectCropMapper(**kwargs)
    else:
        mapper = DatasetMapper(**kwargs)
    paste = cfg.INPUT.COPY_PASTE
    if paste.PROB <= 0:
        return mapper
    if not cfg.MODEL.MASK_ON or cfg.MODEL.KEYPOINT_ON:
        raise ValueError("INPUT.COPY_PASTE.PROB > 0 pastes instance masks: it needs MODEL.MASK_ON True and "
                         "MODEL.KEYPOINT_ON False; set INPUT.COPY_PASTE.PROB 0.")
    if dataset_dicts is None:
        raise ValueError("INPUT.COPY_PASTE.PROB > 0: build_train_mapper needs the training set's dataset_dicts")
    logging.getLogger(__name__).info(
        f"Copy-paste: {paste.PROB:.0%} of training images get up to {paste.MAX_OBJECTS} objects of another of the "
        f"{len(dataset_dicts)} training images pasted on (INPUT.COPY_PASTE).")
    return CopyPasteMapper(mapper, dataset_dicts, paste.PROB, paste.MAX_OBJECTS, paste.MIN_VISIBLE)
