"""Deterministic sample data: a LabelMe-annotated instance set and a trimap-style semantic set.

Instance set (``make_instance_sample``, default ``data/sample/``)::

    data/sample/
        labels.txt            LabelMe's convention: __ignore__, _background_, then the classes
        sample_0000.jpg       RGB image, JPEG quality 95
        sample_0000.json      LabelMe 5.5.0 annotation of that image
        ...

Three classes with clearly different shapes: ``disc`` (round), ``square`` (rotated, nearly square
box) and ``triangle``. Objects are 14 to 110 px, brightly coloured, shaded and slightly noisy, on
muted textured backgrounds (smooth noise, gradients, stripes). Objects drawn later occlude earlier
ones: each polygon is the *visible* part of its object (traced with ``cv2.findContours``); an
object cut in two by an occluder is written as two polygons with one shared ``group_id`` (a lone
polygon has ``group_id`` null). Placements that would leave an earlier object mostly hidden or with
a hole are rejected, and visible slivers under 20 px are not annotated. About one image in ten has
no objects (a negative). Points use LabelMe's pixel convention: ``[x, y]`` with pixel centres at
integers, so drawing the polygon (PIL / ``cv2.fillPoly``) reproduces the visible mask.

Trimap set (``make_trimap_sample``, default ``data/sample_trimap/``), the Oxford-IIIT Pets layout::

    data/sample_trimap/
        classes.json          {"1": "pet", "2": "background", "3": "outline"}
        images/pet_0000.jpg   RGB image, JPEG quality 95
        annotations/pet_0000.png
                              single-channel uint8 PNG, same size and stem as the image:
                              1 = pet, 2 = background, 3 = outline band (about 3 px wide:
                              1 px inside the pet boundary, 2 px outside it)
        ...

Each trimap image holds one to three pet-like blobs (a body, a head and two ears) in fur colours
on a cooler textured background; a pet pixel never touches a background pixel directly.

Every image is generated from its own random stream ``(seed, index)``: the same seed gives
byte-identical files, and the first N images do not depend on how many are made.

CLI::

    python -m segkit.data.sample [--out DIR] [--num-images N] [--seed S] [--kind instances|trimap]
"""

import argparse
import json
import os
import re
import sys

import cv2
import numpy as np

from segkit.data.atomic import write_bytes, write_json, write_text
from segkit.data.labelme import labelme_document, labelme_shape, write_labelme_json

CLASSES = ("disc", "square", "triangle")
TRIMAP_CLASSES = {"1": "pet", "2": "background", "3": "outline"}

MIN_SIZE, MAX_SIZE = 14, 110  # object extent in pixels (disc diameter, box / triangle side)
MIN_PIECE_AREA = 20  # visible pieces smaller than this are not annotated
MIN_VISIBLE_FRACTION = 0.35  # an earlier object must stay at least this visible
NEGATIVE_EVERY = 10  # image i is a negative when i % NEGATIVE_EVERY == NEGATIVE_EVERY // 2
JPEG_QUALITY = 95


