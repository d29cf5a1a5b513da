"""Sliced inference: a large image cut into overlapping tiles, run through Mask R-CNN at native
resolution, and the detections merged back into one image's instances.

Why: a model sees an image at its test size (``INPUT.MIN_SIZE_TEST``); a 4,000 px strip shown at
320 px turns a 60 px object into 5 px. Tiles keep objects at their pixel size, as crops do in
training (``INPUT.CROP``, see docs/training.md).

- :func:`tile_windows` - where the tiles go: ``size`` x ``size`` windows, neighbours sharing
  ``overlap`` of a tile, the last row and column flush with the far edges (every tile full size
  when the image is at least one tile).
- :class:`TiledModel` - wraps a detectron2 GeneralizedRCNN; ``TiledModel(model, ...)(inputs)``
  takes and returns what the model does (``[{"image", "height", "width"}]`` ->
  ``[{"instances"}]``), so detectron2's ``inference_on_dataset`` evaluates it as it is. Tiles go
  to the model in batches, unresized; each detection's mask is pasted (detectron2's
  ``_do_paste_mask``, as ``paste_masks_in_image`` does) into its own box only, never into the
  image. Optionally one whole-image pass at the test size adds objects larger than a tile. The
  model's TEST.DETECTIONS_PER_IMAGE limits each tile; TEST.TILE_DETECTIONS_PER_IMAGE the merged
  image; an image that reaches either is named in one warning line.
- :func:`merge_detections` - duplicates at seams become one instance: detections of one class
  from different tiles whose masks, where both tiles looked, overlap by at least ``min_ios`` of
  the smaller mask (intersection over smaller, as SAHI's GREEDYNMM + IOS) are linked, and each
  connected set of links is one instance, masks OR-ed. An object cut by any number of tile edges
  so comes out whole, whatever order its pieces' scores are in: each piece agrees with its
  neighbours in the overlap bands. Only detections whose crops overlap are compared.
- :class:`CroppedMasks` - the ``pred_masks`` of the result: each mask as its box-sized crop, so
  memory grows with the objects, not with the image (100 full masks of a 12,000 x 4,000 image
  are 4.8 GB). It answers ``masks[i]`` (one full HxW mask, made on demand), ``rle(i)`` (the COCO
  RLE, without a full mask), ``areas()``, ``paint()`` and Instances' indexing.

SAHI itself is not used: every release requires ``opencv-python``, which breaks beside our
``opencv-python-headless`` (both install ``cv2``), and 0.11.36+ requires torch >= 2.4.1, which
our detectron2 build does not load with.
"""

import logging
import math
from typing import List, NamedTuple

import cv2
import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.layers.mask_ops import _do_paste_mask
from detectron2.structures import Boxes, Instances

logger = logging.getLogger(__name__)


def tile_windows(height, width, size, overlap=0.2):
    """[(x0, y0, x1, y1)] tiles covering a ``height`` x ``width`` image. Neighbours share
    ``overlap`` (a fraction of ``size``, 0 <= overlap < 1); an image side shorter than ``size``
    gets one tile as long as that side."""
    size = int(size)
    if size <= 0:
        raise ValueError(f"tile size must be positive, got {size}")
    if not 0 <= overlap < 1:
        raise ValueError(f"tile overlap must be in [0, 1), got {overlap}")
    stride = max(1, int(round(size * (1 - overlap))))

    def starts(n):
        if n <= size:
            return [0]
        count = math.ceil((n - size) / stride) + 1
        return sorted({min(i * stride, n - size) for i in range(count)})

    return [(x, y, min(x + size, width), min(y + size, height)) for y in starts(height) for x in starts(width)]


def tile_options(size, overlap=None):
    """``["TEST.TILE_SIZE", size, ...]`` config overrides for ``--tile SIZE [--tile-overlap F]``,
    the values checked."""
    overlap = 0.2 if overlap is None else float(overlap)
    tile_windows(1, 1, size, overlap)
    return ["TEST.TILE_SIZE", str(int(size)), "TEST.TILE_OVERLAP", str(overlap)]


def default_tile_size(cfg):
    """The tile size where none is asked for: TEST.TILE_SIZE when set, else the training crop
    (INPUT.CROP "absolute": the scale the model learnt at), else the test size."""
    if cfg.TEST.TILE_SIZE > 0:
        return int(cfg.TEST.TILE_SIZE)
    if cfg.INPUT.CROP.ENABLED and cfg.INPUT.CROP.TYPE == "absolute":
        return int(max(cfg.INPUT.CROP.SIZE))
    return int(cfg.INPUT.MIN_SIZE_TEST)


