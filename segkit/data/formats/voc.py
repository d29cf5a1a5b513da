"""PASCAL VOC segmentation, and CVAT's "Segmentation mask 1.1" export of the same layout.

``JPEGImages/<id>.jpg`` (CVAT: possibly PNG files), ``SegmentationObject/<id>.png`` (instance masks),
``SegmentationClass/<id>.png`` (class masks), ``ImageSets/Segmentation/{train,val,trainval,test}.txt``;
the folder may sit inside ``VOCdevkit/VOC20xx/``.

- VOC: palette PNGs; object index k (1..N) is one instance, 255 the border / ignore band (left out);
  the class of an instance is the VOC class most of its pixels have in SegmentationClass.
- CVAT: RGB PNGs whose colours ``labelmap.txt`` lists (``label:r,g,b::``); every distinct colour of
  SegmentationObject is an instance, its class is the colour most of its pixels have in
  SegmentationClass.

Splits: ``train.txt`` and ``val.txt`` (``trainval.txt`` only when they are missing, ``test.txt`` as
test); images with an object mask that no list names get no split.
"""

import os
from collections import Counter

import numpy as np
from PIL import Image

from segkit.data.folder_writer import SourceImage
from segkit.data.formats import Detection, ReadResult, final_categories, keep_class
from segkit.data.formats.annotation import mask_annotation
from segkit.data.image_files import IMAGE_EXTENSIONS
from segkit.data.formats.images import is_hidden, placed_name, posix_rel, sized_image

NAME = "voc"
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
BORDER = 255


def find_root(src_dir):
    """The folder holding SegmentationObject/ (the source itself or up to two levels down)."""
    for depth_dirs in ([src_dir], sorted(os.path.join(src_dir, d) for d in os.listdir(src_dir))):
        for d in depth_dirs:
            if os.path.isdir(os.path.join(d, "SegmentationObject")):
                return d
    for d in sorted(os.listdir(src_dir)):
        sub = os.path.join(src_dir, d)
        if os.path.isdir(sub) and not is_hidden(d):
            for e in sorted(os.listdir(sub)):
                if os.path.isdir(os.path.join(sub, e, "SegmentationObject")):
                    return os.path.join(sub, e)
    return None


def detect(src_dir):
    root = find_root(src_dir)
    if root is None:
        return None
    variant = "CVAT labelmap.txt" if os.path.isfile(os.path.join(root, "labelmap.txt")) else "VOC palette"
    return Detection(f"PASCAL VOC layout ({posix_rel(root, src_dir)}/SegmentationObject/, {variant})")


def read_labelmap(path):
    """CVAT's labelmap.txt -> [(name, (r, g, b))]; comment lines start with '#'."""
    entries = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            name, _, rest = line.strip().partition(":")
            rgb = tuple(int(v) for v in rest.split(":")[0].split(","))
            entries.append((name, rgb))
    return entries


def _read_splits(root):
    lists = os.path.join(root, "ImageSets", "Segmentation")
    names = ["train", "val", "test"] if os.path.isfile(os.path.join(lists, "train.txt")) else ["trainval", "test"]
    split_of = {}
    for name in names:
        path = os.path.join(lists, f"{name}.txt")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        split_of.setdefault(line.split()[0], "train" if name == "trainval" else name)
    return split_of


def _find_image(root, image_id):
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        path = os.path.join(root, "JPEGImages", image_id + ext)
        if os.path.isfile(path):
            return path
    return None


def _load_png(path, rgb):
    with Image.open(path) as im:
        if rgb:
            return np.asarray(im.convert("RGB"))
        if im.mode not in ("P", "L"):
            raise ValueError(f"mode {im.mode}, expected a palette PNG")
        return np.asarray(im)


def _colour_ids(rgb):
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def read(src_dir, log, options):
    src_dir = os.path.abspath(src_dir)
    root = find_root(src_dir)
    result = ReadResult()
    if root is None:
        log.problem(".", "not a VOC folder", "no SegmentationObject/ folder")
        return result
    labelmap_file = os.path.join(root, "labelmap.txt")
    rgb = os.path.isfile(labelmap_file)
    if rgb:
        entries = read_labelmap(labelmap_file)
        colour_class = {(r << 16) | (g << 8) | b: n for n, (r, g, b) in entries}
        class_order = [n for n, _ in entries if n != "background"]
    else:
        class_order = list(VOC_CLASSES[1:])
    split_of = _read_splits(root)
    object_dir = os.path.join(root, "SegmentationObject")
    used = set()
    for file_name in sorted(os.listdir(object_dir)):
        if is_hidden(file_name) or not file_name.lower().endswith(".png"):
            continue
        image_id = os.path.splitext(file_name)[0]
        object_path = os.path.join(object_dir, file_name)
        object_rel = posix_rel(object_path, src_dir)
        class_path = os.path.join(root, "SegmentationClass", file_name)
        image_path = _find_image(root, image_id)
        result.num_files += 1
        if image_path is None:
            log.problem(object_rel, "missing image", f"no image JPEGImages/{image_id}.* for this mask, skipped")
            continue
        size = sized_image(image_path, log, posix_rel(image_path, src_dir))
        if size is None:
            continue
        try:
            objects = _load_png(object_path, rgb)
            classes = _load_png(class_path, rgb)
        except FileNotFoundError:
            log.problem(object_rel, "missing class mask", f"no SegmentationClass/{file_name}, skipped")
            continue
        except Exception as e:  # OSError, PIL.UnidentifiedImageError, ValueError (mode)
            log.problem(object_rel, "unreadable mask", f"unreadable mask ({type(e).__name__}: {e})")
            continue
        if objects.shape[:2] != (size[1], size[0]) or classes.shape[:2] != objects.shape[:2]:
            log.problem(object_rel, "mask size differs from image",
                        f"masks are {objects.shape[1]}x{objects.shape[0]} and {classes.shape[1]}x{classes.shape[0]}, "
                        f"image is {size[0]}x{size[1]}, skipped")
            continue
        if rgb:  # one int per colour: 0 is black (background)
            ids, class_ids = _colour_ids(objects), _colour_ids(classes)
        else:
            ids = objects.astype(np.int64)
            ids[ids == BORDER] = 0
            class_ids = classes
        annotations = []
        for instance_id in (int(v) for v in np.unique(ids) if v != 0):
            mask = ids == instance_id
            votes = Counter(int(v) for v in class_ids[mask])
            if rgb:
                names = [colour_class.get(v) for v, _ in votes.most_common()]
            else:
                names = [VOC_CLASSES[v] if v < len(VOC_CLASSES) else None for v, _ in votes.most_common() if v != BORDER]
            name = next((n for n in names if n and n != "background"), None)
            if name is None:
                log.problem(object_rel, "instance without a class",
                            f"instance {instance_id}: SegmentationClass gives it no known class, skipped")
                continue
            if not keep_class(name, options):
                if options.labels is not None and name not in options.labels:
                    log.problem(object_rel, "unknown label", f"instance {instance_id}: label {name!r} not in --labels, skipped")
                continue
            ann = mask_annotation(name, mask)
            if ann is not None:
                used.add(name)
                annotations.append(ann)
        result.images.append(SourceImage(source_file=object_rel, image_name=placed_name(posix_rel(image_path, root)),
                                         width=size[0], height=size[1], image_file=image_path,
                                         annotations=annotations, split=split_of.get(image_id)))
    result.categories = final_categories([c for c in class_order if c in used], options)
    return result
