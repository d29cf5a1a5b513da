"""Turning names (class names, image names, dataset names) into file names that are safe and unique."""

import os
import re


def safe_filename(name, fallback="file"):
    """``name`` usable as a file name on every OS: anything but letters, digits, ``-_.`` -> ``_``;
    no leading/trailing dots or underscores (no hidden files, no ``..``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("._") or fallback


def unique_name(stem, used, extension=""):
    """``stem + extension``, or ``stem_2 + extension``, ``stem_3``... when taken. ``used`` (a set,
    updated) holds lower-cased names: names differing only in case clash on macOS and Windows."""
    candidate, k = stem + extension, 1
    while candidate.lower() in used:
        k += 1
        candidate = f"{stem}_{k}{extension}"
    used.add(candidate.lower())
    return candidate


def is_inside(path, root):
    """True when ``path`` names a place under ``root``, judged on the names (``..`` in an annotation's
    image path cannot escape the folder); a symbolic link the user placed inside counts as inside."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    return rel != os.pardir and not rel.startswith(os.pardir + os.sep) and not os.path.isabs(rel)
