"""Semantic-segmentation datasets, registered with detectron2's catalogs.

Every dataset registered here is a detectron2 *semantic* dataset: its dicts carry ``file_name``,
``sem_seg_file_name`` (a single-channel PNG of train ids), ``height``, ``width`` and ``image_id``;
its metadata carries ``stuff_classes``, ``stuff_colors``, ``ignore_label`` (255) and
``evaluator_type "sem_seg"``. detectron2's ``DatasetMapper`` and ``SemSegEvaluator`` read them as
they are. Three ways in:

1. COCO instance files (what ``labelme2coco.py`` writes): :func:`register_semantic_from_coco`
   paints the union of the instance masks of each class into one label PNG per image: background
   0, class k (k-th category by id) -> k, so ``stuff_classes = ["background", *thing_classes]``;
   ``iscrowd`` / ``ignore`` regions, bbox-only annotations and categories missing from the file
   become 255 (ignore). The PNGs are written once into a cache folder and rewritten when the
   JSON changes. :func:`register_semantic_data_dir` does it for every ``<split>.json`` of a
   converted data folder, as ``<prefix>_sem_<split>`` (``mydata_sem_train``, ...).
2. A folder of images plus label PNGs whose pixel values are class ids, and a mapping file
   (JSON ``{"1": "pet", "2": "background", "3": "outline"}``, the Oxford-IIIT Pets trimap
   layout): :func:`register_semantic_folder`. Values are remapped to contiguous train ids 0..K-1
   in the order of the mapping's numeric keys (several values may share a name; the name
   ``"__ignore__"`` maps a value to 255). A value missing from the mapping is reported (one log
   line naming the file and the values) and set to ignore, never used as a class.
3. LabelMe folders: convert them first (``python labelme2coco.py INPUT_DIR`` writes ``data/``
   with ``train.json`` / ``val.json`` / ``images/``), then way 1: ``register_semantic_data_dir("data")``.
"""

import hashlib
import json
import logging
import os

import numpy as np
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from segkit.data.atomic import atomic_path, write_json
from segkit.data.catalog import class_colors
from segkit.data.coco_masks import segmentation_to_mask
from segkit.data.image_files import image_size
from segkit.data.image_files import IMAGE_EXTENSIONS
from segkit.data.layout import DEFAULT_PREFIX, SEM_SEG_DIR, SPLITS, dataset_name, image_root, split_json

logger = logging.getLogger(__name__)

IGNORE_LABEL = 255
IGNORE_NAME = "__ignore__"
BACKGROUND = "background"
_STAMP = "_source.json"
_CACHE_VERSION = 1  # bump when the way labels are painted changes: caches are then rewritten

__all__ = [
    "IGNORE_LABEL",
    "register_semantic_from_coco",
    "register_semantic_data_dir",
    "register_semantic_folder",
    "read_class_mapping",
]


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------
def _register(name, loader, classes, **meta):
    """(Re-)register ``name``; a no-op when it is already registered with the same ``meta``."""
    if name in DatasetCatalog.list():
        old = MetadataCatalog.get(name)
        if all(old.get(k) == v for k, v in meta.items()) and old.get("stuff_classes") == list(classes):
            return
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(
        stuff_classes=list(classes),
        stuff_colors=class_colors(len(classes)),
        ignore_label=IGNORE_LABEL,
        evaluator_type="sem_seg",
        **meta,
    )


def _read_stamp(cache_dir):
    try:
        with open(os.path.join(cache_dir, _STAMP), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _write_png(path, label):
    """Single-channel ("L") PNG: detectron2 reads labels with read_image(path, "L")."""
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(label, dtype=np.uint8), mode="L").save(tmp, format="PNG")


def _label_name(file_name):
    """Cache file name for an image path relative to the image root (sub-folders kept, flattened)."""
    rel = os.path.normpath(file_name)
    if os.path.isabs(rel) or rel.startswith(".."):
        rel = os.path.basename(rel)
    return os.path.splitext(rel)[0].replace(os.sep, "__") + ".png"


