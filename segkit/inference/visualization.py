"""Pictures of predictions: detectron2's Visualizer, plus the views it lacks.

- :func:`draw_prediction` - Visualizer's overlay (instance colours, mask contours, boxes,
  ``label score`` tags; ColorMode IMAGE / SEGMENTATION / IMAGE_BW), or ``draw_sem_seg`` for U-Net
  results. Colours are reproducible: the same prediction is drawn the same way every time.
- :func:`masked_image` - objects kept, background black.
- :func:`instance_masks` / :func:`save_instance_masks` - one binary PNG (0/255) per instance.
- :func:`instance_map` - one 16-bit map, pixel value instance index + 1 (thousands of instances).
- :func:`label_map` - an RGB label map (class colours on black; or one colour per instance).
- :func:`class_map` - the single-channel class-index map (U-Net's PNG output).
- :func:`side_by_side` - ground truth from a COCO file beside the prediction, for one image.
- :func:`downscale` - a smaller copy of a prediction (image, masks, boxes) for display.

All images here are RGB uint8 HxWx3 numpy arrays; ``save_png`` writes them.
"""

import contextlib
import os

import cv2
import numpy as np
import torch
from detectron2.data import Metadata
from detectron2.structures import BoxMode, Boxes, Instances
from detectron2.utils.visualizer import ColorMode, GenericMask, Visualizer, _create_text_labels
from PIL import Image

from segkit.data.catalog import class_colors
from segkit.data.coco_masks import segmentation_to_rle
from segkit.data.file_names import safe_filename
from segkit.modeling.tiling import CroppedMasks

COLOR_MODES = {
    "image": ColorMode.IMAGE,
    "segmentation": ColorMode.SEGMENTATION,
    "bw": ColorMode.IMAGE_BW,
    "image_bw": ColorMode.IMAGE_BW,
}


def color_mode(mode):
    """ColorMode from a ColorMode, its name ("IMAGE", "segmentation", "bw") or value."""
    if isinstance(mode, ColorMode):
        return mode
    if isinstance(mode, int):
        return ColorMode(mode)
    try:
        return COLOR_MODES[str(mode).lower()]
    except KeyError:
        raise ValueError(f"unknown colour mode {mode!r}; one of {sorted(COLOR_MODES)}") from None


