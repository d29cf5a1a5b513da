"""Reading and writing LabelMe annotation files (what the LabelMe program reads and writes).

The JSON is parsed here; LabelMe itself is never imported (GPL, and its Python API is gone since
7.0). Conventions followed (see ../shared/detectron2-notes.md):

- ``imagePath`` is relative to the JSON file (Windows separators accepted); when that file is
  missing the embedded base64 ``imageData`` is used. A path that leaves the input folder is
  refused (and ``imageData`` used if present).
- Points are in the EXIF-rotated frame (LabelMe and detectron2's ``read_image`` both apply the
  orientation tag), so the image size is the rotated one.
- Shapes with the same ``(label, group_id)`` are one instance; ``group_id: null`` means one
  instance per shape.
- Regions: ``polygon`` (>= 3 points), ``rectangle`` (2 opposite corners, any order), ``circle``
  (centre + a point on the rim; turned into a polygon), ``oriented_rectangle`` (4 points), and
  ``mask`` (a base64 PNG of the box region whose top-left corner is the first point, LabelMe 5.3+).
  ``point``, ``line`` and ``linestrip`` are not regions: skipped and counted.
- ``__ignore__`` marks an ignored region (becomes a crowd annotation); shapes labelled
  ``_background_`` are skipped and counted. Other label names are kept exactly as written.

Problems (a line ``FILE: reason`` each) and by-design skips go to a :class:`ConversionLog`.

Writing (predictions for model-assisted labelling, the sample set, export of a COCO set) builds
LabelMe 5.x documents - what LabelMe 5 and 6 open and what the reader above reads back: ``imagePath``
relative to the JSON file, ``imageData`` null (LabelMe 6's default), the rotated image's size.
"""

import base64
import binascii
import io
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PureWindowsPath

import numpy as np
from PIL import Image

from segkit.data.atomic import write_text
from segkit.data.file_names import is_inside
from segkit.data.image_files import FORMAT_EXTENSIONS, image_size

LABELME_VERSION = "5.5.0"
IGNORE_LABEL = "__ignore__"
BACKGROUND_LABEL = "_background_"
POLYGON_TYPES = ("polygon", "rectangle", "circle", "oriented_rectangle")
NON_REGION_TYPES = ("point", "line", "linestrip")
OUTSIDE = "points outside the image (clipped)"  # summary key


class ConversionLog:
    """Collects problems (reported, fatal with --strict) and by-design skips (only counted)."""

    def __init__(self, echo=None):
        self.problems = []  # "FILE: reason" lines, in the order found
        self.skipped = Counter()  # summary key -> number of items
        self.notes = Counter()  # neutral facts for the summary (e.g. images taken from imageData)
        self._echo = echo

    def problem(self, file, key, detail=None, count=1):
        """A problem with ``file``; ``key`` groups it in the summary, ``detail`` is the full reason."""
        line = f"{file}: {detail or key}"
        self.problems.append(line)
        self.skipped[key] += count
        if self._echo is not None:
            self._echo(line)

    def skip(self, key, count=1):
        self.skipped[key] += count


@dataclass
class Shape:
    index: int  # position in the file's "shapes" list, for messages
    label: str
    shape_type: str
    polygon: list = None  # flat [x0, y0, x1, y1, ...] in image pixels, clipped to the image
    mask: np.ndarray = None  # bool array of the mask box, placed at (mask_x, mask_y)
    mask_x: int = 0
    mask_y: int = 0


@dataclass
class Instance:
    label: str
    group_id: object
    shapes: list = field(default_factory=list)

    @property
    def iscrowd(self):
        return self.label == IGNORE_LABEL


@dataclass
class LabelMeImage:
    json_rel: str  # the JSON file, relative to the input folder (POSIX separators)
    image_file: str  # absolute path of the image file, or None when imageData is used
    image_bytes: bytes  # the decoded imageData when image_file is None
    image_name: str  # where the image goes under images/ (before collision handling)
    width: int
    height: int
    instances: list = field(default_factory=list)


def read_labels_file(path):
    """Class names from a labels file, in order; LabelMe's ``__ignore__``/``_background_`` lines skipped."""
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f]
    names = [n for n in names if n and n not in (IGNORE_LABEL, BACKGROUND_LABEL)]
    dupes = sorted(n for n, c in Counter(names).items() if c > 1)
    if dupes:
        raise ValueError(f"{path}: duplicate labels {dupes}")
    return names


