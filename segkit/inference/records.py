"""What ``predict.py --input ... --output OUT`` writes, named in one place, and the per-image records.

    OUT/overlays/<name>.png              every image (instance or U-Net overlay)
    OUT/masks/<name>/<index>_<class>.png Mask R-CNN, unless --no-masks
    OUT/class_maps/<name>.png            U-Net
    OUT/masked/, label_maps/, side_by_side/<name>.png   with --masked / --label-map / --gt-json
    OUT/per_image/<name>.json            the image's record, written after its outputs
    OUT/instance_maps/<name>.png         in place of masks/<name>/ when those would be too many pixels
    OUT/results.json, OUT/images.json, OUT/counts.csv   the summary of every recorded image, at the end

A record holds the image's COCO results (without ``image_id``: ids are given at the end, 1..N in
input order), its size, its input path or URL, and ``made_by``: what made it (the checkpoint's
size and sha256, the --config-file's, the score threshold of each class, the tiles, other --opts,
which outputs and overlay colours). A record is the proof that an image is done: ``--skip-done``
skips the images that have one, and refuses a folder whose records another set-up made (its
results and ours would be mixed). A run without ``--skip-done`` first removes what an earlier run
wrote for its images, so an image that fails this time keeps nothing of the earlier run.

With ``--tta`` (TEST.AUG.ENABLED) the record holds the augmentation's sizes and flip.
"""

import hashlib
import json
import os

RECORDS_DIR = "per_image"
OVERLAYS = "overlays"
MASKS = "masks"  # a folder per image: masks/<name>/<index>_<class>.png
CLASS_MAPS = "class_maps"
MASKED = "masked"
LABEL_MAPS = "label_maps"
SIDE_BY_SIDE = "side_by_side"
INSTANCE_MAPS = "instance_maps"  # in place of masks/<name>/ for thousands of instances of a huge image
PNG_DIRS = (OVERLAYS, CLASS_MAPS, MASKED, LABEL_MAPS, SIDE_BY_SIDE, INSTANCE_MAPS)  # <dir>/<name>.png
OUTPUT_DIRS = (*PNG_DIRS, MASKS, RECORDS_DIR)  # every folder of per-image files we write
RESULTS_JSON = "results.json"
IMAGES_JSON = "images.json"
COUNTS_CSV = "counts.csv"  # instances per image and class (segkit/inference/counts.py)

# Record keys.
FILE = "file"  # the input path or URL, as listed: a name may belong to another input in a later run
SOURCE = "source"  # its file name in images.json
HEIGHT = "height"
WIDTH = "width"
RESULTS = "results"
MADE_BY = "made_by"
# made_by keys.
WEIGHTS = "weights"
CONFIG_FILE = "config_file"
SCORE_THRESHOLDS = "score_thresholds"
TILE = "tile"
TTA = "tta"  # test-time augmentation: None when off
OPTS = "opts"
OUTPUTS = "outputs"
IDENTITY_KEYS = (WEIGHTS, CONFIG_FILE)  # files: compared by content (size, sha256), not by name
# --opts that change where a model runs, not what it predicts, or that TILE or TTA already hold.
OPTS_NOT_RECORDED = ("MODEL.DEVICE", "TEST.TILE_", "TEST.AUG.")


def record_rel(name):
    """The record of output stem ``name``, relative to the output folder ("/"-separated)."""
    return f"{RECORDS_DIR}/{name}.json"


def record_path(folder, name):
    return os.path.join(folder, RECORDS_DIR, f"{name}.json")


def make_record(file, source, height, width, results, made_by):
    return {FILE: file, SOURCE: source, HEIGHT: int(height), WIDTH: int(width), RESULTS: results,
            MADE_BY: made_by}


def parse_record(data, file):
    """The record in ``data`` (bytes) when it is one of input ``file``, else None (unreadable, or the
    stem belongs to another input now)."""
    try:
        record = json.loads(data)
    except ValueError:
        return None
    return record if isinstance(record, dict) and record.get(FILE) == file else None