# --------------------------------------------------------------------------------------------
# 1. COCO instance files
# --------------------------------------------------------------------------------------------
def _box_mask(bbox, h, w):
    x, y, bw, bh = bbox
    m = np.zeros((h, w), bool)
    m[max(int(np.floor(y)), 0):int(np.ceil(y + bh)), max(int(np.floor(x)), 0):int(np.ceil(x + bw))] = True
    return m


def _coco_labels(coco, image):
    """Label map (uint8 H x W) of one COCO ``image`` entry, plus a list of problems found.

    ``coco`` is the loaded COCO dict with ``_anns_by_image`` and ``_cat_to_label`` added by the
    caller (see :func:`_convert_coco`). Larger objects are painted first so that smaller ones on
    top of them stay visible; ignore regions (iscrowd / ignore / unusable) are painted last.
    """
    h, w = int(image["height"]), int(image["width"])
    label = np.zeros((h, w), np.uint8)
    ignore = np.zeros((h, w), bool)
    problems = []
    painted = []
    for ann in coco["_anns_by_image"].get(image["id"], []):
        k = coco["_cat_to_label"].get(ann.get("category_id"))
        mask = segmentation_to_mask(ann.get("segmentation"), h, w)
        if mask is None:
            if ann.get("bbox"):
                mask = _box_mask(ann["bbox"], h, w)
                problems.append(f"annotation {ann.get('id')} has no usable segmentation (its box is ignored)")
                ignore |= mask
            continue
        if k is None:
            problems.append(f"annotation {ann.get('id')} has unknown category_id {ann.get('category_id')}")
            ignore |= mask
        elif ann.get("iscrowd", 0) or ann.get("ignore", 0):
            ignore |= mask
        else:
            painted.append((int(mask.sum()), k, mask))
    for _, k, mask in sorted(painted, key=lambda t: -t[0]):
        label[mask] = k
    label[ignore] = IGNORE_LABEL
    return label, problems


def _load_coco(json_file):
    with open(json_file, encoding="utf-8") as f:
        coco = json.load(f)
    cats = sorted(coco.get("categories", []), key=lambda c: c["id"])
    coco["_cat_to_label"] = {c["id"]: i + 1 for i, c in enumerate(cats)}
    by_image = {}
    for ann in coco.get("annotations", []):
        by_image.setdefault(ann["image_id"], []).append(ann)
    coco["_anns_by_image"] = by_image
    return coco, [c["name"] for c in cats]


def _convert_coco(json_file, image_root, cache_dir):
    """Dataset dicts of a COCO file; label PNGs (re)written into cache_dir when the JSON changed."""
    coco, _ = _load_coco(json_file)
    with open(json_file, "rb") as f:
        sha1 = hashlib.sha1(f.read()).hexdigest()
    stamp = _read_stamp(cache_dir)
    images = sorted(coco.get("images", []), key=lambda i: i["id"])
    dicts = []
    for img in images:
        dicts.append({
            "file_name": os.path.join(image_root, img["file_name"]),
            "sem_seg_file_name": os.path.join(cache_dir, _label_name(img["file_name"])),
            "height": int(img["height"]),
            "width": int(img["width"]),
            "image_id": img["id"],
        })
    fresh = (stamp.get("version") == _CACHE_VERSION and stamp.get("sha1") == sha1
             and all(os.path.isfile(d["sem_seg_file_name"]) for d in dicts))
    if fresh:
        problems = stamp.get("problems", [])
    else:
        problems = []
        for img, d in zip(images, dicts):
            label, found = _coco_labels(coco, img)
            problems += [f"{img['file_name']}: {p}" for p in found]
            _write_png(d["sem_seg_file_name"], label)
        write_json(os.path.join(cache_dir, _STAMP), {
            "version": _CACHE_VERSION, "json_file": os.path.abspath(json_file), "sha1": sha1,
            "problems": problems})
        logger.info(f"Wrote {len(dicts)} semantic label PNGs of {json_file} to {cache_dir}")
    for p in problems:
        logger.warning(f"{json_file}: {p}; set to ignore ({IGNORE_LABEL})")
    return dicts


