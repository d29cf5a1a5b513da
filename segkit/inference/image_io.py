"""Turning whatever a user hands us into the 3-channel 8-bit image the model expects.

Accepted: a file path or an ``s3://``-style URL read through fsspec (EXIF orientation applied, as
detectron2's ``read_image`` and LabelMe do), a PIL image (EXIF applied too), or a numpy array (BGR like ``cv2.imread`` unless ``rgb=True``).
Grayscale, grayscale+alpha, RGBA, palette, CMYK, 16-bit and float images become 3-channel uint8:
alpha is dropped (as ``read_image`` does for training), 16-bit values are divided by 257 (full
range 0-65535 -> 0-255), float images in 0-1 are scaled to 0-255.
"""

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from segkit.data.remote import RemoteSourceError, is_remote, read_bytes

# Above this many pixels an upload is refused before it is decoded (20000 x 20000 is 400 MP).
DEFAULT_MAX_PIXELS = 64_000_000


class ImageLoadError(ValueError):
    """An input that is not a readable image (not an image, truncated, empty, or too large).

    ``reason``: what is wrong, in a few words; ``name``: the file's base name when there is one."""

    def __init__(self, reason, name=None):
        super().__init__(f"{name}: {reason}" if name else reason)
        self.reason = reason
        self.name = name


def _exif_transpose(im, in_place=False):
    """``in_place``: for an image we opened ourselves; Pillow otherwise returns a full copy even
    when there is nothing to turn (576 MB for a 144 MP photo)."""
    try:
        if in_place:
            ImageOps.exif_transpose(im, in_place=True)
            return im
        return ImageOps.exif_transpose(im)
    except Exception:  # broken EXIF blocks: fall back to detectron2's tolerant version
        try:
            from detectron2.data.detection_utils import _apply_exif_orientation
        except ImportError:  # the torch-free runtime (segkit.inference.runtime): the image as stored
            return im
        return _apply_exif_orientation(im)