@contextlib.contextmanager
def _seeded(seed=0):
    """Visualizer picks instance colours with np.random: fix them, leave the global state alone."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _image_of(prediction, image):
    if image is None:
        image = prediction.image
    if image is None:
        raise ValueError("the prediction holds no image: pass image=")
    return np.asarray(image)


def _fit(drawn, shape):
    """Matplotlib may round the canvas by a pixel; keep outputs at the input size."""
    h, w = shape[:2]
    if drawn.shape[:2] != (h, w):
        drawn = cv2.resize(drawn, (w, h), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(drawn)


def draw_prediction(prediction, image=None, mode=ColorMode.IMAGE, alpha=None, seed=0):
    """The overlay image (RGB uint8, input size) of ``prediction`` on ``image`` (default: the
    image the prediction holds). Instances: Visualizer.draw_instance_predictions in ``mode``;
    semantic: Visualizer.draw_sem_seg of the class map."""
    image = _image_of(prediction, image)
    if prediction.is_semantic:
        return draw_semantic(prediction, image, alpha=0.6 if alpha is None else alpha)
    vis = Visualizer(image, metadata=prediction.metadata, instance_mode=color_mode(mode))
    with _seeded(seed):
        if isinstance(getattr(prediction.instances, "pred_masks", None), CroppedMasks):
            out = _draw_cropped(vis, prediction.instances)
        else:
            out = vis.draw_instance_predictions(prediction.instances)
    return _fit(out.get_image(), image.shape)


class _CropMask(GenericMask):
    """GenericMask of one CroppedMasks entry: polygons, area and box from the crop, so drawing N
    instances of a large image never holds N full-image masks (GenericMask would cache them)."""

    def __init__(self, x0, y0, crop, height, width):
        super().__init__([], height, width)
        polygons, self._has_holes = self.mask_to_polygons(crop)
        self._polygons = [p + np.tile([x0, y0], len(p) // 2) for p in polygons]
        self._area = int(np.count_nonzero(crop))
        ys, xs = np.nonzero(crop)
        self._bbox = (x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1) if len(xs) else (0, 0, 0, 0)
        self._crop = (x0, y0, crop)

    @property
    def mask(self):
        return CroppedMasks([self._crop], (self.height, self.width)).full(0)

    def area(self):
        return self._area

    def bbox(self):
        return np.array(self._bbox, dtype=np.float64)


def _draw_cropped(vis, predictions):
    """Visualizer.draw_instance_predictions (detectron2 0.7.2) for masks kept as crops: the same
    labels, colours and alpha per ColorMode, with :class:`_CropMask` in place of GenericMask."""
    classes = predictions.pred_classes.tolist()
    labels = _create_text_labels(classes, predictions.scores, vis.metadata.get("thing_classes", None))
    h, w = vis.output.height, vis.output.width
    masks = [_CropMask(x0, y0, crop, h, w) for x0, y0, crop in predictions.pred_masks.crops]
    colors, alpha = None, 0.5
    if vis._instance_mode == ColorMode.SEGMENTATION and vis.metadata.get("thing_colors"):
        colors = [vis._jitter([x / 255 for x in vis.metadata.thing_colors[c]]) for c in classes]
        alpha = 0.8
    if vis._instance_mode == ColorMode.IMAGE_BW:
        covered = np.zeros(predictions.image_size, dtype=bool)
        for i in range(len(predictions)):
            predictions.pred_masks.paint(covered, i, True)
        vis.output.reset_image(vis._create_grayscale_image(covered))
        alpha = 0.3
    return vis.overlay_instances(masks=masks, boxes=predictions.pred_boxes, labels=labels,
                                 assigned_colors=colors, alpha=alpha)


def draw_semantic(prediction, image=None, alpha=0.6, area_threshold=None):
    """Visualizer.draw_sem_seg of a U-Net prediction (class colours and names)."""
    image = _image_of(prediction, image)
    vis = Visualizer(image, metadata=prediction.metadata)
    out = vis.draw_sem_seg(prediction.class_map(), area_threshold=area_threshold, alpha=alpha)
    return _fit(out.get_image(), image.shape)


def masked_image(prediction, image=None):
    """The image with everything outside the predicted objects (or, for U-Net, outside every
    class but the first, taken as background) set to black."""
    image = _image_of(prediction, image)
    keep = foreground(prediction)
    out = np.zeros_like(image)
    out[keep] = image[keep]
    return out


def foreground(prediction):
    """HxW bool: pixels covered by any instance mask (U-Net: any class but index 0)."""
    if prediction.is_semantic:
        return prediction.class_map() != 0
    h, w = prediction.image_size
    inst = prediction.instances
    if len(inst) and inst.has("pred_masks"):
        if isinstance(inst.pred_masks, CroppedMasks):
            out = np.zeros((h, w), dtype=bool)
            for i in range(len(inst)):
                inst.pred_masks.paint(out, i, True)
            return out
        return inst.pred_masks.any(dim=0).numpy()
    return np.zeros((h, w), dtype=bool)


def instance_masks(prediction):
    """[(name, HxW uint8 0/255)], one per instance, named ``<index>_<class>``; U-Net results
    give one mask per class present."""
    return list(iter_instance_masks(prediction))


def iter_instance_masks(prediction):
    """:func:`instance_masks` one at a time: a large image's N masks are never all in memory."""
    if prediction.is_semantic:
        cmap = prediction.class_map()
        for c in np.unique(cmap).tolist():
            if c < len(prediction.class_names):
                yield f"{c:03d}_{safe_filename(prediction.class_names[c], 'object')}", (cmap == c).astype(np.uint8) * 255
        return
    inst = prediction.instances
    if not inst.has("pred_masks"):
        return
    masks = inst.pred_masks.numpy()
    for i, c in enumerate(inst.pred_classes.tolist()):
        yield f"{i:03d}_{safe_filename(prediction.class_names[c], 'object')}", masks[i].astype(np.uint8) * 255


