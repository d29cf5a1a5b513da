"""``predict.py --rank``: the input images ranked by what to label next, the top K then predicted.

``uncertainty`` (:mod:`segkit.loop.uncertainty`), ``diversity`` (:mod:`segkit.loop.diversity`) or both
multiplied; the ranking is written as ``ranking_<method>.csv``. predict_cli (inference) parses the
option and runs :func:`rank_images` handed to it by the command (segkit.cli.predict): the loop comes
after inference, which cannot import it.
"""

import os
import sys

from segkit.inference.image_io import ImageLoadError
from segkit.inference.predict_cli import _progress, expand_inputs

RANKING_FIELDS = ["rank", "score", "uncertainty", "file", "instances", "confident_instances",
                  "max_instance_uncertainty"]


def labelled_images(path):
    """Image paths of ``--labelled``: a data folder (its trainval.json), a COCO file (file names
    relative to images/ beside it) or a folder of images."""
    import json

    from segkit.data.layout import image_root, split_json

    json_file = split_json(path, "trainval") if os.path.isdir(path) else path
    if os.path.isfile(json_file) and json_file.endswith(".json"):
        with open(json_file, encoding="utf-8") as f:
            images = json.load(f).get("images", [])
        root = image_root(os.path.dirname(json_file))
        return [os.path.join(root, im["file_name"]) for im in images]
    paths, missing = expand_inputs([path])
    if missing:
        raise FileNotFoundError(f"--labelled {path}: not found")
    return paths


def rank_images(args, predictor, paths, loaded=None):
    """Write the ``args.rank`` ranking of ``paths`` as CSV; returns the top ``args.top`` paths."""
    import csv
    import io

    from segkit.data.atomic import write_text

    method = args.rank
    rows, bar = {}, _progress(len(paths), args.quiet, "img")
    if "uncertainty" in method:
        from segkit.inference.predictor import Predictor
        from segkit.loop.uncertainty import LOW_SCORE, image_uncertainty

        # The ranking needs the doubtful instances too: a second predictor keeps them down to LOW_SCORE.
        low = Predictor.from_checkpoint(args.weights, config_file=args.config_file, device=args.device,
                                        confidence_threshold=LOW_SCORE, opts=args.opts, loaded=loaded)
        thresholds = [predictor.class_thresholds.get(n, predictor.confidence_threshold) for n in predictor.class_names]
    vectors, known = [], []
    if "diversity" in method:
        from segkit.loop.diversity import embedding

        labelled = labelled_images(args.labelled) if args.labelled else []
        for path in labelled:
            try:
                known.append(embedding(predictor, path))
            except ImageLoadError as e:
                print(f"{path}: {e.reason} (labelled image skipped)", file=sys.stderr)
    for path in paths:
        try:
            row = {"file": path}
            if "uncertainty" in method:
                value, details = image_uncertainty(low, path, thresholds)
                row.update(uncertainty=round(value, 4), **details)
            if "diversity" in method:
                vectors.append(embedding(predictor, path))
        except ImageLoadError as e:
            print(f"{path}: {e.reason}", file=sys.stderr)
        else:
            rows[path] = row
        bar.update(1)
    bar.close()
    rows = list(rows.values())
    if method == "uncertainty":
        rows.sort(key=lambda r: (-r["uncertainty"], r["file"]))
        for r in rows:
            r["score"] = r["uncertainty"]
    else:
        from segkit.loop.diversity import k_centre_order

        weights = None
        if "uncertainty" in method:
            top = max((r["uncertainty"] for r in rows), default=0.0)
            weights = [r["uncertainty"] / top if top > 0 else 1.0 for r in rows]
        order, scores = k_centre_order(vectors, known or None, weights)
        for i, score in zip(order, scores):
            rows[i]["score"] = round(score, 4)
        rows = [rows[i] for i in order]
    for k, r in enumerate(rows, start=1):
        r["rank"] = k
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RANKING_FIELDS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = os.path.join(args.output or ".", f"ranking_{method}.csv")
    write_text(csv_path, buf.getvalue())
    top = args.top if args.top is not None else 10
    print(f"ranked {len(rows)} image(s) by {method}: {csv_path}; predicting the top {min(top, len(rows))}",
          file=sys.stderr)
    return [r["file"] for r in rows[:top]]
