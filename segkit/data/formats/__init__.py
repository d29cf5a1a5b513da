"""One reader per annotation format; each turns a LOCAL source folder into
:class:`~segkit.data.folder_writer.SourceImage` objects for :mod:`segkit.data.folder_writer`.

Every reader module offers ``NAME``, ``detect(src_dir) -> Detection or None`` (the evidence it
found, said to the user) and ``read(src_dir, log, options) -> ReadResult``. A remote source is
materialised into a local folder first, then read the same way.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Detection:
    """Why a folder looks like a format. ``marker``: the evidence is a file (or folder) of that format's
    own (the Open Images CSV, a COCO JSON, data.yaml, VOC's SegmentationObject/, a LabelMe JSON);
    False when only generic folder names matched (images/ with masks/, labels/ or instances/), which
    other formats' downloads contain too: a marker then decides (importer.detect_format)."""
    evidence: str
    marker: bool = True


@dataclass
class ImportOptions:
    labels: list = None  # class names in category-id order (others reported and skipped), None: the source's
    classes: list = None  # keep only these class names (e.g. one class of Open Images)
    exclude: list = field(default_factory=list)  # folders not to read (the output folder inside the source)


@dataclass
class ReadResult:
    """What a reader found: images (SourceImage), class names in id order (None: the labels found,
    sorted), how many annotation files it looked at."""
    images: list = field(default_factory=list)
    categories: list = None
    num_files: int = 0


def keep_class(name, options):
    """Whether annotations of class ``name`` are imported (``--classes`` / ``--labels``)."""
    if options.classes is not None and name not in options.classes:
        return False
    return options.labels is None or name in options.labels


def keep_reported(name, options, log, file, where):
    """:func:`keep_class`, reporting a dropped annotation: a class not in ``--labels`` is a problem of
    ``file`` (``where``: the annotation in it), one left out by ``--classes`` is only counted."""
    if keep_class(name, options):
        return True
    if options.labels is not None and name not in options.labels:
        log.problem(file, "unknown label", f"{where}: label {name!r} not in --labels, skipped")
    else:
        log.skip("annotations of classes not in --classes")
    return False


def final_categories(found, options):
    """Category names in id order: ``--labels``, else the source's order restricted to ``--classes``."""
    if options.labels is not None:
        return list(options.labels)
    if found is None:
        return None
    return [c for c in found if options.classes is None or c in options.classes]
