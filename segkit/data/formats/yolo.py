"""Ultralytics YOLO-seg: one ``.txt`` per image, a line ``class x1 y1 x2 y2 ...`` per object with
coordinates normalised to 0..1 (in the EXIF-upright frame, like Ultralytics reads images).

Layouts: ``images/{train,val}/`` + ``labels/{train,val}/`` or ``train/images`` + ``train/labels``, or
flat ``images/`` + ``labels/`` (Label Studio's YOLO export, with ``classes.txt``). The label file of
an image is found as Ultralytics finds it: the last ``images`` folder of its path becomes ``labels``
and the extension ``.txt``. An image without a label file is a negative. Class names come from
``data.yaml`` (``names`` a list or a dict), else ``classes.txt``. The split comes from data.yaml's
``train``/``val``/``test`` entries (a folder, a ``.txt`` list of images, or a list of those; relative
to ``path`` or the YAML's folder, Roboflow's ``../train/images`` included), else from the folder
names (``train``, ``val``/``valid``/``validation``, ``test``). ``labels.cache`` is Ultralytics' own cache.
"""

import glob
import os

from segkit.data.folder_writer import SOURCE_SPLITS, SourceImage
from segkit.data.formats import Detection, ReadResult, final_categories, keep_reported
from segkit.data.formats.annotation import polygon_annotation
from segkit.data.file_names import is_inside
from segkit.data.formats.images import list_images, placed_name, posix_rel, sized_image

NAME = "yolo"


def _yaml_files(src_dir):
    return sorted(glob.glob(os.path.join(src_dir, "*.yaml")) + glob.glob(os.path.join(src_dir, "*.yml")))


def _yaml_docs(src_dir, log):
    """(relative path, parsed top-level YAML) of each readable one; unreadable ones are reported."""
    import yaml

    docs = []
    for path in _yaml_files(src_dir):
        rel = posix_rel(path, src_dir)
        try:
            with open(path, encoding="utf-8") as f:
                docs.append((rel, yaml.safe_load(f)))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            log.problem(rel, "unreadable YAML", f"unreadable YAML ({str(e).splitlines()[0]})")
    return docs


def read_splits(src_dir, docs, log):
    """{absolute image folder or image file: split} from the first YAML with train/val/test entries;
    entries that do not resolve inside SRC are left to the folder names."""
    for _, doc in docs:
        if not isinstance(doc, dict) or not any(k in doc for k in ("train", "val", "test")):
            continue
        base = src_dir
        if isinstance(doc.get("path"), str) and os.path.isdir(os.path.join(src_dir, doc["path"])):
            base = os.path.join(src_dir, doc["path"])
        found = {}
        for key in ("train", "val", "test"):
            entries = doc.get(key)
            for entry in entries if isinstance(entries, list) else [entries]:
                if not isinstance(entry, str):
                    continue
                path = os.path.normpath(os.path.join(base, entry))
                if not os.path.exists(path) and entry.startswith("../"):  # Roboflow writes ../train/images
                    path = os.path.normpath(os.path.join(base, entry[3:]))
                if not os.path.exists(path) or not is_inside(path, src_dir):
                    continue
                if os.path.isdir(path):
                    found[path] = SOURCE_SPLITS[key]
                elif path.lower().endswith(".txt"):  # one image per line, relative to the list (Ultralytics)
                    try:
                        with open(path, encoding="utf-8") as f:
                            lines = [line.strip() for line in f if line.strip()]
                    except (OSError, UnicodeDecodeError) as e:
                        log.problem(posix_rel(path, src_dir), "unreadable image list", f"unreadable image list ({e})")
                        continue
                    for line in lines:
                        found[os.path.normpath(os.path.join(os.path.dirname(path), line))] = SOURCE_SPLITS[key]
        return found
    return {}


def _split_from(splits, path):
    """The split data.yaml gives ``path`` (its own entry or the nearest folder listed), or None."""
    while True:
        if path in splits:
            return splits[path]
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


def read_names(src_dir, log, docs):
    """Class names by id from data.yaml (or any top-level YAML with ``names``), else classes.txt; None.
    ``docs``: the folder's YAML files (:func:`_yaml_docs`)."""
    for rel, doc in docs:
        names = doc.get("names") if isinstance(doc, dict) else None
        if isinstance(names, dict):
            try:
                return [str(names[k]) for k in sorted(names, key=int)], rel
            except (TypeError, ValueError):
                log.problem(rel, "bad names", "names: keys are not class ids")
                continue
        if isinstance(names, list):
            return [str(n) for n in names], rel
    path = os.path.join(src_dir, "classes.txt")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()], "classes.txt"
    return None, None


