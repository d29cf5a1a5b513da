"""Facts about image files read from their header, without decoding the pixels."""

import io

from PIL import Image

EXIF_ORIENTATION = 0x0112
# Orientations 5-8 turn the image by 90 degrees: the displayed width is the stored height.
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)
# What every command takes for an image file by its name (folders are listed by it); the content
# decides the format when the file is read.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pbm", ".pgm", ".ppm")
FORMAT_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "GIF": ".gif", "WEBP": ".webp"}


def image_size(source):
    """(width, height, PIL format) of an image file or bytes, after its EXIF orientation: the size
    detectron2's ``read_image`` and LabelMe show, which the COCO file must declare."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        width, height = im.size
        try:
            orientation = im.getexif().get(EXIF_ORIENTATION, 1)
        except Exception:  # broken EXIF: detectron2's read_image ignores it the same way
            orientation = 1
        fmt = im.format
    if orientation in _TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    return width, height, fmt