class CroppedMasks:
    """N instance masks of an image, each kept as ``(x0, y0, crop)``: a bool array placed with
    its top-left corner at (x0, y0). Behaves, where our code and detectron2's evaluator use
    ``pred_masks``, like a bool [N, H, W] array whose rows are made one at a time."""

    def __init__(self, crops, image_size):
        self.crops = [(int(x), int(y), np.asarray(c, dtype=bool)) for x, y, c in crops]
        self.image_size = (int(image_size[0]), int(image_size[1]))

    def __len__(self):
        return len(self.crops)

    @property
    def shape(self):
        return (len(self), *self.image_size)

    def __getitem__(self, item):
        """An int gives that instance's full HxW bool mask (numpy); anything else Instances
        indexes with (slice, bool or index tensor, list) gives a CroppedMasks."""
        if isinstance(item, (int, np.integer)):
            return self.full(int(item))
        if isinstance(item, slice):
            return CroppedMasks(self.crops[item], self.image_size)
        index = torch.as_tensor(item)
        if index.dtype == torch.bool:
            index = torch.nonzero(index).flatten()
        return CroppedMasks([self.crops[i] for i in index.view(-1).tolist()], self.image_size)

    def __iter__(self):
        for i in range(len(self)):
            yield self.full(i)

    def to(self, *args, **kwargs):
        return self  # numpy crops live on the CPU; Instances.to calls this

    def numpy(self):
        return self  # ``masks = inst.pred_masks.numpy(); masks[i]`` works one mask at a time

    @staticmethod
    def cat(items):
        items = list(items)
        return CroppedMasks([c for m in items for c in m.crops], items[0].image_size)

    def full(self, i):
        h, w = self.image_size
        out = np.zeros((h, w), dtype=bool)
        self.paint(out, i, True)
        return out

    def paint(self, canvas, i, value):
        """``canvas[mask i] = value``, touching only the crop's region."""
        x, y, crop = self.crops[i]
        region = canvas[y:y + crop.shape[0], x:x + crop.shape[1]]
        region[crop] = value

    def areas(self):
        return np.array([int(c.sum()) for _, _, c in self.crops], dtype=np.int64)

    def bounding_boxes(self):
        """[N, 4] float XYXY boxes of the masks' pixels (0s for an empty mask)."""
        out = np.zeros((len(self), 4), dtype=np.float32)
        for i, (x, y, c) in enumerate(self.crops):
            ys, xs = np.nonzero(c)
            if len(xs):
                out[i] = (x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1)
        return out

    def rle(self, i):
        """Compressed COCO RLE of mask ``i`` (``counts`` a str, as in COCO JSON), equal to
        encoding ``masks[i]``; made from a slab of the crop's columns, not from a full mask."""
        from pycocotools import mask as mask_util

        h, w = self.image_size
        x, y, crop = self.crops[i]
        slab = np.zeros((h, crop.shape[1]), dtype=np.uint8)
        slab[y:y + crop.shape[0]] = crop
        flat = slab.ravel(order="F")
        change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
        if flat.size and flat[0]:
            runs.insert(0, 0)  # COCO counts start with a run of zeros
        if not runs:
            runs = [0]
        runs[0] += x * h
        after = (w - x - crop.shape[1]) * h
        if after:
            if len(runs) % 2:  # last run is zeros
                runs[-1] += after
            else:
                runs.append(after)
        rle = mask_util.frPyObjects({"counts": runs, "size": [h, w]}, h, w)
        return {"size": [h, w], "counts": rle["counts"].decode("ascii")}


class Detection(NamedTuple):
    box: np.ndarray  # XYXY in image pixels
    score: float
    category: int
    x0: int  # the mask crop's top-left corner in image pixels
    y0: int
    crop: np.ndarray  # bool
    tile: int  # index of the tile that saw it; -1 for the whole-image pass
    window: tuple = None  # (x0, y0, x1, y1) of the pixels that tile saw; None: the whole image


