"""A tuning set with many classes and few examples of each, made from real photos (issue 36, item 5).

Real object cut-outs (every annotated instance of the LabelMe folders given as sources) and
textured synthetic shapes (``SHAPE_CLASSES``, filled with patches of the same real photos) are
pasted onto real backgrounds: the source photos whose objects cover at most ``MAX_BACKGROUND_HOLE``
of them, with their annotated objects and ignore regions inpainted away (OpenCV's Telea
inpainting), randomly cropped, resized and flipped. Written as a
LabelMe folder (``labels.txt``, ``many_<i>.jpg`` + ``many_<i>.json``) that labelme2coco.py converts.

With the shared controllers frames (3 classes) and LabelMe's example photos (6 classes) as sources
there are 9 real classes and 5 shape classes: 14. Each class appears ``per_class`` times in the
whole set (3 to 6 by default: about 2 to 5 in training after the converter's 80/20 split), 1 to 3
objects per image, later objects in front: each polygon is the *visible* part (two polygons with
one ``group_id`` when an object is cut in two); placements that leave an earlier object less than
half visible are redrawn. Cut-outs are scaled, flipped and brightened at random; a class with one
real cut-out (LabelMe's ``bottle``) repeats that one object. How far this is from real photos:
docs/training.md ("A many-class tuning set").

The output depends on the seed and on the sources only (same inputs, byte-identical files); the
sources are read, never written. Licences: the set inherits those of its sources (the controllers
frames are MIT; LabelMe's example photos are PASCAL VOC images under Flickr's terms), so it is
built where it is used, not shipped.

CLI::

    python -m segkit.data.many_classes --sources DIR [DIR ...] [--out DIR] [--seed S]
"""

import argparse
import os
import sys

import cv2
import numpy as np

from segkit.data.atomic import write_bytes, write_text
from segkit.data.labelme import (
    BACKGROUND_LABEL,
    IGNORE_LABEL,
    ConversionLog,
    find_labelme_files,
    labelme_document,
    labelme_shape,
    mask_to_polygons,
    read_labelme_file,
    write_labelme_json,
)
from segkit.data.sample import _encode_jpeg, _has_hole, _remove_stale

SHAPE_CLASSES = ("star", "arrow", "cross", "hexagon", "crescent")  # no holes: polygons cannot hold one
MIN_VISIBLE_FRACTION = 0.5  # an earlier object must stay at least this visible
MIN_PIECE_AREA = 30  # visible pieces smaller than this (px) are not annotated
MAX_SOURCE_IMAGES = 8  # photos taken from each source folder, evenly spread (video frames repeat)
MAX_BACKGROUND_HOLE = 0.3  # a photo gives a background when its objects cover at most this share
OBJECT_SIZE = (0.25, 0.6)  # longer side of a pasted object, as a fraction of the image's shorter side


class SourceError(ValueError):
    """A source folder that cannot give cut-outs (the message names it)."""