def save_png(array, path):
    """Write an RGB (HxWx3) or single-channel uint8/uint16 array as PNG; returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG")
    return path


def save_instance_masks(prediction, out_dir, stem=""):
    """One binary PNG per instance: ``<out_dir>/[<stem>_]<index>_<class>.png``. Returns the paths."""
    prefix = f"{stem}_" if stem else ""
    return [save_png(m, os.path.join(out_dir, f"{prefix}{name}.png"))
            for name, m in iter_instance_masks(prediction)]


def class_map(prediction):
    """Single-channel class-index map (uint8; uint16 past 255 classes). U-Net: the argmax class;
    instances: 0 background, i+1 for class i."""
    return prediction.class_map()


def instance_map(prediction):
    """HxW uint16 map of the instances: 0 background, i+1 where instance i is (the higher score
    on top where masks overlap). One PNG for an image with thousands of instances."""
    inst = prediction.instances
    if len(inst) > np.iinfo(np.uint16).max:
        raise ValueError(f"{len(inst)} instances do not fit a 16-bit instance map")
    out = np.zeros(prediction.image_size, dtype=np.uint16)
    masks = inst.pred_masks if len(inst) and inst.has("pred_masks") else None
    for i in torch.argsort(inst.scores).tolist() if masks is not None else []:
        if isinstance(masks, CroppedMasks):
            masks.paint(out, i, i + 1)
        else:
            out[masks[i].numpy()] = i + 1
    return out


def label_map(prediction, by="class"):
    """RGB label map on black: each pixel in the colour of its class (``by="class"``, the
    colours the overlay uses in SEGMENTATION mode) or of its instance (``by="instance"``)."""
    h, w = prediction.image_size
    out = np.zeros((h, w, 3), dtype=np.uint8)
    if prediction.is_semantic or by == "class":
        cmap = prediction.class_map()
        colors = np.array(class_colors(len(prediction.class_names)) or [(0, 0, 0)], dtype=np.uint8)
        if prediction.is_semantic:
            valid = cmap < len(colors)
            out[valid] = colors[cmap[valid]]
        else:
            valid = cmap > 0
            out[valid] = colors[cmap[valid].astype(np.int64) - 1]
        return out
    inst = prediction.instances
    if len(inst) and inst.has("pred_masks"):
        palette = np.array(class_colors(len(inst) + 1)[1:], dtype=np.uint8)
        masks = inst.pred_masks
        for i in torch.argsort(inst.scores).tolist():
            if isinstance(masks, CroppedMasks):
                masks.paint(out, i, palette[i])
            else:
                out[masks[i].numpy()] = palette[i]
    return out


def downscale(prediction, max_side):
    """A copy of ``prediction`` whose image, masks and boxes fit in ``max_side`` pixels (the
    prediction itself when it already fits). For showing large images; the model is not re-run."""
    h, w = prediction.image_size
    scale = max_side / max(h, w)
    if scale >= 1:
        return prediction
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    from dataclasses import replace

    image = None
    if prediction.image is not None:
        image = cv2.resize(prediction.image, (nw, nh), interpolation=cv2.INTER_AREA)
    if prediction.is_semantic:
        sem = torch.nn.functional.interpolate(prediction.sem_seg[None], size=(nh, nw),
                                              mode="bilinear", align_corners=False)[0]
        return replace(prediction, sem_seg=sem, image=image)
    inst = prediction.instances
    small = Instances((nh, nw))
    for k, v in inst.get_fields().items():
        if k == "pred_masks" and isinstance(v, CroppedMasks):
            v = _scaled_crops(v, nw / w, nh / h, (nh, nw))
        elif k == "pred_masks":
            m = v.numpy().astype(np.uint8)
            v = torch.from_numpy(np.stack([cv2.resize(x, (nw, nh), interpolation=cv2.INTER_NEAREST)
                                           for x in m]) if len(m) else np.zeros((0, nh, nw), np.uint8)).bool()
        elif k == "pred_boxes":
            t = v.tensor.clone()
            t[:, 0::2] *= nw / w
            t[:, 1::2] *= nh / h
            v = Boxes(t)
        small.set(k, v)
    return replace(prediction, instances=small, image=image)


def _scaled_crops(masks, sx, sy, size):
    """CroppedMasks resized by (sx, sy) into an image of ``size`` (h, w): each crop alone."""
    crops = []
    for x0, y0, crop in masks.crops:
        nx0, ny0 = int(x0 * sx), int(y0 * sy)
        nx1 = min(size[1], max(nx0 + 1, round((x0 + crop.shape[1]) * sx)))
        ny1 = min(size[0], max(ny0 + 1, round((y0 + crop.shape[0]) * sy)))
        small = cv2.resize(crop.astype(np.uint8), (max(1, nx1 - nx0), max(1, ny1 - ny0)), interpolation=cv2.INTER_NEAREST)
        crops.append((nx0, ny0, small.astype(bool)))
    return CroppedMasks(crops, size)


# ----------------------------------------------------------------------------- ground truth


def load_gt(coco_json, file_name):
    """Ground truth of one image from a COCO file, as a detectron2 dataset dict (category ids
    mapped to 0..K-1 in category-id order) plus its Metadata; (None, metadata) if the file does
    not list the image. ``file_name`` is matched on its base name."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(open(os.devnull, "w")):
        coco = COCO(os.fspath(coco_json))
    cats = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
    contiguous = {c["id"]: i for i, c in enumerate(cats)}
    names = [c["name"] for c in cats]
    meta = Metadata(name=f"gt:{coco_json}", thing_classes=names, thing_colors=class_colors(len(names)))
    base = os.path.basename(os.fspath(file_name))
    img = next((im for im in coco.dataset.get("images", [])
                if os.path.basename(im["file_name"]) == base), None)
    if img is None:
        return None, meta
    annos = []
    for a in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]])):
        anno = {"bbox": a["bbox"], "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": contiguous[a["category_id"]], "iscrowd": a.get("iscrowd", 0)}
        seg = a.get("segmentation")
        if isinstance(seg, dict) and isinstance(seg.get("counts"), list):  # uncompressed RLE
            seg = segmentation_to_rle(seg, *seg["size"])
        if isinstance(seg, list):
            seg = [p for p in seg if len(p) >= 6]
        if seg:
            anno["segmentation"] = seg
        annos.append(anno)
    if annos and any("segmentation" not in a for a in annos):
        for a in annos:
            a.pop("segmentation", None)
    return {"file_name": img["file_name"], "height": img.get("height"), "width": img.get("width"),
            "annotations": annos}, meta


