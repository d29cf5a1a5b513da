"""Finding and sizing images. Images are opened by content (PIL), never trusted by extension:
web-collected sets hold PNG and WEBP files named .jpg."""

import os

from segkit.data.image_files import IMAGE_EXTENSIONS, image_size


def is_hidden(name):
    return name.startswith(".")  # also macOS' "._name" AppleDouble files found in real archives


def list_images(folder, recursive=True):
    """Image files under ``folder`` (by extension, case-insensitive), sorted, hidden files skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d)) if recursive else []
        found += [os.path.join(dirpath, f) for f in sorted(filenames)
                  if not is_hidden(f) and f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def posix_rel(path, root):
    return os.path.relpath(path, root).replace(os.sep, "/")


def sized_image(path, log, rel):
    """(width, height) after EXIF orientation, or None after reporting an unreadable image."""
    try:
        width, height, _ = image_size(path)
    except Exception as e:  # OSError, PIL.UnidentifiedImageError, DecompressionBombError
        log.problem(rel, "unreadable image", f"unreadable image ({type(e).__name__}: {e})")
        return None
    return width, height


def placed_name(rel):
    """Where an image goes under the data folder's images/: its path in the source, without a leading
    ``images/`` folder (the data folder already has one)."""
    parts = rel.split("/")
    return "/".join(parts[1:]) if len(parts) > 1 and parts[0].lower() in ("images", "jpegimages") else rel
