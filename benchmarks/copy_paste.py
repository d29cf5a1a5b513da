"""Copy-paste augmentation (INPUT.COPY_PASTE.PROB) on and off: segm and bbox AP, mean ± spread over
seeds, of the pretrained Lite0 Mask R-CNN at its default schedule. The measurement that decides the
key's default (on only if it adds at least 2 segm AP on 20 training images, issue 36).

    python benchmarks/copy_paste.py                      # 2 sets x 2 settings x 3 seeds (prints its ETA)
    python benchmarks/copy_paste.py --sets controllers-20 --probs 0 0.5 --seeds 0
    python benchmarks/copy_paste.py --table              # only print what benchmarks/results holds

Sets (benchmarks/schedule.py makes the first two):
- ``controllers-20``: every 4th of the 81 training frames of ../shared/datasets/controllers (the seed
  picks the offset), the author's 11 later frames as val: 20 real training images, 3 classes.
- ``sample-32``: the demo's generated sample, 32 train / 8 val.
- ``many-14``: the many-class set (segkit/data/many_classes.py) from the controllers frames and
  LabelMe's example photos, 14 classes with 3-6 objects each, the converter's 80/20 split.

Each run is one ``train_net.py`` process with configs/mask_rcnn_lite0_FPN.yaml and its own schedule
(SOLVER.EPOCHS / MIN_ITER), one COCO evaluation on val at the end. Written:
benchmarks/results/copy_paste.json and a table.
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from schedule import CONTROLLERS, LITE0, data_for  # noqa: E402  (benchmarks/ is the script's folder)

from segkit.data.atomic import write_json  # noqa: E402  (after the repo is on the path)
from segkit.engine.hooks import read_metrics  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results", "copy_paste.json")
LABELME_EXAMPLES = os.path.join(ROOT, "..", "shared", "labelme-examples", "instance_segmentation", "data_annotated")
SETS = ("controllers-20", "sample-32", "many-14")
SECONDS_PER_ITER = 0.4  # Lite0 on controllers-20, batch 2, 2 cores: 400 iterations in 168-183 s a run
SECONDS_PER_RUN = 20  # start-up and the final evaluation


def many_classes_data(work):
    from segkit.data.coco_convert import convert
    from segkit.data.many_classes import make_many_class_set

    out = os.path.join(work, "many14")
    if not os.path.isfile(os.path.join(out, "val.json")):
        make_many_class_set([os.path.join(CONTROLLERS, "train"), LABELME_EXAMPLES], os.path.join(work, "many14_labelme"))
        result = convert(os.path.join(work, "many14_labelme"), out, val_fraction=0.2, seed=0, progress=False)
        if result.exit_code:
            raise SystemExit(f"many-class conversion failed: {result.reason}")
    return out


def data(name, seed, work):
    return many_classes_data(work) if name == "many-14" else data_for(name, seed, work)


def planned_iterations(config, data_dir):
    from segkit.modeling.config import get_segkit_cfg

    cfg = get_segkit_cfg()
    cfg.merge_from_file(config)
    with open(os.path.join(data_dir, "train.json"), encoding="utf-8") as f:
        images = len(json.load(f)["images"])
    return max(math.ceil(cfg.SOLVER.EPOCHS * images / cfg.SOLVER.IMS_PER_BATCH), cfg.SOLVER.MIN_ITER)


def one_run(config, name, seed, prob, data_dir, work):
    out = os.path.join(work, f"run_{name}_p{prob}_seed{seed}")
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", config, "--exist-ok",
           "DATASETS.DATA_DIR", data_dir, "OUTPUT_DIR", out, "SEED", str(seed),
           "INPUT.COPY_PASTE.PROB", str(prob), "TEST.EVAL_PERIOD", "0", "SOLVER.CHECKPOINT_PERIOD", "1000000",
           "INPUT.AUG.PREVIEW_BATCHES", "0", "TEST.PR_CURVES", "False"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode:
        raise SystemExit(f"{name} prob {prob} seed {seed} failed:\n{proc.stderr[-3000:]}")
    final = [r for r in read_metrics(os.path.join(out, "metrics.json")) if "segm/AP" in r][-1]
    return {"set": name, "prob": prob, "seed": seed, "wall_s": wall, "iterations": final["iteration"] + 1,
            "segm_AP": final["segm/AP"], "bbox_AP": final["bbox/AP"]}


def print_table(runs):
    groups = {}
    for r in runs:
        groups.setdefault((r["set"], r["prob"]), []).append(r)
    print("\n| set | INPUT.COPY_PASTE.PROB | segm AP | bbox AP | seeds | s/run |\n|---|---|---|---|---|---|")
    for (name, prob), rs in sorted(groups.items()):
        cells = []
        for key in ("segm_AP", "bbox_AP"):
            v = [r[key] for r in rs]
            cells.append(f"{statistics.mean(v):.1f} ± {statistics.stdev(v) if len(v) > 1 else 0:.1f}")
        print(f"| {name} | {prob} | {cells[0]} | {cells[1]} | {len(rs)} | {statistics.mean(r['wall_s'] for r in rs):.0f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", nargs="+", default=list(SETS[:2]), choices=SETS)
    p.add_argument("--probs", nargs="+", type=float, default=[0.0, 0.5])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--config", default=LITE0)
    p.add_argument("--table", action="store_true", help="only print the table of stored results")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "segkit_bench_copy_paste"))
    args = p.parse_args()
    stored = json.load(open(RESULTS))["runs"] if os.path.isfile(RESULTS) else []
    if not args.table:
        import torch

        os.makedirs(args.work, exist_ok=True)
        os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
        todo = [(name, seed, prob) for seed in args.seeds for name in args.sets for prob in args.probs]
        plans = {(name, seed): planned_iterations(args.config, data(name, seed, args.work))
                 for name, seed, _ in todo}
        expected = sum(plans[(n, s)] * SECONDS_PER_ITER + SECONDS_PER_RUN for n, s, _ in todo)
        print(f"{len(todo)} runs, expected wall time about {expected / 60:.0f} min on 2 cores "
              f"({SECONDS_PER_ITER} s/iteration + {SECONDS_PER_RUN} s per run)", flush=True)
        t_start = time.monotonic()
        for i, (name, seed, prob) in enumerate(todo):
            done = time.monotonic() - t_start
            eta = f", ETA {done / i * (len(todo) - i) / 60:.0f} min" if i else ""
            print(f"[{i + 1}/{len(todo)}] {name} prob {prob} seed {seed} ({plans[(name, seed)]} iterations{eta})",
                  flush=True)
            run = one_run(args.config, name, seed, prob, data(name, seed, args.work), args.work)
            print(f"    segm AP {run['segm_AP']:.1f}, bbox AP {run['bbox_AP']:.1f} ({run['wall_s']:.0f} s)", flush=True)
            stored = [r for r in stored if (r["set"], r["prob"], r["seed"]) != (name, prob, seed)] + [run]
            write_json(RESULTS, {"machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                             "python": platform.python_version(), "torch": torch.__version__},
                                 "config": os.path.basename(args.config), "runs": stored})
    print_table(stored)
    if stored:
        print(f"\nresults in {RESULTS}")


if __name__ == "__main__":
    main()
