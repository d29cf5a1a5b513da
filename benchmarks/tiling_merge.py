"""Benchmark of the seam merge of tiled prediction (segkit/modeling/tiling.py merge_detections):
seconds and pair comparisons against the number of detections of one image.

    python benchmarks/tiling_merge.py [--sizes 1000 4000 16000] [--tile 256] [--overlap 0.2]

No model: each image is a square grid of discs (radius 12-30 px, one per 90 px cell, jittered) cut
into tiles as TiledModel cuts it; every tile a disc touches gives one detection (the disc's part
inside the tile, as a box-sized crop), so a disc on a seam or a four-tile corner comes as two to
four pieces. The merge must give one instance per disc (checked). Pairs are what it compares with
:func:`shared_view_ios`: only detections whose crops overlap, so they grow with the detections,
where comparing every detection with every kept instance grows with their square (shown as
``all pairs``). Prints a table and writes ``benchmarks/results/tiling_merge.json``.
"""

import argparse
import math
import os
import platform
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "tiling_merge.json")
CELL = 90  # px per disc


def detections(objects, tile, overlap, seed):
    """(Detections, image side): about ``objects`` discs on a square image, cut into tiles."""
    from segkit.modeling.tiling import Detection, tile_windows

    rng = np.random.default_rng(seed)
    side = int(math.ceil(math.sqrt(objects))) * CELL
    discs = []
    for cy in range(CELL // 2, side, CELL):
        for cx in range(CELL // 2, side, CELL):
            r = int(rng.integers(12, 31))
            jitter = (CELL // 2 - r - 2)
            discs.append((cx + int(rng.integers(-jitter, jitter + 1)), cy + int(rng.integers(-jitter, jitter + 1)), r))
    windows = tile_windows(side, side, tile, overlap)
    index = {w: k for k, w in enumerate(windows)}
    xs = sorted({(w[0], w[2]) for w in windows})
    ys = sorted({(w[1], w[3]) for w in windows})
    out = []
    for cx, cy, r in discs:
        for x0, x1 in [x for x in xs if x[0] <= cx + r and x[1] > cx - r]:
            for y0, y1 in [y for y in ys if y[0] <= cy + r and y[1] > cy - r]:
                bx0, by0, bx1, by1 = max(cx - r, x0), max(cy - r, y0), min(cx + r + 1, x1), min(cy + r + 1, y1)
                yy, xx = np.mgrid[by0:by1, bx0:bx1]
                crop = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
                if crop.sum() < 20:  # a sliver below the model's score threshold
                    continue
                score = float(crop.sum()) / (np.pi * r * r)
                box = np.array([bx0, by0, bx1, by1], np.float32)
                out.append(Detection(box, score, 0, bx0, by0, crop, index[(x0, y0, x1, y1)], (x0, y0, x1, y1)))
    return out, side, len(discs)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000], help="discs per image")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=RESULTS, help=f"results JSON (default {os.path.relpath(RESULTS, ROOT)})")
    args = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    from segkit.data.atomic import write_json
    from segkit.modeling import tiling

    rows = []
    for n in args.sizes:
        dets, side, discs = detections(n, args.tile, args.overlap, args.seed)
        pairs = len(tiling.overlapping_pairs(dets))
        t0 = time.perf_counter()
        merged = tiling.merge_detections(dets)
        seconds = time.perf_counter() - t0
        assert len(merged) == discs, (len(merged), discs)
        rows.append({"image_px": side, "discs": discs, "detections": len(dets), "pairs_compared": pairs,
                     "all_pairs": len(dets) * (len(dets) - 1) // 2, "seconds": round(seconds, 3),
                     "us_per_detection": round(1e6 * seconds / len(dets), 1)})
    print(f"{'image px':>10}{'discs':>8}{'detections':>12}{'pairs compared':>16}{'all pairs':>14}{'seconds':>10}{'us/detection':>14}")
    for r in rows:
        print(f"{r['image_px']:>10}{r['discs']:>8}{r['detections']:>12}{r['pairs_compared']:>16}{r['all_pairs']:>14}"
              f"{r['seconds']:>10.2f}{r['us_per_detection']:>14.0f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    write_json(args.output, {"tile": args.tile, "overlap": args.overlap, "rows": rows,
                             "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                         "platform": platform.platform()}})
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