def find_labelme_files(root, exclude=()):
    """All ``*.json`` under ``root`` (recursive, sorted, hidden folders and ``exclude`` skipped)."""
    root = os.path.abspath(root)
    excluded = {os.path.abspath(e) for e in exclude}
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and os.path.join(dirpath, d) not in excluded
        )
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(".json"))
    return found


def _posix_rel(path, root):
    return os.path.relpath(path, root).replace(os.sep, "/")


def _locate_image(data, json_path, root, log, rel):
    """Returns (image_file, image_bytes, image_name) or None after reporting why."""
    image_path = data.get("imagePath")
    image_path = PureWindowsPath(image_path).as_posix() if isinstance(image_path, str) and image_path else None
    json_dir = os.path.dirname(json_path)
    candidate = None
    if image_path:
        candidate = os.path.normpath(os.path.join(json_dir, image_path))
        if not is_inside(candidate, root):
            log.problem(rel, "imagePath escapes the input folder", f"imagePath {image_path!r} escapes the input folder")
            candidate = None
    if candidate is not None and os.path.isfile(candidate):
        return candidate, None, _posix_rel(candidate, root)
    embedded = data.get("imageData")
    if isinstance(embedded, str) and embedded:
        try:
            blob = base64.b64decode(embedded, validate=False)
        except (binascii.Error, ValueError) as e:
            log.problem(rel, "unreadable imageData", f"imageData is not base64: {e}")
            return None
        stem = os.path.splitext(os.path.basename(image_path or json_path))[0]
        name = os.path.normpath(os.path.join(os.path.relpath(json_dir, root), stem)).replace(os.sep, "/")
        log.notes["images taken from embedded imageData"] += 1
        return None, blob, name  # the extension is added once the format is known
    if candidate is not None or not image_path:
        what = f"image {image_path!r} not found" if image_path else "no imagePath"
        log.problem(rel, "missing image", f"{what} and no embedded imageData")
    return None


def _points(shape):
    pts = shape.get("points")
    if not isinstance(pts, list):
        return None
    out = []
    for p in pts:
        if not (isinstance(p, (list, tuple)) and len(p) == 2):
            return None
        x, y = p
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y)):
            return None
        if not (math.isfinite(x) and math.isfinite(y)):
            return None
        out.append((float(x), float(y)))
    return out


def _polygon_area(pts):
    return 0.5 * abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1])))


def circle_polygon(cx, cy, radius):
    """Vertices every ~4 px of the rim (12..128): rim error under 0.3 px, like a drawn circle."""
    n = max(12, min(128, int(math.ceil(2 * math.pi * radius / 4))))
    angles = [2 * math.pi * k / n for k in range(n)]
    return [(round(cx + radius * math.cos(a), 3), round(cy + radius * math.sin(a), 3)) for a in angles]


def _decode_mask(b64):
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        arr = np.asarray(im)
    return arr.any(axis=2) if arr.ndim == 3 else arr != 0