# --------------------------------------------------------------------------------------------
# shared drawing helpers
# --------------------------------------------------------------------------------------------
def _hsv_to_rgb(h, s, v):
    """h in [0, 360), s and v in [0, 1] -> RGB floats 0..255."""
    pixel = np.array([[[h / 2.0, s * 255.0, v * 255.0]]], dtype=np.float32)
    pixel = np.clip(pixel, 0, [179.99, 255, 255]).astype(np.uint8)
    return cv2.cvtColor(pixel, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _smooth_noise(rng, h, w, scale):
    """Zero-mean, unit-ish smooth noise: random values on a coarse grid, resized up."""
    gh, gw = max(2, int(h / scale) + 2), max(2, int(w / scale) + 2)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _direction(rng, h, w):
    """Coordinates projected on a random direction, scaled to roughly [0, 1]."""
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    proj = xx * np.cos(angle) + yy * np.sin(angle)
    proj -= proj.min()
    return proj / max(float(proj.max()), 1.0)


def _background(rng, h, w, hue_range=(0, 360), sat_range=(0.05, 0.35), val_range=(0.3, 0.8)):
    """A muted textured background: a gradient, optional stripes, smooth and fine noise."""
    c1 = _hsv_to_rgb(rng.uniform(*hue_range), rng.uniform(*sat_range), rng.uniform(*val_range))
    c2 = _hsv_to_rgb(rng.uniform(*hue_range), rng.uniform(*sat_range), rng.uniform(*val_range))
    t = _direction(rng, h, w)[..., None]
    img = c1 * (1 - t) + c2 * t
    kind = rng.integers(3)  # 0 gradient + blotches, 1 stripes, 2 strong noise
    if kind == 0:
        img += _smooth_noise(rng, h, w, rng.uniform(20, 60))[..., None] * rng.uniform(10, 25)
    elif kind == 1:
        period = rng.uniform(6, 30)
        stripes = np.sin(2 * np.pi * _direction(rng, h, w) * max(h, w) / period)
        c3 = _hsv_to_rgb(rng.uniform(*hue_range), rng.uniform(*sat_range), rng.uniform(*val_range))
        a = rng.uniform(0.2, 0.5)
        img = img * (1 - a * (stripes[..., None] > 0)) + c3 * a * (stripes[..., None] > 0)
    else:
        img += _smooth_noise(rng, h, w, rng.uniform(3, 8))[..., None] * rng.uniform(10, 20)
    img += rng.normal(0, rng.uniform(3, 9), size=(h, w, 1)).astype(np.float32)  # grain
    return img


def _encode_jpeg(rgb_float):
    rgb = np.clip(np.rint(rgb_float), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _encode_png(array):
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _remove_stale(directory, pattern, keep):
    """Remove earlier generated files (names matching ``pattern``) not part of this run."""
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        if re.fullmatch(pattern, name) and name not in keep:
            os.remove(os.path.join(directory, name))


# --------------------------------------------------------------------------------------------
# instance set
# --------------------------------------------------------------------------------------------
def _shape_mask(rng, cls, size, cx, cy, h, w):
    """Binary mask (uint8 0/1) of one object of class ``cls`` with extent ``size`` at (cx, cy)."""
    mask = np.zeros((h, w), np.uint8)
    centre = (int(round(cx)), int(round(cy)))
    if cls == "disc":
        a = size / 2.0
        b = a * rng.uniform(0.85, 1.0)
        cv2.ellipse(mask, centre, (int(round(a)), int(round(b))), float(rng.uniform(0, 180)),
                    0, 360, 1, -1, lineType=cv2.LINE_8)
    elif cls == "square":
        cv2.fillPoly(mask, [np.int32(np.round(cv2.boxPoints(
            ((cx, cy), (size, size * rng.uniform(0.8, 1.0)), float(rng.uniform(0, 90))))))], 1)
    else:  # triangle: near-equilateral, side ~ size, random rotation
        r = size / np.sqrt(3.0)
        rot = rng.uniform(0, 2 * np.pi)
        angles = rot + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.12, 0.12, 3)
        radii = r * rng.uniform(0.92, 1.05, 3)
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [np.int32(np.round(pts))], 1)
    return mask


def _has_hole(mask):
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(mask)
    cv2.drawContours(filled, contours, -1, 1, thickness=-1)
    return bool((filled > mask).any())


def _paint_object(rng, img, mask):
    """Saturated, shaded, slightly noisy fill of ``mask`` on ``img`` (float RGB, in place)."""
    h, w = mask.shape
    color = _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.65, 1.0), rng.uniform(0.7, 1.0))
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    shade = _direction(rng, y1 - y0, x1 - x0)[..., None]
    strength = rng.uniform(0.1, 0.3)
    patch = color * (1 - strength / 2 + strength * shade)
    patch = patch + rng.normal(0, 4, size=(y1 - y0, x1 - x0, 1)).astype(np.float32)
    region = mask[y0:y1, x0:x1].astype(bool)
    img[y0:y1, x0:x1][region] = patch[region]


