"""Turning names (class names, image names, dataset names) into file names that are safe and unique."""

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