def _title(image, text):
    bar = np.full((max(18, image.shape[0] // 20), image.shape[1], 3), 255, np.uint8)
    scale = bar.shape[0] / 30
    cv2.putText(bar, text, (4, int(bar.shape[0] * 0.75)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (0, 0, 0), max(1, int(scale * 2)), cv2.LINE_AA)
    return np.vstack([bar, image])


def side_by_side(prediction, coco_json, image=None, file_name=None, mode=ColorMode.IMAGE):
    """Ground truth (from ``coco_json``, the image matched by file name) left, prediction right,
    each titled. Raises KeyError when the COCO file does not list the image."""
    image = _image_of(prediction, image)
    file_name = file_name or prediction.file_name
    if not file_name:
        raise ValueError("side_by_side needs the image's file name (file_name=)")
    gt, meta = load_gt(coco_json, file_name)
    if gt is None:
        raise KeyError(f"{os.path.basename(file_name)} is not an image of {coco_json}")
    vis = Visualizer(image, metadata=meta, instance_mode=color_mode(mode))
    with _seeded(0):
        left = _fit(vis.draw_dataset_dict(gt).get_image(), image.shape)
    right = draw_prediction(prediction, image, mode=mode)
    gap = np.full((image.shape[0] + max(18, image.shape[0] // 20), 4, 3), 255, np.uint8)
    n = len(gt["annotations"])
    return np.hstack([_title(left, f"ground truth ({n})"), gap,
                      _title(right, f"prediction ({len(prediction)})")])