def _mask_to_polygons(mask):
    """Outer contours of the visible mask as LabelMe point lists, slivers dropped."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    polygons = []
    for contour in contours:
        if cv2.contourArea(contour) + len(contour) / 2.0 < MIN_PIECE_AREA:
            continue  # area of the traced polygon plus its half-pixel rim ~ pixel count
        approx = cv2.approxPolyDP(contour, 0.5, True).reshape(-1, 2)
        if len(approx) < 3 or cv2.contourArea(approx.reshape(-1, 1, 2)) <= 0:
            continue
        polygons.append((float(cv2.boundingRect(contour)[1]), float(cv2.boundingRect(contour)[0]),
                         [[float(x), float(y)] for x, y in approx]))
    polygons.sort(key=lambda p: (p[0], p[1]))  # top-to-bottom, left-to-right: stable order
    return [p[2] for p in polygons]


def _instance_image(rng, w, h, negative):
    """Returns (float RGB image, [(label, [polygon, ...]), ...]) in drawing order."""
    img = _background(rng, h, w)
    if negative:
        return img, []
    ids = np.zeros((h, w), np.int32)  # 0 background, k = k-th placed object (1-based)
    objects = []  # (label, full mask)
    for _ in range(int(rng.integers(2, 8))):
        cls = CLASSES[int(rng.integers(len(CLASSES)))]
        # uniform in sqrt(size): small objects are common but most stay comfortably detectable
        size = float(rng.uniform(np.sqrt(MIN_SIZE), np.sqrt(MAX_SIZE)) ** 2)
        size = min(size, 0.8 * min(w, h))
        for _try in range(20):
            half = size / 2.0 + 2
            if objects and rng.random() < 0.5:  # next to an earlier object: overlap likely
                _, other = objects[int(rng.integers(len(objects)))]
                ys, xs = np.nonzero(other)
                cx = xs.mean() + rng.normal(0, 0.5 * size + 5)
                cy = ys.mean() + rng.normal(0, 0.5 * size + 5)
            else:
                cx, cy = rng.uniform(half, w - half), rng.uniform(half, h - half)
            cx, cy = float(np.clip(cx, half, w - half)), float(np.clip(cy, half, h - half))
            mask = _shape_mask(rng, cls, size, cx, cy, h, w)
            if mask.sum() < MIN_PIECE_AREA * 3:
                continue
            trial = ids.copy()
            trial[mask.astype(bool)] = len(objects) + 1
            ok = True
            for k, (_, full) in enumerate(objects, start=1):
                visible = (trial == k).astype(np.uint8)
                if visible.sum() < MIN_VISIBLE_FRACTION * full.sum() or _has_hole(visible):
                    ok = False
                    break
            if ok:
                ids = trial
                objects.append((cls, mask))
                _paint_object(rng, img, mask)
                break
    annotations = []
    for k, (cls, _) in enumerate(objects, start=1):
        polygons = _mask_to_polygons((ids == k).astype(np.uint8))
        if polygons:
            annotations.append((cls, polygons))
    img = cv2.GaussianBlur(img, (3, 3), 0.6)  # soften the aliased edges a little
    return img, annotations


def _labelme_json(annotations, image_path, json_path, w, h):
    shapes = []
    next_group = 1
    for label, polygons in annotations:
        group_id = None
        if len(polygons) > 1:
            group_id, next_group = next_group, next_group + 1
        shapes.extend(labelme_shape(label, points, group_id) for points in polygons)
    return labelme_document(shapes, image_path, json_path, w, h)


def make_instance_sample(out_dir="data/sample", num_images=40, size=(320, 240), seed=0):
    """Write ``num_images`` LabelMe-annotated images into ``out_dir``; returns the JSON paths.

    ``size`` is (width, height). See the module docstring for the layout and content.
    """
    w, h = int(size[0]), int(size[1])
    if min(w, h) < 64:
        raise ValueError(f"image size {w}x{h} is too small (at least 64x64)")
    os.makedirs(out_dir, exist_ok=True)
    write_text(os.path.join(out_dir, "labels.txt"), "\n".join(("__ignore__", "_background_") + CLASSES) + "\n")
    paths, keep = [], {"labels.txt"}
    for i in range(int(num_images)):
        rng = np.random.default_rng([int(seed), i])
        negative = i % NEGATIVE_EVERY == NEGATIVE_EVERY // 2
        img, annotations = _instance_image(rng, w, h, negative)
        stem = f"sample_{i:04d}"
        image_name, json_name = stem + ".jpg", stem + ".json"
        write_bytes(os.path.join(out_dir, image_name), _encode_jpeg(img))
        json_path = os.path.join(out_dir, json_name)
        document = _labelme_json(annotations, os.path.join(out_dir, image_name), json_path, w, h)
        write_labelme_json(json_path, document, overwrite=True)
        paths.append(json_path)
        keep.update((image_name, json_name))
    _remove_stale(out_dir, r"sample_\d{4,}\.(jpg|json)", keep)
    return paths


# --------------------------------------------------------------------------------------------
# trimap set
# --------------------------------------------------------------------------------------------
def _pet_mask(rng, h, w, cx, cy, body):
    """A pet-like silhouette: a wobbly body blob, a head and two ears (uint8 0/1)."""
    mask = np.zeros((h, w), np.uint8)
    theta = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    radius = np.ones_like(theta)
    for k in (2, 3, 4):
        radius += rng.uniform(0.03, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    elong = rng.uniform(1.1, 1.5)
    orient = rng.uniform(0, 2 * np.pi)
    x = body * elong * radius * np.cos(theta)
    y = body * radius * np.sin(theta)
    pts = np.stack([cx + x * np.cos(orient) - y * np.sin(orient),
                    cy + x * np.sin(orient) + y * np.cos(orient)], axis=1)
    cv2.fillPoly(mask, [np.int32(np.round(pts))], 1)
    # head at one end of the long axis, ears on top of it
    head_r = body * rng.uniform(0.5, 0.7)
    hx = cx + np.cos(orient) * body * elong * 0.95
    hy = cy + np.sin(orient) * body * elong * 0.95
    cv2.circle(mask, (int(round(hx)), int(round(hy))), int(round(head_r)), 1, -1)
    for side in (-1, 1):
        a = orient + side * rng.uniform(0.5, 0.9)
        bx, by = hx + np.cos(a) * head_r * 0.8, hy + np.sin(a) * head_r * 0.8
        tip = (hx + np.cos(a) * head_r * 1.7, hy + np.sin(a) * head_r * 1.7)
        perp = a + np.pi / 2
        e = head_r * 0.45
        tri = np.array([[bx + np.cos(perp) * e, by + np.sin(perp) * e],
                        [bx - np.cos(perp) * e, by - np.sin(perp) * e], tip])
        cv2.fillPoly(mask, [np.int32(np.round(tri))], 1)
    return mask


_FUR = (  # (hue, saturation, value) centres of fur colours
    (30, 0.7, 0.55), (25, 0.8, 0.85), (35, 0.35, 0.9), (20, 0.5, 0.3), (0, 0.0, 0.12),
    (40, 0.15, 0.95), (15, 0.6, 0.6),
)


def _trimap_image(rng, w, h):
    img = _background(rng, h, w, hue_range=(90, 250), sat_range=(0.15, 0.45), val_range=(0.35, 0.75))
    fg = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        body = rng.uniform(0.09, 0.17) * min(h, w)
        for _try in range(20):
            cx = rng.uniform(0.2 * w, 0.8 * w)
            cy = rng.uniform(0.2 * h, 0.8 * h)
            mask = _pet_mask(rng, h, w, cx, cy, body)
            if not fg.any() or (mask & fg).sum() < 0.15 * mask.sum():
                break
        hue, sat, val = _FUR[int(rng.integers(len(_FUR)))]
        color = _hsv_to_rgb((hue + rng.uniform(-8, 8)) % 360, np.clip(sat + rng.uniform(-0.1, 0.1), 0, 1),
                            np.clip(val + rng.uniform(-0.1, 0.1), 0, 1))
        fur = _smooth_noise(rng, h, w, rng.uniform(2, 5))[..., None] * rng.uniform(8, 18)
        shade = (_direction(rng, h, w)[..., None] - 0.5) * rng.uniform(20, 50)
        pet = color + fur + shade
        region = mask.astype(bool)
        img[region] = pet[region]
        fg |= mask
    img = cv2.GaussianBlur(img, (3, 3), 0.7)
    label = np.full((h, w), 2, np.uint8)
    label[cv2.dilate(fg, np.ones((5, 5), np.uint8)) > 0] = 3
    label[cv2.erode(fg, np.ones((3, 3), np.uint8)) > 0] = 1
    return img, label


def make_trimap_sample(out_dir="data/sample_trimap", num_images=40, size=(256, 256), seed=0):
    """Write a trimap-style semantic set (see the module docstring); returns the label PNG paths.

    ``size`` is (width, height).
    """
    w, h = int(size[0]), int(size[1])
    if min(w, h) < 64:
        raise ValueError(f"image size {w}x{h} is too small (at least 64x64)")
    images_dir = os.path.join(out_dir, "images")
    ann_dir = os.path.join(out_dir, "annotations")
    os.makedirs(images_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "classes.json"), TRIMAP_CLASSES)
    paths, keep_img, keep_ann = [], set(), set()
    for i in range(int(num_images)):
        rng = np.random.default_rng([int(seed), i, 1])
        img, label = _trimap_image(rng, w, h)
        stem = f"pet_{i:04d}"
        write_bytes(os.path.join(images_dir, stem + ".jpg"), _encode_jpeg(img))
        ann_path = os.path.join(ann_dir, stem + ".png")
        write_bytes(ann_path, _encode_png(label))
        paths.append(ann_path)
        keep_img.add(stem + ".jpg")
        keep_ann.add(stem + ".png")
    _remove_stale(images_dir, r"pet_\d{4,}\.jpg", keep_img)
    _remove_stale(ann_dir, r"pet_\d{4,}\.png", keep_ann)
    return paths


# --------------------------------------------------------------------------------------------
def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m segkit.data.sample",
        description="Write a deterministic sample data set (LabelMe instances or trimap labels).")
    parser.add_argument("--kind", choices=("instances", "trimap"), default="instances")
    parser.add_argument("--out", default=None,
                        help="output folder (default data/sample, or data/sample_trimap for --kind trimap)")
    parser.add_argument("--num-images", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.num_images < 0:
        parser.error("--num-images must be >= 0")
    if args.kind == "instances":
        out = args.out or "data/sample"
        paths = make_instance_sample(out, args.num_images, seed=args.seed)
        shapes = 0
        for p in paths:
            with open(p, encoding="utf-8") as f:
                shapes += len(json.load(f)["shapes"])
        print(f"wrote {len(paths)} LabelMe files ({shapes} polygons, classes {', '.join(CLASSES)}) to {out}")
    else:
        out = args.out or "data/sample_trimap"
        paths = make_trimap_sample(out, args.num_images, seed=args.seed)
        print(f"wrote {len(paths)} images with trimap labels (1 pet, 2 background, 3 outline) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
