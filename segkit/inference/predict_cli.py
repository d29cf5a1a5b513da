"""``python predict.py``: batch prediction in the shape of detectron2's demo/demo.py.

    python predict.py --input img.jpg more/ "shots/*.png" --output results/
    python predict.py --video-input clip.mp4 --output results/
    python predict.py --input new_images/ --labelme            # LabelMe JSON next to each image
    python predict.py --input s3://bucket/prefix --output s3://bucket/out   # images streamed, not mirrored
    python predict.py --input images/ --output results/ --num-gpus 2      # shared among 2 processes
    python predict.py --input ... --output ... --weights output/lite0 \
        --confidence-threshold 0.5 --opts MODEL.DEVICE cpu
    python predict.py --input images/ --output results/ --weights output/lite0/model_best.onnx   # exported

Writes into ``--output``:

- ``overlays/<name>.png`` - Visualizer overlay (U-Net: draw_sem_seg), at most ``--overlay-size``
  px on its longest side;
- ``masks/<name>/<index>_<class>.png`` - one binary PNG per instance (for thousands of instances
  of a huge image: ``instance_maps/<name>.png``, 16-bit, instance index + 1 per pixel);
- ``counts.csv`` - instances per image and class;
- ``class_maps/<name>.png`` - U-Net only: class index per pixel;
- ``masked/<name>.png`` / ``label_maps/<name>.png`` / ``side_by_side/<name>.png`` with
  ``--masked`` / ``--label-map`` / ``--gt-json COCO_FILE``;
- ``per_image/<name>.json`` - the image's record: its results and what made them (checkpoint,
  thresholds, tiles, options), written after its outputs; ``--skip-done`` continues a killed run
  from them (segkit/inference/records.py, segkit/inference/sharded_predict.py);
- ``results.json`` - COCO results (RLE masks, category ids 1..K, image ids 1..N in input order,
  each entry also naming its ``file_name``) and ``images.json``, the matching image list as a
  COCO file, so ``COCO("images.json").loadRes("results.json")`` works;
- with ``--video-input``: ``<video stem>.mp4``, the overlay video, and results per frame.

A rerun into the same ``--output`` replaces what an earlier run wrote for its images. An
``s3://`` output is uploaded image by image (``--rank`` and ``--video-input``: at the end).

A file that cannot be read is reported in one line and skipped; the run goes on (exit status 0
when at least one image was processed).
"""

import argparse
import glob
import json
import os
import sys
import warnings

from segkit.data.file_names import unique_name
from segkit.data.image_files import IMAGE_EXTENSIONS
from segkit.data.run_layout import NoModelError, resolve_weights
from segkit.data.remote import RemoteSourceError, is_remote, list_files, staged_output
from segkit.inference import records as rec
from segkit.inference import sharded_predict
from segkit.inference.image_io import DEFAULT_MAX_PIXELS, ImageLoadError, to_rgb_uint8
from segkit.inference.runtime import is_exported