def _array_to_uint8(arr):
    """Any-depth numpy image -> uint8 with the same channels."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype in (np.uint16, np.int32, np.uint32, np.int64) or arr.dtype == np.int16:
        # 16-bit images (PIL mode "I;16" opens as int32 "I"): full range 0..65535 -> 0..255.
        if arr.size and arr.max() <= 255 and arr.dtype != np.uint16:
            return arr.astype(np.uint8)
        return np.clip(np.round(arr.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        a = np.nan_to_num(arr.astype(np.float64))
        if a.size and a.max() <= 1.0:
            a = a * 255.0
        return np.clip(np.round(a), 0, 255).astype(np.uint8)
    raise ImageLoadError(f"unsupported image dtype {arr.dtype}")


def pil_to_rgb(im, owned=False):
    """PIL image of any mode -> HxWx3 uint8 RGB array (EXIF orientation applied; ``owned``: ``im``
    is ours to change, so it is turned in place)."""
    im = _exif_transpose(im, in_place=owned)
    mode = im.mode
    if mode in ("RGB",):
        return _rgb_array(im)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(im)
        if mode.startswith("I;16"):
            arr = arr.astype(np.uint16)
        return gray_or_color_to_rgb(_array_to_uint8(arr), rgb=True)
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    # RGBA, LA, PA, L, 1, CMYK, YCbCr, LAB, HSV, ...: PIL knows how to get to RGB.
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _rgb_array(im, rows=1024):
    """An RGB PIL image as a writable array, copied in strips of ``rows``: ``np.array(im)`` goes
    through one ``tobytes()`` of the whole image, so a 144 MP photo would briefly be held three
    times (PIL's 4-byte pixels, the bytes, the array) instead of twice."""
    w, h = im.size
    out = np.empty((h, w, 3), dtype=np.uint8)
    for y in range(0, h, rows):
        out[y:y + rows] = np.asarray(im.crop((0, y, w, min(h, y + rows))))
    return out


def gray_or_color_to_rgb(arr, rgb):
    """HxW, HxWx1, HxWx3, HxWx4 uint8 -> HxWx3 uint8 in RGB order."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ImageLoadError(f"expected an HxW or HxWxC image, got shape {arr.shape}")
    c = arr.shape[2]
    if c == 1:
        return np.repeat(arr, 3, axis=2)
    if c == 2:  # gray + alpha
        return np.repeat(arr[:, :, :1], 3, axis=2)
    if c in (3, 4):
        arr = arr[:, :, :3]
        return np.ascontiguousarray(arr if rgb else arr[:, :, ::-1])
    raise ImageLoadError(f"expected 1, 2, 3 or 4 channels, got {c}")


def open_image_file(path, max_pixels=DEFAULT_MAX_PIXELS):
    """Open ``path`` lazily and check it before decoding; raises ImageLoadError with a reason."""
    path = os.fspath(path)
    name = os.path.basename(path)
    source = path
    if is_remote(path):  # s3://... : streamed into memory, one image at a time
        try:
            source = io.BytesIO(read_bytes(path))
        except RemoteSourceError as e:
            raise ImageLoadError(str(e).split(": ", 1)[-1], name) from None
        if not source.getbuffer().nbytes:
            raise ImageLoadError("the file is empty (0 bytes)", name)
    elif not os.path.isfile(path):
        raise ImageLoadError("no such file", name)
    elif os.path.getsize(path) == 0:
        raise ImageLoadError("the file is empty (0 bytes)", name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                im = Image.open(source)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except UnidentifiedImageError:
        raise ImageLoadError("not an image (or a format Pillow cannot read)", name) from None
    except OSError as e:
        raise ImageLoadError(f"cannot be read: broken or truncated image file ({e})", name) from None
    w, h = im.size
    if max_pixels and w * h > max_pixels:
        im.close()
        raise ImageLoadError(
            f"{w}x{h} px ({w * h / 1e6:.0f} MP) is larger than the {max_pixels / 1e6:.0f} MP "
            f"accepted; downscale it first, or predict it in tiles (predict.py --tile SIZE).",
            name,
        )
    if w == 0 or h == 0:
        raise ImageLoadError(f"the image has no pixels ({w}x{h})", name)
    return im


def read_image_rgb(path, max_pixels=DEFAULT_MAX_PIXELS):
    """Read an image file as HxWx3 uint8 RGB, EXIF-rotated. Raises ImageLoadError on bad files."""
    im = open_image_file(path, max_pixels=max_pixels)
    name = os.path.basename(os.fspath(path))
    try:
        with im:
            im.load()  # a truncated file fails here, not later
            return pil_to_rgb(im, owned=True)
    except ImageLoadError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageLoadError(f"the image data is broken or truncated ({e})", name) from None


def to_rgb_uint8(image, rgb=False, max_pixels=DEFAULT_MAX_PIXELS):
    """Path / PIL image / numpy array -> HxWx3 uint8 RGB.

    Numpy arrays are taken as BGR (OpenCV's order, what ``cv2.imread`` returns) unless
    ``rgb=True``; single-channel arrays are grayscale whichever flag is given.
    """
    if isinstance(image, (str, Path, os.PathLike)):
        return read_image_rgb(image, max_pixels=max_pixels)
    if isinstance(image, Image.Image):
        return pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[2] not in (1, 2, 3, 4):
            raise ImageLoadError(f"expected HxWxC (channels last), got shape {image.shape}")
        return gray_or_color_to_rgb(_array_to_uint8(image), rgb=rgb)
    raise ImageLoadError(f"unsupported image type {type(image).__name__}")


def to_bgr_uint8(image, rgb=False, max_pixels=DEFAULT_MAX_PIXELS):
    """As :func:`to_rgb_uint8`, in BGR order (what detectron2's DefaultPredictor takes)."""
    return np.ascontiguousarray(to_rgb_uint8(image, rgb=rgb, max_pixels=max_pixels)[:, :, ::-1])