def paste_detections(instances, offset, scale, image_size, tile, threshold=0.5, window=None):
    """Detections of one model output (``model.inference(..., do_postprocess=False)``: boxes in
    the model's input frame, [N, 1, M, M] mask probabilities), moved into the image: boxes scaled
    by ``scale`` (sx, sy) and shifted by ``offset`` (x, y), clipped to ``image_size`` (h, w); each
    mask pasted into its own box as detectron2's paste_masks_in_image does."""
    h, w = image_size
    boxes = instances.pred_boxes.tensor.detach().float().cpu().clone()
    boxes[:, 0::2] = boxes[:, 0::2] * scale[0] + offset[0]
    boxes[:, 1::2] = boxes[:, 1::2] * scale[1] + offset[1]
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    keep = ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)
    scores = instances.scores.detach().float().cpu()
    classes = instances.pred_classes.detach().cpu()
    probs = instances.pred_masks.detach().float().cpu() if instances.has("pred_masks") else None
    out = []
    for i in torch.nonzero(keep).flatten().tolist():
        box = boxes[i]
        if probs is not None:
            pasted, (ys, xs) = _do_paste_mask(probs[i:i + 1], box[None], h, w, skip_empty=True)
            crop = (pasted[0] >= threshold).numpy()
            x0, y0 = int(xs.start), int(ys.start)
        else:
            x0, y0 = int(box[0]), int(box[1])
            crop = np.ones((max(1, int(math.ceil(box[3])) - y0), max(1, int(math.ceil(box[2])) - x0)), bool)
        out.append(Detection(box.numpy(), float(scores[i]), int(classes[i]), x0, y0, crop, tile, window))
    return out


def _in_region(d, x0, y0, x1, y1):
    """The part of ``d``'s mask crop inside the image region [x0, x1) x [y0, y1)."""
    x0, y0 = max(x0, d.x0), max(y0, d.y0)
    x1, y1 = min(x1, d.x0 + d.crop.shape[1]), min(y1, d.y0 + d.crop.shape[0])
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 0), bool), (x0, y0)
    return d.crop[y0 - d.y0:y1 - d.y0, x0 - d.x0:x1 - d.x0], (x0, y0)


