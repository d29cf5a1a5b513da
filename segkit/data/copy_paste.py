"""Simple Copy-Paste (Ghiasi et al. 2021, arXiv 2012.07177) around detectron2's DatasetMapper.

With probability ``prob`` a training image gets a random subset of the instances of another
training image pasted on it:

- the source image goes through the same mapper as the target (read from disk, its own random
  resize, flip, crop and photometric changes: the paper's scale jitter), and its crowd/ignore
  regions are dropped there, as DatasetMapper drops them for every image, so they are never pasted;
- it is placed at a random offset inside the target (cropped where it is larger): objects keep the
  scale their own augmentation gave them;
- pasted pixels are copied unchanged (no blending) under the union of the pasted masks;
- target masks lose what the pasted objects cover; an instance left with less than
  ``min_visible`` of its area (a target after pasting, a pasted one after the placement's crop) is
  dropped, and boxes are recomputed from the masks.

Masks of a pasted image are BitMasks whatever INPUT.MASK_FORMAT is (cutting polygons by other
polygons is not what detectron2's PolygonMasks can do); Mask R-CNN's mask head takes both, per
image. Images that get nothing pasted are exactly the wrapped mapper's output.

Randomness comes from numpy's global RNG, like detectron2's augmentations: the resumable training
stream (data/loader.py) seeds it per position, so runs stay reproducible in worker processes.
"""

import numpy as np
import torch
from detectron2.structures import BitMasks, Instances, PolygonMasks

__all__ = ["CopyPasteMapper"]


def _bool_masks(instances, height, width):
    """(N, H, W) bool tensor of ``instances.gt_masks`` (polygons rasterised, bitmasks as they are)."""
    masks = instances.gt_masks
    if isinstance(masks, PolygonMasks):
        masks = BitMasks.from_polygon_masks(masks, height, width)
    return masks.tensor.to(torch.bool)


def _offset(source, target):
    """Random start of the source along one axis: it lies inside the target when smaller, and covers
    it (cropped) when larger."""
    return int(np.random.randint(min(0, target - source), max(0, target - source) + 1))


class CopyPasteMapper:
    """Wraps a training mapper (DatasetMapper or ObjectCropMapper) whose output holds instances
    with masks; ``dataset_dicts`` are the training set's records, where sources are drawn from."""

    def __init__(self, mapper, dataset_dicts, prob=0.5, max_objects=10, min_visible=0.1):
        if not 0 <= prob <= 1:
            raise ValueError(f"INPUT.COPY_PASTE.PROB must be in [0, 1], got {prob}")
        if max_objects < 1:
            raise ValueError(f"INPUT.COPY_PASTE.MAX_OBJECTS must be >= 1, got {max_objects}")
        if not 0 <= min_visible <= 1:
            raise ValueError(f"INPUT.COPY_PASTE.MIN_VISIBLE must be in [0, 1], got {min_visible}")
        self.mapper = mapper
        self.dataset_dicts = dataset_dicts
        self.prob = float(prob)
        self.max_objects = int(max_objects)
        self.min_visible = float(min_visible)

    def __call__(self, dataset_dict):
        out = self.mapper(dataset_dict)
        # prob 0 draws nothing, so the wrapped mapper's output and the RNG stream stay as they were.
        if out is None or self.prob <= 0 or not self.dataset_dicts or np.random.rand() >= self.prob:
            return out
        n = len(self.dataset_dicts)
        index = int(np.random.randint(n))
        if n > 1 and self.dataset_dicts[index].get("file_name") == dataset_dict.get("file_name"):
            index = (index + 1) % n  # another image when there is one
        source = self.mapper(dict(self.dataset_dicts[index]))
        if source is None or "instances" not in source or not len(source["instances"]):
            return out
        return self.paste(out, source)

    def paste(self, target, source):
        """``target`` with a random subset of ``source``'s instances pasted on (both mapper outputs)."""
        image = target["image"]
        height, width = image.shape[1:]
        src_image = source["image"]
        sh, sw = src_image.shape[1:]
        src = source["instances"]
        count = int(np.random.randint(1, min(len(src), self.max_objects) + 1))
        chosen = np.sort(np.random.choice(len(src), count, replace=False))
        dy, dx = _offset(sh, height), _offset(sw, width)

        # The overlap of the placed source and the target, in each one's coordinates.
        ty0, ty1, tx0, tx1 = max(0, dy), min(height, dy + sh), max(0, dx), min(width, dx + sw)
        sy0, sx0 = ty0 - dy, tx0 - dx
        sy1, sx1 = sy0 + (ty1 - ty0), sx0 + (tx1 - tx0)

        src_masks = _bool_masks(src, sh, sw)[torch.as_tensor(chosen)]
        pasted = torch.zeros((len(chosen), height, width), dtype=torch.bool)
        pasted[:, ty0:ty1, tx0:tx1] = src_masks[:, sy0:sy1, sx0:sx1]
        keep_pasted = self._visible(pasted, src_masks)
        pasted = pasted[keep_pasted]
        pasted_classes = src.gt_classes[torch.as_tensor(chosen)][keep_pasted]
        if not len(pasted):
            return target
        cover = pasted.any(dim=0)

        new_image = image.clone()
        window = new_image[:, ty0:ty1, tx0:tx1]
        region = cover[ty0:ty1, tx0:tx1]
        window[:, region] = src_image[:, sy0:sy1, sx0:sx1][:, region].to(image.dtype)

        inst = target.get("instances")
        if inst is not None and len(inst):
            before = _bool_masks(inst, height, width)
            after = before & ~cover
            keep = self._visible(after, before)
            masks = torch.cat([after[keep], pasted])
            classes = torch.cat([inst.gt_classes[keep], pasted_classes])
        else:
            masks, classes = pasted, pasted_classes
        result = Instances((height, width))
        result.gt_masks = BitMasks(masks)
        result.gt_boxes = result.gt_masks.get_bounding_boxes()
        result.gt_classes = classes.to(torch.int64)
        out = dict(target)
        out["image"] = new_image
        out["instances"] = result
        return out

    def _visible(self, now, before):
        """Which instances keep at least ``min_visible`` of their area (and at least one pixel)."""
        area_now = now.flatten(1).sum(1)
        area_before = before.flatten(1).sum(1)
        return (area_now > 0) & (area_now >= self.min_visible * area_before)