def _region(shape, index, label, shape_type, pts, width, height, log, rel):
    """Shape -> Shape with a clipped polygon or a placed mask; None after reporting why."""
    where = f"shape {index} ({label!r}, {shape_type})"
    outside = sum(1 for x, y in pts if x < 0 or y < 0 or x > width or y > height)
    if shape_type == "mask":
        if len(pts) < 1 or not isinstance(shape.get("mask"), str):
            log.problem(rel, "malformed mask shape", f"{where}: no base64 'mask' data or no box points")
            return None
        try:
            mask = _decode_mask(shape["mask"])
        except Exception as e:  # binascii.Error, PIL.UnidentifiedImageError, ...
            log.problem(rel, "malformed mask shape", f"{where}: mask is not a base64 PNG ({e})")
            return None
        x0 = int(min(x for x, _ in pts))
        y0 = int(min(y for _, y in pts))
        mh, mw = mask.shape
        # Clip the box to the image (the part outside is lost).
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + mw, width), min(y0 + mh, height)
        if (cx0, cy0, cx1, cy1) != (x0, y0, x0 + mw, y0 + mh):
            log.problem(rel, OUTSIDE, f"{where}: mask box reaches outside the {width}x{height} image, clipped")
        if cx1 <= cx0 or cy1 <= cy0:
            log.problem(rel, "zero-area shape", f"{where}: mask lies outside the image")
            return None
        mask = mask[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
        if not mask.any():
            log.problem(rel, "zero-area shape", f"{where}: empty mask")
            return None
        return Shape(index, label, shape_type, mask=mask, mask_x=cx0, mask_y=cy0)

    if shape_type == "rectangle":
        if len(pts) != 2:
            log.problem(rel, "malformed shape", f"{where}: needs 2 corner points, has {len(pts)}")
            return None
        (xa, ya), (xb, yb) = pts
        x0, x1, y0, y1 = min(xa, xb), max(xa, xb), min(ya, yb), max(ya, yb)
        poly = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    elif shape_type == "circle":
        if len(pts) != 2:
            log.problem(rel, "malformed shape", f"{where}: needs centre and rim point, has {len(pts)} points")
            return None
        (cx, cy), (px, py) = pts
        radius = math.hypot(px - cx, py - cy)
        if radius == 0:
            log.problem(rel, "zero-area shape", f"{where}: radius 0")
            return None
        poly = circle_polygon(cx, cy, radius)
        # The rim may leave the image although both points lie inside: clip silently then.
    else:  # polygon, oriented_rectangle
        if len(pts) < 3:
            log.problem(rel, "polygon with fewer than 3 points", f"{where}: {len(pts)} point(s), needs at least 3")
            return None
        poly = pts
    if outside:
        log.problem(rel, OUTSIDE, f"{where}: {outside} point(s) outside the {width}x{height} image, clipped")
    poly = [(min(max(x, 0.0), float(width)), min(max(y, 0.0), float(height))) for x, y in poly]
    if _polygon_area(poly) == 0:
        log.problem(rel, "zero-area shape", f"{where}: zero area" + (" after clipping" if outside else ""))
        return None
    return Shape(index, label, shape_type, polygon=[c for xy in poly for c in xy])


def read_json_file(path, log, where, kind="JSON"):
    """``(True, value)`` of a JSON file (a UTF-8 BOM allowed, as Windows tools write it), or
    ``(False, None)`` after reporting ``where: unreadable KIND (error)``."""
    try:
        with open(path, "rb") as f:
            return True, json.loads(f.read().decode("utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        log.problem(where, f"unreadable {kind}", f"unreadable {kind} ({e})")
        return False, None


def read_labelme_file(json_path, root, log):
    """One LabelMe JSON -> :class:`LabelMeImage` (image located and sized, shapes grouped into
    instances, labels as written), or None when the file is unusable. Every problem goes to ``log``.
    Which labels are kept (``--labels``) is decided per folder, once renaming is known
    (:func:`segkit.data.coco_convert.read_labelme_folder`)."""
    root = os.path.abspath(root)
    json_path = os.path.abspath(json_path)
    rel = _posix_rel(json_path, root)
    readable, data = read_json_file(json_path, log, rel)
    if not readable:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        log.skip("JSON files that are not LabelMe (no 'shapes')")  # e.g. a COCO file: not a problem
        return None

    located = _locate_image(data, json_path, root, log, rel)
    if located is None:
        return None
    image_file, image_bytes, image_name = located
    try:
        width, height, fmt = image_size(image_file if image_file is not None else image_bytes)
    except Exception as e:  # OSError, PIL.UnidentifiedImageError, DecompressionBombError
        what = "image file" if image_file is not None else "imageData"
        log.problem(rel, "unreadable image", f"unreadable {what} ({type(e).__name__}: {e})")
        return None
    if image_file is None:
        image_name += FORMAT_EXTENSIONS.get(fmt, "." + (fmt or "img").lower())
    declared = (data.get("imageWidth"), data.get("imageHeight"))
    if declared != (None, None) and declared != (width, height):
        log.problem(
            rel,
            "image size differs from JSON",
            f"JSON says {declared[0]}x{declared[1]}, image is {width}x{height} (after EXIF orientation)",
        )
        return None

    image = LabelMeImage(rel, image_file, image_bytes, image_name, width, height)
    by_key = {}
    for index, shape in enumerate(data["shapes"]):
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str):
            log.problem(rel, "malformed shape", f"shape {index}: not an object with a string 'label'")
            continue
        label = shape["label"]
        shape_type = shape.get("shape_type") or "polygon"  # LabelMe 3.x files have no shape_type
        if shape_type in NON_REGION_TYPES:
            log.skip(f"{shape_type} shapes (not regions)")
            continue
        if label == BACKGROUND_LABEL:
            log.skip(f"{BACKGROUND_LABEL} shapes")
            continue
        if shape_type not in POLYGON_TYPES and shape_type != "mask":
            log.problem(rel, "unsupported shape type",
                        f"shape {index} ({label!r}): unsupported shape_type {shape_type!r}")
            continue
        pts = _points(shape)
        if pts is None:
            log.problem(rel, "malformed shape", f"shape {index} ({label!r}): 'points' is not a list of [x, y] numbers")
            continue
        region = _region(shape, index, label, shape_type, pts, width, height, log, rel)
        if region is None:
            continue
        group_id = shape.get("group_id")
        key = (label, ("shape", index) if group_id is None else ("group", json.dumps(group_id, sort_keys=True)))
        if key not in by_key:
            by_key[key] = Instance(label, group_id)
            image.instances.append(by_key[key])
        by_key[key].shapes.append(region)
    return image


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
UPSCALE = 4  # contours are traced on the mask enlarged this many times: outlines within 1/8 px


def mask_to_polygons(mask, epsilon=0.5, min_area=10):
    """Outlines of a binary mask as LabelMe point lists ([[x, y], ...], >= 3 points), one per
    connected piece (holes filled), largest first; pieces under ``min_area`` pixels dropped.

    The outline runs along the pixel edges, pixel (x, y) covering [x, x+1) x [y, y+1) - how
    LabelMe displays images and how pycocotools (labelme2coco.py, detectron2) fills polygons - so
    the polygon converted back to a mask gives the same pixels. (A polygon through the centres of
    the boundary pixels, ``cv2.findContours`` on the mask itself, loses a half-pixel rim when
    filled: a 10 px wide object comes back at IoU ~0.8.) ``epsilon``: cv2.approxPolyDP tolerance
    in pixels."""
    import cv2  # here, not at the top: labelme2coco.py (reading only) starts without it

    m = np.asarray(mask, dtype=bool)
    ys, xs = np.nonzero(m)
    if len(xs) == 0:
        return []
    x0, y0 = int(xs.min()), int(ys.min())
    crop = np.pad(m[y0:ys.max() + 1, x0:xs.max() + 1], 1).astype(np.uint8)
    big = cv2.resize(crop, None, fx=UPSCALE, fy=UPSCALE, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    pieces = []
    for contour in contours:
        area = cv2.contourArea(contour) / UPSCALE ** 2
        if area < min_area:
            continue
        approx = cv2.approxPolyDP(contour, epsilon * UPSCALE, True) if epsilon > 0 else contour
        if len(approx) < 3:
            approx = contour
        pts = (approx.reshape(-1, 2).astype(np.float64) + 0.5) / UPSCALE + (x0 - 1, y0 - 1)
        pieces.append((area, [[round(float(x), 3), round(float(y), 3)] for x, y in pts]))
    pieces.sort(key=lambda p: -p[0])
    return [p[1] for p in pieces]


def labelme_shape(label, points, group_id=None, shape_type="polygon", description="", flags=None, mask=None):
    """One entry of a LabelMe ``shapes`` list (keys in LabelMe's order). ``mask``: the base64 PNG
    of a ``mask`` shape (see :func:`labelme_mask_shape`)."""
    return {
        "label": label,
        "points": points,
        "group_id": group_id,
        "description": description,
        "shape_type": shape_type,
        "flags": {} if flags is None else flags,
        "mask": mask,
    }


def labelme_mask_shape(label, mask, group_id=None, description=""):
    """A LabelMe ``mask`` shape (LabelMe 5.3+) for a full-image bool mask, or None if it is empty:
    the two points are the inclusive corners of the mask's box, ``mask`` a 0/1 PNG of that box.
    Holds any region exactly (holes included), which polygons cannot."""
    m = np.asarray(mask, dtype=bool)
    ys, xs = np.nonzero(m)
    if len(xs) == 0:
        return None
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    buf = io.BytesIO()
    Image.fromarray(m[y0:y1 + 1, x0:x1 + 1].astype(np.uint8), mode="L").save(buf, format="PNG")
    encoded = base64.b64encode(buf.getvalue()).decode("ascii")
    return labelme_shape(label, [[float(x0), float(y0)], [float(x1), float(y1)]], group_id, "mask",
                         description, mask=encoded)


def labelme_document(shapes, image_path, json_path, width, height):
    """The dict LabelMe writes for an image: ``imagePath`` relative to ``json_path``'s folder."""
    rel = os.path.relpath(os.path.abspath(image_path), os.path.dirname(os.path.abspath(json_path)))
    return {
        "version": LABELME_VERSION,
        "flags": {},
        "shapes": shapes,
        "imagePath": rel.replace(os.sep, "/"),
        "imageData": None,
        "imageHeight": int(height),
        "imageWidth": int(width),
    }


def write_labelme_json(json_path, document, overwrite=False):
    """Write ``document`` to ``json_path`` atomically; an existing file is kept unless
    ``overwrite`` (a user's corrections are never lost). Returns False if it skipped."""
    if os.path.exists(json_path) and not overwrite:
        return False
    write_text(json_path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return True