def shared_view_ios(a, b):
    """How far Detections ``a`` and ``b`` (from different tiles) are one object: intersection over
    the smaller mask, counted only where both tiles looked. An object cut by a tile edge then
    scores ~1 whatever its length (its two pieces agree in the overlap band), two neighbours ~0."""
    big = (-10**9, -10**9, 10**9, 10**9)
    wa, wb = a.window or big, b.window or big
    region = (max(wa[0], wb[0]), max(wa[1], wb[1]), min(wa[2], wb[2]), min(wa[3], wb[3]))
    pa, (ax, ay) = _in_region(a, *region)
    pb, (bx, by) = _in_region(b, *region)
    smaller = min(int(np.count_nonzero(pa)), int(np.count_nonzero(pb)))
    if not smaller:
        return 0.0
    x0, y0 = max(ax, bx), max(ay, by)
    x1, y1 = min(ax + pa.shape[1], bx + pb.shape[1]), min(ay + pa.shape[0], by + pb.shape[0])
    if x1 <= x0 or y1 <= y0:
        return 0.0
    # pasted 28x28 masks disagree by a pixel at the rim: a 1 px remnant of an object must still
    # land inside the whole object seen by the next tile, so one side grows by a pixel
    grown = cv2.dilate(pb.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    inter = np.count_nonzero(pa[y0 - ay:y1 - ay, x0 - ax:x1 - ax] & grown[y0 - by:y1 - by, x0 - bx:x1 - bx])
    return min(1.0, inter / smaller)


def overlapping_pairs(detections):
    """Index pairs ``(i, j)``, i < j, of Detections of one class from different tiles whose mask
    crops' extents overlap: the only pairs that can be one object. A sweep along the image's longer
    side over the extents sorted by their start pairs each detection with its neighbours only, so
    the work grows with the detections and their neighbours, not with the square of the image's
    detection count."""
    n = len(detections)
    if n < 2:
        return []
    ext = np.array([(d.x0, d.y0, d.x0 + d.crop.shape[1], d.y0 + d.crop.shape[0]) for d in detections], np.int64)
    category = np.array([d.category for d in detections])
    tile = np.array([d.tile for d in detections])
    axis = 0 if np.ptp(ext[:, 0::2]) >= np.ptp(ext[:, 1::2]) else 1
    lo, hi, other_lo, other_hi = ext[:, axis], ext[:, axis + 2], ext[:, 1 - axis], ext[:, 3 - axis]
    order = np.argsort(lo, kind="stable")
    starts = lo[order]
    pairs = []
    for k, i in enumerate(order.tolist()):
        # the detections starting (in sweep order) after i and before i ends
        near = order[k + 1:int(np.searchsorted(starts, hi[i], side="left"))]
        near = near[(category[near] == category[i]) & (tile[near] != tile[i])
                    & (other_lo[near] < other_hi[i]) & (other_hi[near] > other_lo[i])]
        pairs += [(min(i, j), max(i, j)) for j in near.tolist()]
    return pairs


def _union_of(members):
    """One Detection of several: the highest-scoring member with the union of all members' masks
    (one crop over their joint extent) and boxes."""
    best = max(members, key=lambda d: d.score)
    if len(members) == 1:
        return best
    x0, y0 = min(d.x0 for d in members), min(d.y0 for d in members)
    x1 = max(d.x0 + d.crop.shape[1] for d in members)
    y1 = max(d.y0 + d.crop.shape[0] for d in members)
    crop = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for d in members:
        crop[d.y0 - y0:d.y0 - y0 + d.crop.shape[0], d.x0 - x0:d.x0 - x0 + d.crop.shape[1]] |= d.crop
    boxes = np.array([d.box for d in members])
    box = np.concatenate([boxes[:, :2].min(0), boxes[:, 2:].max(0)]).astype(best.box.dtype)
    return best._replace(box=box, x0=x0, y0=y0, crop=crop)


def merge_detections(detections: List[Detection], min_ios=0.5):
    """Detections -> instances, seams merged. Two detections of one class from different tiles
    are linked when :func:`shared_view_ios` is at least ``min_ios``; an instance is a connected
    set of links (union-find), so an object cut into pieces by any number of seams comes out as
    one, whatever order the pieces' scores are in. Links join sets in order of agreement (highest
    IoS first), and never two sets holding detections of the same tile: inside one tile the
    model's own NMS has already decided, so two touching objects stay two even when a third tile
    saw them as one blob. Only detections whose crops overlap are compared
    (:func:`overlapping_pairs`). Returns one Detection per instance, the highest score first: its
    best member's score, class and tile, with the union of its members' masks and boxes."""
    n = len(detections)
    links = []
    for i, j in overlapping_pairs(detections):
        a, b = (i, j) if detections[i].score >= detections[j].score else (j, i)
        ios = shared_view_ios(detections[a], detections[b])
        if ios >= min_ios:
            links.append((-ios, -detections[a].score, i, j))
    links.sort()
    parent = list(range(n))
    tiles = [{d.tile} for d in detections]

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for _, _, i, j in links:
        a, b = root(i), root(j)
        if a == b or tiles[a] & tiles[b]:
            continue
        if len(tiles[a]) < len(tiles[b]):
            a, b = b, a
        parent[b] = a
        tiles[a] |= tiles[b]
        tiles[b] = None
    groups = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(detections[i])
    merged = [_union_of(members) for members in groups.values()]
    merged.sort(key=lambda d: -d.score)
    return merged


def detections_to_instances(detections, image_size):
    """detectron2 Instances (CPU) of merged Detections, masks as :class:`CroppedMasks`."""
    inst = Instances(tuple(image_size))
    n = len(detections)
    inst.pred_boxes = Boxes(torch.as_tensor(np.array([d.box for d in detections], dtype=np.float32).reshape(n, 4)))
    inst.scores = torch.tensor([d.score for d in detections], dtype=torch.float32)
    inst.pred_classes = torch.tensor([d.category for d in detections], dtype=torch.int64)
    inst.pred_masks = CroppedMasks([(d.x0, d.y0, d.crop) for d in detections], image_size)
    return inst


class TiledModel(torch.nn.Module):
    """Sliced inference around a detectron2 GeneralizedRCNN (see the module docstring).

    ``tile_size`` / ``overlap``: :func:`tile_windows`. ``batch_size``: tiles per forward pass.
    ``full_pass_aug``: a detectron2 Augmentation (the test resize) for one extra whole-image pass
    that adds objects larger than a tile; None for tiles only. ``min_ios``: :func:`merge_detections`.
    ``max_per_image``: instances kept per image after the merge, the best first (None: all).
    ``max_per_tile``: the model's own limit per pass (TEST.DETECTIONS_PER_IMAGE; None: read from its
    ``roi_heads``), only to report passes that reached it. An image that reaches either limit is
    reported in one warning line naming it and the config key.
    Input images come unresized, in the model's INPUT.FORMAT (CHW, uint8 or float)."""

    def __init__(self, model, tile_size, overlap=0.2, batch_size=4, full_pass_aug=None, min_ios=0.5,
                 max_per_image=None, max_per_tile=None):
        super().__init__()
        self.model = model
        self.tile_size = int(tile_size)
        self.overlap = float(overlap)
        self.batch_size = max(1, int(batch_size))
        self.full_pass_aug = full_pass_aug
        self.min_ios = float(min_ios)
        self.max_per_image = int(max_per_image) if max_per_image else None
        if max_per_tile is None:
            max_per_tile = getattr(getattr(model, "roi_heads", None), "test_detections_per_img", None)
        self.max_per_tile = int(max_per_tile) if max_per_tile else None
        tile_windows(self.tile_size, self.tile_size, self.tile_size, self.overlap)  # checks the values

    @classmethod
    def from_config(cls, model, cfg):
        """From the ``TEST.TILE_*`` keys; the whole-image pass uses INPUT.MIN/MAX_SIZE_TEST."""
        aug = None
        if cfg.TEST.TILE_FULL_PASS:
            aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)
        return cls(model, cfg.TEST.TILE_SIZE, cfg.TEST.TILE_OVERLAP, cfg.TEST.TILE_BATCH, aug, cfg.TEST.TILE_MERGE_IOS,
                   max_per_image=cfg.TEST.TILE_DETECTIONS_PER_IMAGE, max_per_tile=cfg.TEST.DETECTIONS_PER_IMAGE)

    def forward(self, batched_inputs):
        return [{"instances": self.predict_one(x["image"], x.get("height"), x.get("width"), name=x.get("file_name"))}
                for x in batched_inputs]

    def predict_one(self, image, height=None, width=None, progress=None, name=None, flip_channels=False):
        """Instances of one CHW image (a tensor at its original size). ``progress(done, total)``
        is called after each batch of tiles; ``name`` names the image in the limit warning.
        ``flip_channels``: reverse the channel order of each tile (an RGB view given to a BGR
        model: one tile flipped at a time, not the whole image)."""
        h, w = int(image.shape[-2]), int(image.shape[-1])
        if (height or h) != h or (width or w) != w:
            raise ValueError(f"tiled inference needs the image at its original size: got {w}x{h} for "
                             f"an image of {width}x{height} (the test loader must not resize)")
        windows = tile_windows(h, w, self.tile_size, self.overlap)
        detections, full_tiles = [], 0
        with torch.no_grad():
            for start in range(0, len(windows), self.batch_size):
                chunk = windows[start:start + self.batch_size]
                inputs = [{"image": image[:, y0:y1, x0:x1].flip(0) if flip_channels else image[:, y0:y1, x0:x1]}
                          for x0, y0, x1, y1 in chunk]
                outputs = self.model.inference(inputs, do_postprocess=False)
                for k, ((x0, y0, _, _), out) in enumerate(zip(chunk, outputs)):
                    full_tiles += self._reached_tile_limit(out)
                    detections += paste_detections(out, (x0, y0), (1.0, 1.0), (h, w), start + k,
                                                   window=chunk[k])
                if progress is not None:
                    progress(start + len(chunk), len(windows))
            full_pass = False
            if self.full_pass_aug is not None:
                found, full_pass = self._full_pass(image, h, w, flip_channels)
                detections += found
        merged = merge_detections(detections, self.min_ios)
        kept = merged[:self.max_per_image] if self.max_per_image else merged
        self._report_limits(name, full_tiles, len(windows), full_pass, len(merged), len(kept))
        return detections_to_instances(kept, (h, w))

    def _reached_tile_limit(self, out):
        return bool(self.max_per_tile) and len(out) >= self.max_per_tile

    def _report_limits(self, name, full_tiles, tiles, full_pass, found, kept):
        """One warning line when a tile (or the whole-image pass) or the image reached its limit:
        objects beyond it are missing from the result and from AP / AR."""
        parts = []
        if full_tiles or full_pass:
            where = " and ".join(([f"{full_tiles} of {tiles} tiles"] if full_tiles else [])
                                 + (["the whole-image pass"] if full_pass else []))
            parts.append(f"{where} reached TEST.DETECTIONS_PER_IMAGE ({self.max_per_tile} detections per pass)")
        if kept < found:
            parts.append(f"kept {kept} of {found} instances (TEST.TILE_DETECTIONS_PER_IMAGE {self.max_per_image})")
        if parts:
            logger.warning("%s: %s; raise the limit if it holds more objects.", name or "image", "; ".join(parts))

    def _full_pass(self, image, h, w, flip_channels=False):
        hwc = image.permute(1, 2, 0).cpu().numpy()
        resized = self.full_pass_aug.get_transform(hwc).apply_image(hwc)
        if flip_channels:
            resized = resized[:, :, ::-1]
        rh, rw = resized.shape[:2]
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        out = self.model.inference([{"image": tensor}], do_postprocess=False)[0]
        return paste_detections(out, (0, 0), (w / rw, h / rh), (h, w), -1), self._reached_tile_limit(out)