def register_semantic_from_coco(name, json_file, image_root, cache_dir):
    """Register the COCO instance file ``json_file`` as the semantic dataset ``name``.

    Label PNGs go to ``cache_dir`` (written when the dataset is first loaded, rewritten when the
    JSON changes). ``stuff_classes`` = ``["background", *categories by id]``.
    """
    _, things = _load_coco(json_file)
    json_file, image_root, cache_dir = (os.fspath(p) for p in (json_file, image_root, cache_dir))
    _register(
        name,
        lambda: _convert_coco(json_file, image_root, cache_dir),
        [BACKGROUND, *things],
        json_file=json_file,
        image_root=image_root,
        sem_seg_root=cache_dir,
    )


def register_semantic_data_dir(data_dir="data", prefix=DEFAULT_PREFIX, cache_dir=None):
    """Register each ``<split>.json`` of a ``labelme2coco.py`` folder as ``<prefix>_sem_<split>``.

    Images are read from ``data_dir/images``; label PNGs are cached in
    ``cache_dir/<split>`` (default ``data_dir/sem_seg/<split>``). Returns the registered names.
    """
    names = []
    cache_dir = cache_dir or os.path.join(data_dir, SEM_SEG_DIR)
    for split in SPLITS:
        json_file = split_json(data_dir, split)
        if os.path.isfile(json_file):
            name = dataset_name(split, prefix, semantic=True)
            register_semantic_from_coco(name, json_file, image_root(data_dir),
                                        os.path.join(cache_dir, split))
            names.append(name)
    return names