def owned(rel, names):
    """True when ``rel`` (relative, "/"-separated) is a per-image output of one of ``names``: what a
    rerun may remove. Nothing else in the output folder is ours to touch."""
    parts = rel.split("/")
    if len(parts) == 2 and parts[0] in PNG_DIRS:
        return parts[1].endswith(".png") and parts[1][:-len(".png")] in names
    if len(parts) == 2 and parts[0] == RECORDS_DIR:
        return parts[1].endswith(".json") and parts[1][:-len(".json")] in names
    return len(parts) == 3 and parts[0] == MASKS and parts[1] in names and parts[2].endswith(".png")


def file_identity(path):
    """{file, size, sha256} of ``path``: a copy on another machine is the same file, a retrained
    checkpoint under the same name is not."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return {"file": os.path.basename(path), "size": os.path.getsize(path), "sha256": sha.hexdigest()}


def made_by(args, predictor, outputs):
    """What a record of this run says made it. ``outputs``: the per-image folders the run writes."""
    cfg = predictor.cfg
    thresholds = None
    if not predictor.semantic:  # the model's SCORE_THRESH_TEST, raised per class by the checkpoint's
        floor = predictor.confidence_threshold
        thresholds = {n: max(floor, predictor.class_thresholds.get(n, floor)) for n in predictor.class_names}
    tile = None
    if cfg.TEST.TILE_SIZE > 0:  # TEST.TILE_BATCH only changes the speed
        tile = {"size": int(cfg.TEST.TILE_SIZE), "overlap": float(cfg.TEST.TILE_OVERLAP),
                "full_pass": bool(cfg.TEST.TILE_FULL_PASS), "merge_ios": float(cfg.TEST.TILE_MERGE_IOS)}
    tta = None
    if cfg.TEST.AUG.ENABLED:
        tta = {"min_sizes": [int(v) for v in cfg.TEST.AUG.MIN_SIZES], "max_size": int(cfg.TEST.AUG.MAX_SIZE),
               "flip": bool(cfg.TEST.AUG.FLIP)}
    opts = list(args.opts or [])
    pairs = [[str(k), str(v)] for k, v in zip(opts[::2], opts[1::2])
             if not str(k).startswith(OPTS_NOT_RECORDED)]
    return {WEIGHTS: file_identity(args.weights),
            CONFIG_FILE: file_identity(args.config_file) if args.config_file else None,
            SCORE_THRESHOLDS: thresholds, TILE: tile, TTA: tta, OPTS: pairs,
            OUTPUTS: {"folders": sorted(outputs), "color_mode": args.color_mode}}


def _same(key, ours, theirs):
    if key in IDENTITY_KEYS and ours and theirs:
        return (ours.get("size"), ours.get("sha256")) == (theirs.get("size"), theirs.get("sha256"))
    return ours == theirs


def _show(key, value):
    if value is None or value == []:
        return "none"
    if key in IDENTITY_KEYS:
        return f"{value.get('file')} (sha256 {str(value.get('sha256'))[:12]})"
    if key == SCORE_THRESHOLDS:
        return ", ".join(f"{n} {t:g}" for n, t in value.items())
    if key == TILE:
        return (f"{value['size']} px, overlap {value['overlap']:g}, full pass {value['full_pass']}, "
                f"merge IoS {value['merge_ios']:g}")
    if key == TTA:
        return f"sizes {value['min_sizes']}, max {value['max_size']}, flip {value['flip']}"
    if key == OPTS:
        return " ".join(f"{k} {v}" for k, v in value)
    if key == OUTPUTS:
        return f"{', '.join(value.get('folders', []))}; color mode {value.get('color_mode')}"
    return json.dumps(value)


def differences(ours, record):
    """["what: ours now, theirs in the records", ...]: where ``record`` was made otherwise than this run."""
    theirs = record.get(MADE_BY)
    if not isinstance(theirs, dict):
        return ["settings: not recorded (an earlier version of predict.py wrote them)"]
    return [f"{key.replace('_', ' ')}: {_show(key, ours.get(key))} now, {_show(key, theirs.get(key))} in the records"
            for key in ours if not _same(key, ours.get(key), theirs.get(key))]