def label_path(image_path, src_dir):
    """Ultralytics' rule inside the source folder: the last ``images`` folder becomes ``labels``; None
    when the image lies in no ``images`` folder."""
    rel = "/" + posix_rel(image_path, src_dir)
    head, sep, tail = rel.rpartition("/images/")
    if not sep:
        return None
    return os.path.join(src_dir, *(head + "/labels/" + os.path.splitext(tail)[0] + ".txt").split("/"))


def _label_files(src_dir):
    return glob.glob(os.path.join(src_dir, "**", "labels", "**", "*.txt"), recursive=True)


def detect(src_dir):
    labels = _label_files(src_dir)
    if not labels:
        return None
    yamls = [os.path.basename(p) for p in _yaml_files(src_dir)]
    names = yamls[0] if yamls else ("classes.txt" if os.path.isfile(os.path.join(src_dir, "classes.txt")) else None)
    # .txt files in a labels/ folder alone are common to many downloads; a names file is YOLO's own
    return Detection(f"YOLO label files ({len(labels)} in labels/ folders, {names or 'no names file'})",
                     marker=names is not None)


def split_of(rel):
    for part in rel.lower().split("/")[:-1]:
        if part in SOURCE_SPLITS:
            return SOURCE_SPLITS[part]
    return None


def _parse_line(line, k, num_classes):
    """``(class id, flat normalised coordinates)`` or ``(None, reason)``."""
    fields = line.split()
    try:
        cls = int(fields[0])
        coords = [float(v) for v in fields[1:]]
    except ValueError:
        return None, f"line {k}: not numbers"
    if num_classes is not None and not 0 <= cls < num_classes:
        return None, f"line {k}: class id {cls} out of range (0..{num_classes - 1})"
    if len(coords) == 4:
        return None, f"line {k}: a box (detection label), not a polygon"
    if len(coords) % 2:
        return None, f"line {k}: odd number of coordinates ({len(coords)})"
    if len(coords) < 6:
        return None, f"line {k}: polygon with fewer than 3 points"
    if any(not 0 <= v <= 1 for v in coords):
        return None, f"line {k}: coordinates outside 0..1"
    return cls, coords


def read(src_dir, log, options):
    src_dir = os.path.abspath(src_dir)
    docs = _yaml_docs(src_dir, log)
    names, names_file = read_names(src_dir, log, docs)
    yaml_splits = read_splits(src_dir, docs, log)
    excluded = tuple(os.path.abspath(e) + os.sep for e in options.exclude)
    image_paths = [p for p in list_images(src_dir) if label_path(p, src_dir) and not p.startswith(excluded)]
    result = ReadResult()
    images, used = [], set()
    for path in image_paths:
        rel = posix_rel(path, src_dir)
        labels = label_path(path, src_dir)
        source_file = posix_rel(labels, src_dir) if os.path.isfile(labels) else rel
        size = sized_image(path, log, rel)
        if size is None:
            continue
        width, height = size
        annotations = []
        if os.path.isfile(labels):
            result.num_files += 1
            try:
                with open(labels, encoding="utf-8") as f:
                    lines = f.read().splitlines()
            except (OSError, UnicodeDecodeError) as e:
                log.problem(source_file, "unreadable label file", f"unreadable label file ({e})")
                continue
            for k, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                cls, coords = _parse_line(line, k, len(names) if names is not None else None)
                if cls is None:
                    log.problem(source_file, coords.split(": ", 1)[1], f"{coords}, skipped")
                    continue
                name = names[cls] if names is not None else str(cls)
                if not keep_reported(name, options, log, source_file, f"line {k}"):
                    continue
                pixels = [v * (width if i % 2 == 0 else height) for i, v in enumerate(coords)]
                ann = polygon_annotation(name, [pixels], width, height)
                if ann is None:
                    log.problem(source_file, "covers no pixel", f"line {k}: polygon covers no pixel, skipped")
                    continue
                used.add(name)
                annotations.append(ann)
        images.append(SourceImage(source_file=source_file, image_name=placed_name(rel), width=width, height=height,
                                  image_file=path, annotations=annotations,
                                  split=_split_from(yaml_splits, os.path.normpath(path)) or split_of(rel)))
    read_labels = {os.path.normpath(label_path(p, src_dir)) for p in image_paths}
    for path in sorted(_label_files(src_dir)):
        if os.path.normpath(path) not in read_labels and os.path.basename(path) != "classes.txt" \
                and not path.startswith(excluded):
            log.problem(posix_rel(path, src_dir), "label file without an image",
                        "no image for this label file (images/ <-> labels/, same stem), skipped")
    if names is None:
        log.notes["no data.yaml or classes.txt: classes named by their ids"] += 1
        names = sorted(used, key=int)
    result.images = images
    result.categories = final_categories([n for n in names if n in used] if options.labels is None else names, options)
    return result