# --------------------------------------------------------------------------------------------
# 2. image folder + label PNGs of class ids + mapping file
# --------------------------------------------------------------------------------------------
def read_class_mapping(classes_file):
    """``(classes, lut, listed)`` from a JSON ``{"<pixel value>": "<class name>"}`` file.

    ``classes`` are the distinct names (except ``__ignore__``) in the order of their smallest
    pixel value; ``lut`` is a 256-entry uint8 array: pixel value -> train id, 255 for ignore and
    for values the file does not list; ``listed`` is the set of pixel values the file names.
    """
    with open(classes_file, encoding="utf-8") as f:
        raw = json.load(f)
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{classes_file}: expected a JSON object {{\"<pixel value>\": \"<class name>\"}}")
    try:
        items = sorted((int(k), str(v)) for k, v in raw.items())
    except ValueError:
        raise ValueError(f"{classes_file}: keys must be pixel values (integers 0-255), got {list(raw)}") from None
    classes, lut = [], np.full(256, IGNORE_LABEL, np.uint8)
    for value, cls in items:
        if not 0 <= value <= 255:
            raise ValueError(f"{classes_file}: pixel value {value} is outside 0-255")
        if cls == IGNORE_NAME:
            continue
        if value == IGNORE_LABEL:
            raise ValueError(f"{classes_file}: pixel value {IGNORE_LABEL} is the ignore label; map it to "
                             f"\"{IGNORE_NAME}\" or use another value for class '{cls}'")
        if cls not in classes:
            classes.append(cls)
        lut[value] = classes.index(cls)
    if not classes:
        raise ValueError(f"{classes_file}: no classes besides {IGNORE_NAME}")
    if len(classes) >= IGNORE_LABEL:
        raise ValueError(f"{classes_file}: at most {IGNORE_LABEL - 1} classes")
    return classes, lut, {v for v, _ in items}


def _list_stems(folder, exts):
    out = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if not name.startswith(".") and ext.lower() in exts:
            out.setdefault(stem, os.path.join(folder, name))
    return out


def _short_list(names, n=5):
    names = sorted(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _convert_folder(image_dir, label_dir, classes_file, cache_dir):
    """Dataset dicts of an image folder + label folder; train-id PNGs cached in cache_dir."""
    _, lut, listed = read_class_mapping(classes_file)
    images = _list_stems(image_dir, IMAGE_EXTENSIONS)
    labels = _list_stems(label_dir, (".png",))
    if images.keys() - labels.keys():
        logger.warning(f"{label_dir}: no label PNG for {len(images.keys() - labels.keys())} image(s) "
                       f"({_short_list(images.keys() - labels.keys())}); skipped")
    if labels.keys() - images.keys():
        logger.warning(f"{image_dir}: no image for {len(labels.keys() - images.keys())} label PNG(s) "
                       f"({_short_list(labels.keys() - images.keys())}); skipped")
    stamp = _read_stamp(cache_dir)
    lut_key = hashlib.sha1(lut.tobytes() + bytes(sorted(listed))).hexdigest()
    old = stamp.get("files", {}) if stamp.get("version") == _CACHE_VERSION and stamp.get("lut") == lut_key else {}
    files, dicts, changed = {}, [], False
    for stem in sorted(images.keys() & labels.keys()):
        src, out = labels[stem], os.path.join(cache_dir, stem + ".png")
        st = os.stat(src)
        key = [st.st_mtime_ns, st.st_size]
        entry = old.get(stem)
        if not (entry and entry["src"] == key and os.path.isfile(out)):
            changed = True
            with Image.open(src) as im:
                raw = np.asarray(im)
            if raw.ndim != 2:
                logger.warning(f"{src}: label PNG has {raw.shape[2]} channels, expected one "
                               "(pixel value = class id); skipped")
                continue
            values = np.unique(raw)
            unknown = [int(v) for v in values if int(v) not in listed]
            entry = {"src": key, "height": int(raw.shape[0]), "width": int(raw.shape[1]),
                     "unknown": unknown, "image_size": list(image_size(images[stem])[1::-1])}
            if entry["image_size"] == [entry["height"], entry["width"]]:
                train_ids = np.full(raw.shape, IGNORE_LABEL, np.uint8)
                in_range = (raw >= 0) & (raw <= 255)  # 16-bit PNGs may hold larger values
                train_ids[in_range] = lut[raw[in_range].astype(np.intp)]
                _write_png(out, train_ids)
        files[stem] = entry
        if entry["unknown"]:
            logger.warning(f"{src}: label value(s) {', '.join(map(str, entry['unknown']))} not in "
                           f"{classes_file}; set to ignore ({IGNORE_LABEL})")
        if entry["image_size"] != [entry["height"], entry["width"]]:
            logger.warning(f"{src}: label is {entry['height']}x{entry['width']} but image {images[stem]} "
                           f"is {entry['image_size'][0]}x{entry['image_size'][1]}; skipped")
            continue
        dicts.append({"file_name": images[stem], "sem_seg_file_name": out, "height": entry["height"],
                      "width": entry["width"], "image_id": stem})
    if changed or files.keys() != old.keys():
        write_json(os.path.join(cache_dir, _STAMP), {"version": _CACHE_VERSION, "lut": lut_key,
                                                     "classes_file": os.path.abspath(classes_file),
                                                     "files": files})
    if not dicts:
        raise ValueError(f"no usable image/label pairs in {image_dir} and {label_dir}")
    return dicts


def register_semantic_folder(name, image_dir, label_dir, classes_file, cache_dir=None):
    """Register images + label PNGs of class ids (+ a mapping file) as the semantic dataset ``name``.

    Images and labels are paired by file stem (``pet_0001.jpg`` <-> ``pet_0001.png``); unpaired
    files are reported and skipped. Remapped train-id PNGs are cached in ``cache_dir`` (default
    ``<label_dir>_trainids`` next to ``label_dir``) and rewritten when a label or the mapping changes.
    """
    image_dir, label_dir, classes_file = (os.fspath(p) for p in (image_dir, label_dir, classes_file))
    classes, _, _ = read_class_mapping(classes_file)
    cache_dir = os.fspath(cache_dir) if cache_dir else os.path.normpath(label_dir) + "_trainids"
    _register(
        name,
        lambda: _convert_folder(image_dir, label_dir, classes_file, cache_dir),
        classes,
        image_root=image_dir,
        label_root=label_dir,
        classes_file=classes_file,
        sem_seg_root=cache_dir,
    )