def _decode(image):
    if image.image_file is not None:
        data = np.fromfile(image.image_file, np.uint8)
    else:
        data = np.frombuffer(image.image_bytes, np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise SourceError(f"{image.image_file or image.json_rel}: unreadable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _instance_mask(instance, height, width):
    mask = np.zeros((height, width), np.uint8)
    for shape in instance.shapes:
        if shape.polygon is not None:
            cv2.fillPoly(mask, [np.round(np.asarray(shape.polygon).reshape(-1, 2)).astype(np.int32)], 1)
        elif shape.mask is not None:
            h, w = shape.mask.shape
            region = mask[shape.mask_y:shape.mask_y + h, shape.mask_x:shape.mask_x + w]
            region[shape.mask[:region.shape[0], :region.shape[1]]] = 1
    return mask.astype(bool)


def load_sources(folders, max_images=MAX_SOURCE_IMAGES):
    """(cut-outs {label: [(RGB crop, bool mask crop)]}, backgrounds [RGB], photos [RGB]) from LabelMe
    folders. Up to ``max_images`` photos per folder, evenly spread over its sorted files."""
    cutouts, backgrounds, photos = {}, [], []
    for folder in folders:
        if not os.path.isdir(folder):
            raise SourceError(f"{folder}: not a folder")
        files = sorted(find_labelme_files(folder))
        if not files:
            raise SourceError(f"{folder}: no LabelMe JSON files")
        picks = sorted(set(np.linspace(0, len(files) - 1, min(max_images, len(files))).round().astype(int)))
        for k in picks:
            log = ConversionLog()
            image = read_labelme_file(files[k], folder, log)
            if image is None:
                raise SourceError(f"{files[k]}: not usable as a source ({', '.join(log.problems) or 'no image'})")
            rgb = _decode(image)
            covered = np.zeros(rgb.shape[:2], bool)
            for instance in image.instances:
                mask = _instance_mask(instance, *rgb.shape[:2])
                covered |= mask
                if instance.label in (IGNORE_LABEL, BACKGROUND_LABEL) or mask.sum() < MIN_PIECE_AREA * 4:
                    continue
                ys, xs = np.nonzero(mask)
                box = slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)
                cutouts.setdefault(instance.label, []).append((rgb[box].copy(), mask[box].copy()))
            hole = cv2.dilate(covered.astype(np.uint8), np.ones((9, 9), np.uint8))
            backgrounds.append((hole.mean(), rgb, hole))
            photos.append(rgb)
    # Inpainting fills a large hole with a smear: photos mostly covered by objects (LabelMe's
    # examples) give cut-outs and textures, not backgrounds, unless no photo is mostly free.
    usable = [b for b in backgrounds if b[0] <= MAX_BACKGROUND_HOLE] or [min(backgrounds, key=lambda b: b[0])]
    return cutouts, [cv2.inpaint(rgb, hole, 5, cv2.INPAINT_TELEA) for _, rgb, hole in usable], photos


def _shape_mask(rng, cls, size):
    """bool mask (size x size) of one synthetic shape, randomly rotated."""
    s = int(size)
    mask = np.zeros((s, s), np.uint8)
    c, r = (s - 1) / 2.0, s / 2.0 - 1
    rot = rng.uniform(0, 2 * np.pi)

    def ring_points(n, radii):
        a = rot + np.arange(n) * 2 * np.pi / n
        return np.int32(np.round(np.stack([c + radii * np.cos(a), c + radii * np.sin(a)], 1)))

    if cls == "star":
        cv2.fillPoly(mask, [ring_points(10, np.tile([r, r * 0.45], 5))], 1)
    elif cls == "hexagon":
        cv2.fillPoly(mask, [ring_points(6, np.full(6, r))], 1)
    elif cls == "arrow":  # a shaft and a head, along a random direction
        u = np.array([np.cos(rot), np.sin(rot)])
        v = np.array([-u[1], u[0]])
        outline = [(-r, -0.18 * r), (0.1 * r, -0.18 * r), (0.1 * r, -0.55 * r), (r, 0), (0.1 * r, 0.55 * r),
                   (0.1 * r, 0.18 * r), (-r, 0.18 * r)]
        cv2.fillPoly(mask, [np.int32(np.round([c + a * u + b * v for a, b in outline]))], 1)
    elif cls == "cross":
        arm = r * 0.32
        for angle in (rot, rot + np.pi / 2):
            box = cv2.boxPoints(((c, c), (2 * r, 2 * arm), np.degrees(angle)))
            cv2.fillPoly(mask, [np.int32(np.round(box))], 1)
    else:  # crescent: a disc minus a shifted disc
        cv2.circle(mask, (int(c), int(c)), int(r), 1, -1)
        off = r * 0.5
        cv2.circle(mask, (int(round(c + off * np.cos(rot))), int(round(c + off * np.sin(rot)))), int(r * 0.85), 0, -1)
    return mask.astype(bool)


def _texture(rng, photos, h, w):
    """A random patch of a real photo, resized to h x w, with a random colour cast."""
    photo = photos[int(rng.integers(len(photos)))]
    ph, pw = photo.shape[:2]
    side = int(rng.uniform(0.15, 0.4) * min(ph, pw))
    y, x = int(rng.integers(0, ph - side + 1)), int(rng.integers(0, pw - side + 1))
    patch = cv2.resize(photo[y:y + side, x:x + side], (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    return np.clip(patch * rng.uniform(0.6, 1.4, 3), 0, 255)


def _object(rng, label, cutouts, photos, longest):
    """(float RGB patch, bool mask) of one object of class ``label``, its longer side ``longest``."""
    if label in SHAPE_CLASSES:
        mask = _shape_mask(rng, label, longest)
        return _texture(rng, photos, *mask.shape), mask
    rgb, mask = cutouts[label][int(rng.integers(len(cutouts[label])))]
    scale = longest / max(mask.shape)
    size = (max(4, int(round(mask.shape[1] * scale))), max(4, int(round(mask.shape[0] * scale))))
    rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    if rng.random() < 0.5:
        rgb, mask = rgb[:, ::-1], mask[:, ::-1]
    return np.clip(rgb.astype(np.float32) * rng.uniform(0.8, 1.2), 0, 255), mask


def _background(rng, backgrounds, w, h):
    bg = backgrounds[int(rng.integers(len(backgrounds)))]
    bh, bw = bg.shape[:2]
    scale = rng.uniform(0.6, 1.0)
    ch = min(bh, int(round(bw * h / w * scale)), int(round(bh * scale)))
    cw = min(bw, int(round(ch * w / h)))
    y, x = int(rng.integers(0, bh - ch + 1)), int(rng.integers(0, bw - cw + 1))
    out = cv2.resize(bg[y:y + ch, x:x + cw], (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    return out[:, ::-1].copy() if rng.random() < 0.5 else out


def _compose(rng, labels, cutouts, backgrounds, photos, w, h):
    """(float RGB image, [(label, [polygon, ...])]) with the objects of ``labels`` pasted in order."""
    img = _background(rng, backgrounds, w, h)
    ids = np.zeros((h, w), np.int32)  # 0 background, k = k-th placed object
    placed = []  # (label, full mask in the image)
    for label in labels:
        for _try in range(30):
            longest = rng.uniform(*OBJECT_SIZE) * min(w, h)
            patch, mask = _object(rng, label, cutouts, photos, longest)
            ph, pw = mask.shape
            if ph >= h or pw >= w:
                continue
            y, x = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
            full = np.zeros((h, w), bool)
            full[y:y + ph, x:x + pw] = mask
            trial = ids.copy()
            trial[full] = len(placed) + 1
            # An earlier object must stay mostly visible and without a hole (its polygon would cover
            # the object in front).
            if all((trial == k).sum() >= MIN_VISIBLE_FRACTION * m.sum() and not _has_hole((trial == k).astype(np.uint8))
                   for k, (_, m) in enumerate(placed, 1)):
                ids = trial
                placed.append((label, full))
                # Feathered by one pixel so that the cut edge is not a hard aliased step.
                alpha = cv2.GaussianBlur(mask.astype(np.float32), (3, 3), 0.7)[..., None]
                region = img[y:y + ph, x:x + pw]
                img[y:y + ph, x:x + pw] = region * (1 - alpha) + patch * alpha
                break
    annotations = []
    for k, (label, _) in enumerate(placed, start=1):
        polygons = mask_to_polygons((ids == k).astype(np.uint8), min_area=MIN_PIECE_AREA)
        if polygons:
            annotations.append((label, polygons))
    return img, annotations


def _plan(rng, classes, per_class, per_image):
    """Labels per image: each class ``per_class`` times (drawn per class), shuffled, cut into images of
    ``per_image`` objects (drawn per image; fewer when only repeats are left), no class twice in one image."""
    pool = [c for c in classes for _ in range(int(rng.integers(per_class[0], per_class[1] + 1)))]
    rng.shuffle(pool)
    images = []
    while pool:
        n = int(rng.integers(per_image[0], per_image[1] + 1))
        chosen = []
        for label in list(pool):  # the first label always fits: no image is empty
            if len(chosen) == n:
                break
            if label not in chosen:
                chosen.append(label)
                pool.remove(label)
        images.append(chosen)
    return images


def make_many_class_set(sources, out_dir="data/many_classes", size=(320, 240), seed=0,
                        per_class=(3, 6), per_image=(1, 3)):
    """Write the set (see the module docstring) into ``out_dir``; returns (JSON paths, classes)."""
    w, h = int(size[0]), int(size[1])
    if min(w, h) < 64:
        raise ValueError(f"image size {w}x{h} is too small (at least 64x64)")
    if not 1 <= per_class[0] <= per_class[1] or not 1 <= per_image[0] <= per_image[1]:
        raise ValueError(f"per_class {per_class} and per_image {per_image} must be (min, max) with 1 <= min <= max")
    cutouts, backgrounds, photos = load_sources(sources)
    if not cutouts:
        raise SourceError(f"{', '.join(map(str, sources))}: no annotated objects to cut out")
    classes = tuple(sorted(cutouts)) + SHAPE_CLASSES
    rng = np.random.default_rng([int(seed), 36])
    plan = _plan(rng, classes, per_class, per_image)
    os.makedirs(out_dir, exist_ok=True)
    write_text(os.path.join(out_dir, "labels.txt"), "\n".join((IGNORE_LABEL, BACKGROUND_LABEL) + classes) + "\n")
    paths, keep = [], {"labels.txt"}
    for i, labels in enumerate(plan):
        img, annotations = _compose(np.random.default_rng([int(seed), i, 1]), labels, cutouts, backgrounds, photos, w, h)
        stem = f"many_{i:04d}"
        image_path, json_path = os.path.join(out_dir, stem + ".jpg"), os.path.join(out_dir, stem + ".json")
        write_bytes(image_path, _encode_jpeg(img))
        shapes = []
        for group, (label, polygons) in enumerate(annotations, start=1):
            group_id = group if len(polygons) > 1 else None
            shapes.extend(labelme_shape(label, points, group_id) for points in polygons)
        write_labelme_json(json_path, labelme_document(shapes, image_path, json_path, w, h), overwrite=True)
        paths.append(json_path)
        keep.update((stem + ".jpg", stem + ".json"))
    _remove_stale(out_dir, r"many_\d{4,}\.(jpg|json)", keep)
    return paths, classes


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m segkit.data.many_classes",
        description="Write a many-class, few-example LabelMe set: real cut-outs and textured shapes on real "
                    "backgrounds, from LabelMe folders of real photos.")
    parser.add_argument("--sources", nargs="+", required=True,
                        help="LabelMe folders whose annotated objects are cut out and whose photos give backgrounds")
    parser.add_argument("--out", default="data/many_classes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, nargs=2, default=(3, 6), metavar=("MIN", "MAX"),
                        help="objects of each class in the whole set (default 3 6)")
    args = parser.parse_args(argv)
    try:
        paths, classes = make_many_class_set(args.sources, args.out, seed=args.seed, per_class=tuple(args.per_class))
    except (SourceError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} LabelMe files in {len(classes)} classes ({', '.join(classes)}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