def get_parser():
    p = argparse.ArgumentParser(
        prog="predict.py",
        description="Run a trained checkpoint on images or a video (detectron2 demo style).")
    p.add_argument("--input", nargs="+", metavar="PATH",
                   help="image files, folders (their images, recursively) or glob patterns")
    p.add_argument("--video-input", metavar="FILE", help="a video file")
    p.add_argument("--output", metavar="DIR", help="output folder (needed unless only --labelme)")
    p.add_argument("--config-file", metavar="FILE", default=None,
                   help="config (default: the one stored in the checkpoint)")
    p.add_argument("--weights", default=None, metavar="CHECKPOINT_OR_RUN",
                   help="a checkpoint, run folder or run name (default: the latest run's best checkpoint), "
                        "or an exported model (.onnx, with its .json sidecar beside it)")
    p.add_argument("--confidence-threshold", type=float, default=None,
                   help="minimum score of the instances kept, for every class (default: each "
                        "class's best-F1 threshold stored in the checkpoint by its evaluation, "
                        "else 0.5)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1)")
    p.add_argument("--color-mode", default="image", choices=["image", "segmentation", "bw"],
                   help="Visualizer ColorMode of the overlays (default image)")
    p.add_argument("--no-masks", action="store_true", help="do not write per-instance mask PNGs")
    p.add_argument("--overlay-size", type=int, default=DEFAULT_OVERLAY_SIZE, metavar="PX",
                   help="longest side of the overlay PNGs; larger images are drawn scaled down "
                        f"(default {DEFAULT_OVERLAY_SIZE}; 0: full resolution)")
    p.add_argument("--masked", action="store_true", help="also write the masked images (background black)")
    p.add_argument("--label-map", action="store_true", help="also write RGB label maps")
    p.add_argument("--gt-json", metavar="COCO_FILE",
                   help="also write ground truth | prediction side by side, GT from this COCO file")
    p.add_argument("--labelme", action="store_true",
                   help="write a LabelMe JSON next to each input image (model-assisted labelling)")
    p.add_argument("--overwrite", action="store_true",
                   help="with --labelme: replace existing LabelMe JSON files (default: keep them)")
    p.add_argument("--rank", choices=RANKINGS, default=None,
                   help="rank the input images by what to label next, write ranking_<method>.csv into "
                        "--output (default: the current folder), and predict only the --top K. "
                        "uncertainty: the model's doubt (segkit/loop/uncertainty.py); diversity: "
                        "picks spread over the pool, away from --labelled (segkit/loop/diversity.py); "
                        "uncertainty-diversity: both multiplied")
    p.add_argument("--labelled", default=None, metavar="PATH",
                   help="with --rank diversity / uncertainty-diversity: the images already labelled "
                        "(a data folder with trainval.json, a COCO file with images/ beside it, or a "
                        "folder of images); picks keep away from them")
    p.add_argument("--top", type=int, default=None, metavar="K",
                   help="with --rank: how many of the most uncertain images to predict / pre-label "
                        "(default 10)")
    p.add_argument("--tile", type=int, default=None, metavar="SIZE",
                   help="cut each image into SIZE x SIZE tiles run at native resolution, detections "
                        "merged at the seams (large images with small objects; TEST.TILE_SIZE)")
    p.add_argument("--tile-overlap", type=float, default=None, metavar="F",
                   help="with --tile: fraction of a tile shared with its neighbour (default 0.2)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation (detectron2's GeneralizedRCNNWithTTA, TEST.AUG.ENABLED): "
                        "each image at the sizes TEST.AUG.MIN_SIZES, flipped too, boxes merged and masks "
                        "averaged; Mask R-CNN only, not with --tile; slower by about the number of passes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    sharded_predict.add_arguments(p)
    p.add_argument("--opts", default=[], nargs=argparse.REMAINDER, metavar="KEY VALUE",
                   help="config overrides as KEY VALUE pairs (last on the line)")
    return p


def expand_inputs(items):
    """Files, folders (recursively, image extensions only) and globs -> (paths, missing)."""
    paths, missing = [], []
    for item in items:
        item = os.path.expanduser(item)
        if is_remote(item):
            try:
                paths += list_files(item, IMAGE_EXTENSIONS)
            except RemoteSourceError as e:
                missing.append(str(e))
        elif os.path.isdir(item):
            found = []
            for root, dirs, files in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [os.path.join(root, f) for f in sorted(files)
                          if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
            paths += found
        elif os.path.isfile(item):
            paths.append(item)
        elif glob.has_magic(item):
            matches = sorted(f for f in glob.glob(item, recursive=True) if os.path.isfile(f))
            paths += matches
            if not matches:
                missing.append(item)
        else:
            missing.append(item)
    seen, unique = set(), []
    for p in paths:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique, missing


def unique_names(paths):
    """Output stems, one per path, made unique ("a", "a_2", ...)."""
    used = set()
    return [unique_name(os.path.splitext(os.path.basename(p))[0] or "image", used) for p in paths]


# Above this many mask pixels per image, --tile runs write one instance map instead of a PNG
# per instance (a 12 MP photo with 80 instances stays below it and keeps its PNGs).
MAX_MASK_PIXELS = 2_000_000_000
DEFAULT_OVERLAY_SIZE = 4096


class Writer:
    """Writes every requested output of one prediction (folder names: segkit/inference/records.py)."""

    def __init__(self, args, predictor):
        self.args = args
        self.out = args.output
        self.results, self.images, self.counts = [], [], []
        self.class_names = predictor.class_names
        self.num_instances = 0

    def folders(self, semantic):
        """The per-image output folders this run writes."""
        a = self.args
        found = [rec.OVERLAYS, rec.CLASS_MAPS if semantic else None if a.no_masks else rec.MASKS,
                 rec.MASKED if a.masked else None, rec.LABEL_MAPS if a.label_map else None,
                 rec.SIDE_BY_SIDE if a.gt_json else None]
        return [f for f in found if f]

    def add(self, prediction, image_id, source_name):
        """Record one image's results and counts (no files written)."""
        from segkit.inference.coco_results import coco_results
        from segkit.inference.counts import class_counts

        h, w = prediction.image_size
        self.images.append((image_id, source_name, h, w))
        entries = coco_results(prediction, image_id, file_name=source_name)
        self.results += entries
        self.num_instances += len(prediction)
        self.counts.append((source_name, class_counts([] if prediction.is_semantic else entries, self.class_names)))

    def counts_line(self):
        """The per-class totals of every image so far, for the summary line."""
        from segkit.inference.counts import counts_line, total_counts

        return counts_line(total_counts(self.counts, self.class_names))

    def overlay(self, prediction):
        """The overlay, drawn at ``--overlay-size`` at most: a 12,000 px image drawn by matplotlib
        at full size takes gigabytes and minutes, and no screen shows it."""
        from segkit.inference import visualization as vis

        size = self.args.overlay_size
        shown = vis.downscale(prediction, size) if size else prediction
        return vis.draw_prediction(shown, mode=self.args.color_mode)

    def write(self, prediction, name, image_id, source_name):
        from segkit.inference import visualization as vis

        a = self.args
        self.add(prediction, image_id, source_name)
        if not self.out:
            return

        def png(folder):
            return os.path.join(self.out, folder, f"{name}.png")

        vis.save_png(self.overlay(prediction), png(rec.OVERLAYS))
        if prediction.is_semantic:
            vis.save_png(prediction.class_map(), png(rec.CLASS_MAPS))
        elif not a.no_masks:
            self.write_masks(prediction, name)
        if a.masked:
            vis.save_png(vis.masked_image(prediction), png(rec.MASKED))
        if a.label_map:
            vis.save_png(vis.label_map(prediction), png(rec.LABEL_MAPS))
        if a.gt_json:
            try:
                pair = vis.side_by_side(prediction, a.gt_json, file_name=source_name, mode=a.color_mode)
                vis.save_png(pair, png(rec.SIDE_BY_SIDE))
            except KeyError:
                pass  # the image is not in the ground-truth file

    def write_masks(self, prediction, name):
        """One PNG per instance, or, when those would hold more than MAX_MASK_PIXELS pixels (6,000
        instances of a 144 MP image are 860 GP), one 16-bit instance map of the image."""
        from segkit.inference import visualization as vis

        h, w = prediction.image_size
        if len(prediction) * h * w <= MAX_MASK_PIXELS:
            vis.save_instance_masks(prediction, os.path.join(self.out, rec.MASKS, name), "")
            return
        path = os.path.join(self.out, rec.INSTANCE_MAPS, f"{name}.png")
        try:
            vis.save_png(vis.instance_map(prediction), path)
        except ValueError as e:
            print(f"{name}: masks not written ({e}); results.json holds them", file=sys.stderr)
            return
        print(f"{name}: {len(prediction)} instances of a {w}x{h} image: masks written as one "
              f"instance map {path} (pixel value = instance index + 1), not one PNG each",
              file=sys.stderr)

    def finish(self):
        from segkit.data.atomic import write_json, write_text
        from segkit.inference.coco_results import coco_images
        from segkit.inference.counts import counts_csv

        if not self.out:
            return
        write_json(os.path.join(self.out, rec.IMAGES_JSON), coco_images(self.images, self.class_names))
        write_text(os.path.join(self.out, rec.COUNTS_CSV), counts_csv(self.counts, self.class_names))
        write_text(os.path.join(self.out, rec.RESULTS_JSON), json.dumps(self.results))


def _progress(total, quiet, unit):
    from tqdm import tqdm

    return tqdm(total=total, disable=quiet, unit=unit, file=sys.stderr, dynamic_ncols=True)


def run_images(args, predictor, paths, names=None, writer=None, summary=True):
    from tqdm import tqdm

    from segkit.inference.labelme_writer import write_labelme

    writer = writer or Writer(args, predictor)
    # Tiles bound the memory of a large image; without them the whole image goes through the model.
    max_pixels = None if getattr(predictor, "tiled", None) is not None else DEFAULT_MAX_PIXELS
    names = names or unique_names(paths)
    skipped, kept_json, image_id = [], [], 0
    bar = _progress(len(paths), args.quiet, "img")

    def report(line):
        tqdm.write(line, file=sys.stderr)

    batch = max(1, args.batch_size)
    for start in range(0, len(paths), batch):
        chunk = list(zip(paths[start:start + batch], names[start:start + batch]))
        loaded = []
        for path, name in chunk:
            try:
                loaded.append((path, name, to_rgb_uint8(path, max_pixels=max_pixels)))
            except ImageLoadError as e:
                skipped.append(path)
                report(f"skipped {path}: {e.reason}")
                bar.update(1)
        if not loaded:
            continue
        try:
            predictions = predictor.predict_batch([im for _, _, im in loaded], rgb=True)
        except Exception as e:  # e.g. out of memory on one odd image: report and go on
            for path, _, _ in loaded:
                skipped.append(path)
                report(f"skipped {path}: prediction failed ({e.__class__.__name__}: {e})")
            bar.update(len(loaded))
            continue
        for (path, name, _), pred in zip(loaded, predictions):
            pred.file_name = path
            image_id += 1
            source = os.path.basename(path) if name == os.path.splitext(os.path.basename(path))[0] \
                else name + os.path.splitext(path)[1]
            writer.write(pred, name, image_id, source)
            if args.labelme:
                json_path, written = write_labelme(pred, path, overwrite=args.overwrite)
                if not written:
                    kept_json.append(json_path)
                    report(f"kept existing {json_path} (use --overwrite to replace it)")
            bar.update(1)
    bar.close()
    writer.finish()
    if not summary:
        return 0 if image_id else 1
    where = f"; results in {args.output}" if args.output else ""
    print(f"{image_id} image(s), {writer.num_instances} instance(s) ({predictor.threshold_note}): "
          f"{writer.counts_line()}; {len(skipped)} skipped"
          + (f"; {len(kept_json)} existing LabelMe file(s) kept" if kept_json else "") + where)
    return 0 if image_id else 1


def run_video(args, predictor):
    import cv2

    from segkit.inference import visualization as vis

    video = cv2.VideoCapture(args.video_input)
    if not video.isOpened():
        print(f"error: cannot open video {args.video_input}", file=sys.stderr)
        return 1
    width = int(video.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(video.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = video.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(video.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    stem = os.path.splitext(os.path.basename(args.video_input))[0]
    os.makedirs(args.output, exist_ok=True)
    out_path = os.path.join(args.output, f"{stem}.mp4")
    out = cv2.VideoWriter(out_path, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height), True)
    writer = Writer(args, predictor)
    bar = _progress(total, args.quiet, "frame")
    n = 0
    while True:
        ok, frame = video.read()
        if not ok:
            break
        n += 1
        pred = predictor(frame)  # BGR, as OpenCV reads it
        writer.add(pred, n, f"{stem}_frame{n:06d}")
        overlay = vis.draw_prediction(pred, mode=args.color_mode)
        out.write(cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        bar.update(1)
    bar.close()
    video.release()
    out.release()
    writer.finish()
    print(f"{n} frame(s), {writer.num_instances} instance(s): {writer.counts_line()}; "
          f"overlay video {out_path}")
    return 0 if n else 1


# --rank's methods; the ranking itself is the data loop's (segkit.loop.rank), handed to main().
RANKINGS = ("uncertainty", "diversity", "uncertainty-diversity")
def build_predictor(args, announce=True, loaded=None):
    warnings.filterwarnings("ignore", message="torch.meshgrid")
    if is_exported(args.weights):  # an exported model: its sidecar stands for the checkpoint
        from segkit.inference.onnx_predictor import load_exported_predictor

        predictor = load_exported_predictor(args.weights, confidence_threshold=args.confidence_threshold)
        if announce and not predictor.semantic:
            print(f"Using {predictor.threshold_note}.", file=sys.stderr)
        return predictor
    from segkit.inference.predictor import Predictor

    try:
        predictor = Predictor.from_checkpoint(args.weights, config_file=args.config_file,
                                              device=args.device,
                                              confidence_threshold=args.confidence_threshold,
                                              opts=args.opts, loaded=loaded)
    except ValueError as e:  # a setting the model cannot run with (--tta on a U-Net, ...)
        raise SystemExit(f"error: {args.weights}: {e}")
    if announce and not predictor.semantic:
        print(f"Using {predictor.threshold_note}.", file=sys.stderr)
    return predictor


def main(argv=None, rank_images=None):
    """predict.py. ``rank_images(args, predictor, paths, loaded)``: what ``--rank`` runs, returning
    the paths to predict (segkit.loop.rank.rank_images; the loop comes after inference, so the
    command passes it in: predict.py and ``segkit predict`` run segkit.cli.predict)."""
    parser = get_parser()
    args = parser.parse_args(argv)
    if not args.input and not args.video_input:
        parser.error("give --input PATHS... or --video-input FILE")
    if not args.output and not args.labelme and not args.rank:
        parser.error("give --output DIR (or --labelme to write only LabelMe files)")
    if args.top is not None and not args.rank:
        parser.error("--top only applies to --rank")
    if args.labelled and args.rank not in ("diversity", "uncertainty-diversity"):
        parser.error("--labelled only applies to --rank diversity / uncertainty-diversity")
    if args.labelled and not os.path.exists(args.labelled):
        parser.error(f"--labelled {args.labelled}: not found")
    if args.rank and args.video_input:
        parser.error("--rank works on --input images, not on a video")
    if args.rank and rank_images is None:
        parser.error("--rank: run predict.py or `segkit predict` (the ranking is the data loop's, segkit.loop.rank)")
    if args.video_input and not args.output:
        parser.error("--video-input needs --output DIR")
    if args.overwrite and not args.labelme:
        parser.error("--overwrite only applies to --labelme")
    if args.labelme and any(is_remote(i) for i in args.input or []):
        parser.error("--labelme writes next to each image: it needs local --input files")
    if args.tile_overlap is not None and not args.tile:
        parser.error("--tile-overlap only applies to --tile")
    if args.tile is not None and args.rank:
        parser.error("--rank does not work with --tile (the ranking flips whole images)")
    opts_given = bool(args.opts)  # before --tile and --tta add their own
    if args.tta and args.tile is not None:
        parser.error("--tta and --tile do not combine (augmentation resizes whole images, tiles keep native "
                     "resolution); choose one")
    if args.tta:
        args.opts = ["TEST.AUG.ENABLED", "True"] + list(args.opts)
    if args.tile is not None:
        from segkit.modeling.tiling import tile_options

        try:
            args.opts = tile_options(args.tile, args.tile_overlap) + list(args.opts)
        except ValueError as e:
            parser.error(f"--tile: {e}")
    try:
        args.weights = resolve_weights(args.weights)
    except NoModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if is_exported(args.weights):
        fixed = [flag for flag, given in (("--tile", args.tile is not None), ("--tta", args.tta), ("--rank", args.rank),
                                          ("--config-file", args.config_file), ("--opts", opts_given)) if given]
        if fixed:
            print(f"error: {args.weights} is an exported model; {', '.join(fixed)}: only with the checkpoint it was "
                  f"exported from (the graph is fixed; export again for other settings)", file=sys.stderr)
            return 2
    if args.video_input and not os.path.isfile(args.video_input):
        print(f"error: no video file {args.video_input}", file=sys.stderr)
        return 2
    sharded_predict.check_arguments(parser, args)
    if sharded_predict.requested(args):
        return sharded_predict.run(args, sharded_predict.PredictSteps(
            expand_inputs, unique_names, build_predictor, run_images, Writer))

    paths = []
    if args.input:
        paths, missing = expand_inputs(args.input)
        for m in missing:
            print(f"not found: {m}", file=sys.stderr)
        if not paths and not args.video_input:
            print("error: no input images found", file=sys.stderr)
            return 1

    if not args.output:
        return predict_into(args, paths, rank_images)
    with staged_output(args.output) as folder:  # --rank, --video-input to s3://...: uploaded at the end
        args.output = folder
        return predict_into(args, paths, rank_images)


def predict_into(args, paths, rank_images=None):
    from segkit.engine.checkpoint import load_for_inference

    # Read once: the uncertainty ranking builds its second model from the same checkpoint.
    loaded = None if is_exported(args.weights) else load_for_inference(args.weights, args.config_file)
    predictor = build_predictor(args, loaded=loaded)
    if args.output:
        os.makedirs(args.output, exist_ok=True)
    status = 0
    if paths and args.rank:
        if predictor.semantic:
            print(f"error: --rank needs an instance model (Mask R-CNN); {args.weights} is a semantic "
                  f"one ({predictor.cfg.MODEL.META_ARCHITECTURE})", file=sys.stderr)
            return 2
        paths = rank_images(args, predictor, paths, loaded)
    loaded = None  # the weights live in the model now
    if paths:
        status = run_images(args, predictor, paths)
    if args.video_input:
        if paths:  # keep the image results: the video gets its own sub-folder
            args.output = os.path.join(args.output, "video")
        status = max(status, run_video(args, predictor))
    return status
