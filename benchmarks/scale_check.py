"""Scale check (issue 35): 1,000 LabelMe photos of 12 MP through every tool; peak RSS and wall time.

    python benchmarks/scale_check.py                               # 1000 photos, every tool
    python benchmarks/scale_check.py --images 20                   # the per-image cost, first
    python benchmarks/scale_check.py --finder-images 20 50 --predict-budget 1200   # what ran here
    python benchmarks/scale_check.py --images 3 --tools labelme2coco report --keep

The set (``--work``, default a new folder under the temp dir; deleted at the end unless ``--keep``):
``--images`` LabelMe JSON files with 4000 x 3000 JPEGs (quality 90). Each photo is a 6 x 8 grid of the
shared real frames (``--frames``, default ../shared/datasets/controllers: 92 photos of 640 x 352,
three objects each, LabelMe polygons) at their own size on a grey margin, 48 frames per photo
drawn without repeats from the photo's own random stream (``--seed``, photo index), so every photo
differs and its 144 objects are real ones with their real outlines. The JSON files are written as
LabelMe 5 writes them: ``imagePath`` beside the JSON and the JPEG also embedded as base64
``imageData`` (LabelMe 5's default; ``--no-image-data`` leaves it null, LabelMe 6's default).

Tools (``--tools``, default all), each run as its own process (``--lock FILE``: flock'd while it
runs, where the cores are shared), in this order:

- ``labelme2coco``: ``labelme2coco.py SET --output DATA --symlink`` (symlinked images: the copy is
  only disk; the JSON files are read the same way);
- ``report``: ``python -m segkit.data.report DATA``;
- ``predict``: ``predict.py --input SET --output s3://scale/<run> --num-gpus 2 --weights RANDOM
  --confidence-threshold 0.05 --no-masks --overlay-size --overlay-size`` against a moto S3 server
  on 127.0.0.1 (its own process): the mini Mask R-CNN with random weights (seed 0, the 3 classes),
  which at 0.05 keeps the most detections it may (``TEST.DETECTIONS_PER_IMAGE``, 50) per photo.
  ``--predict-images N`` runs it on the first N photos; ``--predict-budget SECONDS`` first runs a
  probe on 10 photos and picks the N whose three runs fit. Three runs: uninterrupted; killed
  (SIGKILL to its whole process group) at a seeded random moment (``--kill-seed``: a fraction in
  [0.05, 0.95] of the uninterrupted run's wall time); the killed run continued with
  ``--skip-done``. Compared: ``results.json`` (every entry whole - image_id, file_name,
  category_id, bbox, score, RLE segmentation - as a sorted list), ``images.json`` and
  ``counts.csv`` (exact text) of the continued run against the uninterrupted one's;
- ``finder``: ``python -m segkit.loop.suspects_cli DATA_N --split trainval --folds 2 --iters
  --finder-iters --config-file configs/mask_rcnn_R_18_FPN_mini.yaml`` - two fold models trained
  from scratch for a few iterations (short folds), each judging the half it did not see; on the
  first N photos of DATA for each N of ``--finder-images`` (default: all).

Peak RSS: each process's own high-water mark (``VmHWM`` of /proc/<pid>/status), polled every 50 ms
over every process of the tool's process group (its spawned workers too), not ``ru_maxrss`` of a
child (Linux carries a parent's RSS at fork into it). For several processes: the largest one's
(what the 4 GB target is checked against), the sum of the per-process peaks, and the largest sum
of the processes' RSS (and of their PSS, which splits pages shared by forked workers) seen at
one moment. Wall time: start to exit, start-up and model loading
included. Prints a table and writes benchmarks/results/scale_check.json.
"""

import argparse
import base64
import contextlib
import datetime
import fcntl
import glob
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from suspects_scale import random_mini_checkpoint  # noqa: E402  (benchmarks/ is the script's folder)

RESULTS = os.path.join(ROOT, "benchmarks", "results", "scale_check.json")
MINI = os.path.join(ROOT, "configs", "mask_rcnn_R_18_FPN_mini.yaml")
FRAMES = os.path.join(os.path.dirname(ROOT), "shared", "datasets", "controllers")
TOOLS = ("labelme2coco", "report", "finder", "predict")
WIDTH, HEIGHT = 4000, 3000  # 12 MP
COLS, ROWS = 6, 8  # frames per photo: 6 x 640 = 3840 <= 4000, 8 x 352 = 2816 <= 3000
MARGIN_GREY = 114
JPEG_QUALITY = 90
TARGET_MB = 4096  # issue 35: every tool's peak RSS under 4 GB
POLL_S = 0.05
BUCKET = "scale"
PROBE = 10  # photos of the --predict-budget probe run


# ---- the set -----------------------------------------------------------------------------------

def read_frames(frames_dir):
    """[(BGR image, [(label, points)])] of every LabelMe frame under ``frames_dir``, sorted by path."""
    import cv2

    frames = []
    for path in sorted(glob.glob(os.path.join(frames_dir, "**", "*.json"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        img = cv2.imread(os.path.join(os.path.dirname(path), doc["imagePath"]), cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f"{path}: its image {doc['imagePath']} cannot be read")
        frames.append((img, [(s["label"], s["points"]) for s in doc["shapes"] if s["shape_type"] == "polygon"]))
    if not frames:
        raise SystemExit(f"{frames_dir}: no LabelMe JSON files")
    return frames


def make_set(set_dir, n, frames, seed, image_data):
    """``n`` photos ``photo_<k>.jpg`` + ``photo_<k>.json`` in ``set_dir`` (existing ones kept):
    (number of objects, bytes on disk)."""
    import cv2
    import numpy as np

    from segkit.data.labelme import labelme_document, labelme_shape, write_labelme_json

    os.makedirs(set_dir, exist_ok=True)
    fh, fw = frames[0][0].shape[:2]
    x0, y0 = (WIDTH - COLS * fw) // 2, (HEIGHT - ROWS * fh) // 2
    objects = 0
    for k in range(n):
        rng = np.random.default_rng((seed, k))
        picks = rng.choice(len(frames), COLS * ROWS, replace=False)
        canvas = np.full((HEIGHT, WIDTH, 3), MARGIN_GREY, np.uint8)
        shapes = []
        for cell, p in enumerate(picks):
            img, polys = frames[p]
            x, y = x0 + (cell % COLS) * fw, y0 + (cell // COLS) * fh
            canvas[y:y + fh, x:x + fw] = img
            shapes += [labelme_shape(label, [[px + x, py + y] for px, py in pts]) for label, pts in polys]
        objects += len(shapes)
        stem = os.path.join(set_dir, f"photo_{k:05d}")
        if os.path.isfile(stem + ".json"):
            continue
        ok, jpeg = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        assert ok
        with open(stem + ".jpg", "wb") as f:
            f.write(jpeg.tobytes())
        doc = labelme_document(shapes, stem + ".jpg", stem + ".json", WIDTH, HEIGHT)
        if image_data:
            doc["imageData"] = base64.b64encode(jpeg.tobytes()).decode("ascii")
        write_labelme_json(stem + ".json", doc, overwrite=True)
    size = sum(os.path.getsize(os.path.join(set_dir, f)) for f in os.listdir(set_dir))
    return objects, size


def subset_folder(data, n, dest):
    """A data folder ``dest`` holding the first ``n`` photos of ``data``'s trainval.json (images symlinked)."""
    from segkit.data.atomic import write_json
    from segkit.data.layout import image_root, split_json

    with open(split_json(data, "trainval"), encoding="utf-8") as f:
        coco = json.load(f)
    images = sorted(coco["images"], key=lambda im: im["id"])[:n]
    ids = {im["id"] for im in images}
    os.makedirs(dest, exist_ok=True)
    if not os.path.islink(image_root(dest)):
        os.symlink(os.path.abspath(image_root(data)), image_root(dest))
    write_json(split_json(dest, "trainval"), {"images": images, "categories": coco["categories"],
                                              "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]})
    return dest


# ---- running and measuring ---------------------------------------------------------------------

@contextlib.contextmanager
def cpu_lock(path):
    """Hold ``path`` (flock) while a tool runs, when given: the machine's cores are shared."""
    if not path:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _group_members(pgid):
    """{pid: (VmHWM kB, VmRSS kB, Pss kB, short command)} of the live processes of process group
    ``pgid`` (Pss: shared pages split among their sharers, so forked workers are not counted twice)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            if int(stat[stat.rindex(")") + 2:].split()[2]) != pgid:
                continue
            hwm = rss = 0
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        hwm = int(line.split()[1])
                    elif line.startswith("VmRSS:"):
                        rss = int(line.split()[1])
            pss = rss
            with contextlib.suppress(OSError), open(f"/proc/{entry}/smaps_rollup") as f:
                pss = next((int(line.split()[1]) for line in f if line.startswith("Pss:")), rss)
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")[:120]
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        found[int(entry)] = (hwm, rss, pss, cmd)
    return found


class Run:
    """One tool run in its own session (process group), its group's memory polled until it ends."""

    def __init__(self, cmd, log, env=None):
        self.cmd, self.log = cmd, log
        self.peaks, self.names, self.concurrent_kb, self.concurrent_pss_kb = {}, {}, 0, 0
        self.start = time.perf_counter()
        self._log = open(log, "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=lambda: os.nice(10))
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self):
        while not self._done.is_set():
            members = _group_members(self.proc.pid)
            for pid, (hwm, _, _, cmd) in members.items():
                if hwm >= self.peaks.get(pid, 0):
                    self.peaks[pid], self.names[pid] = hwm, cmd
            self.concurrent_kb = max(self.concurrent_kb, sum(m[1] for m in members.values()))
            self.concurrent_pss_kb = max(self.concurrent_pss_kb, sum(m[2] for m in members.values()))
            time.sleep(POLL_S)

    def kill(self):
        os.killpg(self.proc.pid, signal.SIGKILL)

    def wait(self):
        code = self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # workers left behind by a killed parent
        deadline = time.time() + 30
        while _group_members(self.proc.pid) and time.time() < deadline:
            time.sleep(POLL_S)
        self.seconds = time.perf_counter() - self.start
        self._done.set()
        self._thread.join()
        self._log.close()
        return code

    def row(self, tool, images, note=""):
        peaks = sorted(self.peaks.values(), reverse=True)
        row = {"tool": tool, "images": images, "seconds": round(self.seconds, 1),
                "seconds_per_image": round(self.seconds / max(images, 1), 3),
                "peak_rss_mb": round(peaks[0] / 1024) if peaks else None,
                "processes": len(peaks), "sum_of_peaks_mb": round(sum(peaks) / 1024),
                "largest_concurrent_rss_mb": round(self.concurrent_kb / 1024),
                "largest_concurrent_pss_mb": round(self.concurrent_pss_kb / 1024),
                "per_process_mb": {f"{pid} {self.names[pid][:80]}": round(kb / 1024) for pid, kb in self.peaks.items()},
                "target_met": bool(peaks) and peaks[0] / 1024 < TARGET_MB, "note": note}
        print(f"done: {json.dumps(row)}", file=sys.stderr)  # a long run shows its rows as they come
        return row


def run_tool(cmd, log, lock, env=None, check=True):
    with cpu_lock(lock):
        run = Run(cmd, log, env)  # its clock starts once the lock is held
        code = run.wait()
    if check and code != 0:
        with open(log, encoding="utf-8", errors="replace") as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed (exit {code}); the end of {log}:\n{tail}")
    return run


# ---- s3 (moto) -----------------------------------------------------------------------------------

@contextlib.contextmanager
def moto_server(work):
    """A moto S3 server on 127.0.0.1 in its own process; yields (environment for the tools, boto3 client)."""
    import socket

    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(os.path.join(work, "moto.log"), "w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    none = os.path.join(work, "no-aws-config")
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{port}",
               AWS_CONFIG_FILE=none, AWS_SHARED_CREDENTIALS_FILE=none)
    try:
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")
        deadline = time.time() + 60
        while True:
            try:
                client.list_buckets()
                break
            except Exception:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit(f"the moto server did not start; see {log.name}")
                time.sleep(0.2)
        yield env, client
    finally:
        server.terminate()
        server.wait()
        log.close()


def s3_keys(client, prefix):
    keys, token = [], None
    while True:
        kw = {"ContinuationToken": token} if token else {}
        page = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix, **kw)
        keys += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return keys
        token = page["NextContinuationToken"]


def s3_summary(client, prefix):
    """(results.json entries sorted, images.json, counts.csv text) of a finished run."""
    get = lambda name: client.get_object(Bucket=BUCKET, Key=f"{prefix}/{name}")["Body"].read()  # noqa: E731
    results = sorted(json.loads(get("results.json")), key=lambda r: json.dumps(r, sort_keys=True))
    return results, json.loads(get("images.json")), get("counts.csv").decode()


def s3_delete(client, prefix):
    keys = s3_keys(client, prefix + "/")
    for i in range(0, len(keys), 1000):
        client.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})


# ---- the tools -------------------------------------------------------------------------------------

def python(*args):
    return [sys.executable, *map(str, args)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=1000, help="photos in the set (default 1000)")
    p.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS), help="tools to run (default all)")
    p.add_argument("--work", default=None, help="working folder (default: a new one under the temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the working folder (set, outputs, logs)")
    p.add_argument("--frames", default=FRAMES, help="LabelMe frames tiled into the photos (default the shared controllers)")
    p.add_argument("--seed", type=int, default=0, help="photo layout seed (default 0)")
    p.add_argument("--no-image-data", action="store_true", help="imageData null (LabelMe 6) instead of embedded")
    p.add_argument("--finder-images", type=int, nargs="+", default=None,
                   help="photos the finder runs on, one run each (default: all of --images)")
    p.add_argument("--finder-iters", type=int, default=2, help="iterations per fold model (default 2)")
    p.add_argument("--predict-images", type=int, default=None,
                   help="photos predict.py runs on: the first N of the set (default: all of --images)")
    p.add_argument("--predict-budget", type=float, default=None,
                   help="seconds the three predict runs may take together: a probe run on the first "
                        f"{PROBE} photos measures the cost per photo and predict then runs on as many as fit")
    p.add_argument("--overlay-size", type=int, default=1024, help="predict.py --overlay-size (default 1024)")
    p.add_argument("--kill-seed", type=int, default=0, help="seed of the moment predict is killed (default 0)")
    p.add_argument("--lock", default=None, help="a file flock'd while each tool runs (shared cores)")
    p.add_argument("--results", default=RESULTS, help="JSON written at the end (default benchmarks/results/scale_check.json)")
    args = p.parse_args(argv)
    from segkit.data.atomic import write_json
    from segkit.data.layout import split_json

    work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="segkit_scale_"))
    os.makedirs(work, exist_ok=True)
    set_dir, data = os.path.join(work, "labelme"), os.path.join(work, "data")
    rows, checks = [], {}
    info = {"date": datetime.date.today().isoformat(), "machine": platform.platform(), "cpus": os.cpu_count(),
            "images": args.images, "megapixels": WIDTH * HEIGHT / 1e6, "image_data_embedded": not args.no_image_data}

    def log(name):
        return os.path.join(work, f"log_{name}.txt")

    try:
        frames = read_frames(args.frames)
        with cpu_lock(args.lock):
            start = time.perf_counter()  # the lock's wait left out
            objects, size = make_set(set_dir, args.images, frames, args.seed, not args.no_image_data)
        info.update(objects=objects, set_gb=round(size / 1e9, 2), generate_seconds=round(time.perf_counter() - start, 1))
        print(f"set: {args.images} photos, {objects} objects, {size / 1e9:.2f} GB ({info['generate_seconds']} s)",
              file=sys.stderr)

        if "labelme2coco" in args.tools or not os.path.isfile(split_json(data, "trainval")):
            run = run_tool(python("labelme2coco.py", set_dir, "--output", data, "--symlink"), log("labelme2coco"),
                           args.lock)
            rows.append(run.row("labelme2coco", args.images, "--symlink"))
        if "report" in args.tools:
            run = run_tool(python("-m", "segkit.data.report", data), log("report"), args.lock)
            rows.append(run.row("report", args.images))
        if "predict" in args.tools:
            try:
                rows += predict_runs(args, work, set_dir, data, log, checks)
            except (Exception, SystemExit) as e:  # the finder's rows still come
                import traceback

                traceback.print_exc()
                checks["predict_error"] = repr(e)[:2000]
        if "finder" in args.tools:
            for n in args.finder_images or [args.images]:
                folder = data if n >= args.images else subset_folder(data, n, os.path.join(work, f"data_{n}"))
                out = os.path.join(work, f"suspects_{n}")
                run = run_tool(python("-m", "segkit.loop.suspects_cli", folder, "--split", "trainval", "--folds", 2,
                                      "--iters", args.finder_iters, "--config-file", MINI, "--output", out),
                               log(f"finder_{n}"), args.lock)
                with open(os.path.join(out, "suspects.json"), encoding="utf-8") as f:
                    suspects = len(json.load(f)["suspects"])
                rows.append(run.row("finder", min(n, args.images),
                                    f"2 folds x {args.finder_iters} iterations, {suspects} suspects"))
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\nScale check: {args.images} LabelMe photos of 4000 x 3000 px ({info.get('objects')} objects), "
          f"{os.cpu_count()} CPUs\n")
    print("| tool | images | wall s | s/image | peak RSS MB | processes (sum of peaks MB) | target met |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        procs = f"{r['processes']} ({r['sum_of_peaks_mb']})" if r["processes"] > 1 else "1"
        print(f"| {r['tool']} | {r['images']} | {r['seconds']} | {r['seconds_per_image']} | {r['peak_rss_mb']} | "
              f"{procs} | {'yes' if r['target_met'] else 'NO'} |")
    for name, value in checks.items():
        print(f"{name}: {value}")
    write_json(args.results, {**info, "rows": rows, "checks": checks})
    print(f"\nwrote {args.results}")
    return 0 if all(r["target_met"] for r in rows) and checks.get("resume_same", "predict" not in args.tools) else 1


def predict_runs(args, work, set_dir, data, log, checks):
    """The uninterrupted, killed and continued s3 runs: their rows; the comparison into ``checks``."""
    from segkit.data.layout import split_json

    with open(split_json(data, "trainval"), encoding="utf-8") as f:
        names = [c["name"] for c in sorted(json.load(f)["categories"], key=lambda c: c["id"])]
    from segkit.modeling.config import get_segkit_cfg

    weights = random_mini_checkpoint(os.path.join(work, "random_mini.pth"), names, detections=None)
    cfg = get_segkit_cfg()
    cfg.merge_from_file(MINI)
    detections = cfg.TEST.DETECTIONS_PER_IMAGE
    rows = []

    def first_photos(n):
        if n >= args.images:
            return set_dir
        subset = os.path.join(work, f"labelme_{n}")  # the first n photos, linked into a folder of their own
        os.makedirs(subset, exist_ok=True)
        for k in range(n):
            name = f"photo_{k:05d}.jpg"
            if not os.path.islink(os.path.join(subset, name)):
                os.symlink(os.path.join(set_dir, name), os.path.join(subset, name))
        return subset

    options = ["--weights", weights, "--num-gpus", 2, "--confidence-threshold", 0.05,
               "--no-masks", "--overlay-size", args.overlay_size, "--quiet", "--device", "cpu"]
    note = (f"--num-gpus 2 to s3 (moto), random mini Mask R-CNN, <= {detections} detections/photo, "
            f"--no-masks, --overlay-size {args.overlay_size}")
    with moto_server(work) as (env, client):
        env = dict(env, OMP_NUM_THREADS="1", TMPDIR=os.path.join(work, "tmp"))  # one thread per process, 2 processes
        os.makedirs(env["TMPDIR"], exist_ok=True)
        client.create_bucket(Bucket=BUCKET)
        n = min(args.predict_images or args.images, args.images)
        if args.predict_budget:
            probe = run_tool(python("predict.py", "--input", first_photos(PROBE), *options, "--output",
                                    f"s3://{BUCKET}/probe"), log("predict_probe"), args.lock, env)
            rows.append(probe.row("predict (probe)", PROBE, note))
            s3_delete(client, "probe")
            # the three runs together take about twice the uninterrupted one's time
            n = max(PROBE, min(n, int(args.predict_budget / 2.2 / (probe.seconds / PROBE)) // 10 * 10))
            checks["predict_images_chosen"] = n
        rows += predict_compare(args, work, first_photos(n), n, options, note, env, client, log, checks)
    return rows


def predict_compare(args, work, set_dir, n, options, note, env, client, log, checks):
    """Uninterrupted, killed, continued on ``set_dir``: their rows; the comparison into ``checks``."""
    common = ["--input", set_dir, *options]
    rows = []
    whole = run_tool(python("predict.py", *common, "--output", f"s3://{BUCKET}/whole"), log("predict_whole"),
                     args.lock, env)
    rows.append(whole.row("predict (uninterrupted)", n, note))
    expected = s3_summary(client, "whole")
    s3_delete(client, "whole")  # moto keeps every object in memory

    fraction = random.Random(args.kill_seed).uniform(0.05, 0.95)
    with cpu_lock(args.lock):
        killed = Run(python("predict.py", *common, "--output", f"s3://{BUCKET}/resumed"), log("predict_killed"), env)
        while killed.proc.poll() is None and time.perf_counter() - killed.start < fraction * whole.seconds:
            time.sleep(POLL_S)
        finished_first = killed.proc.poll() is not None
        killed.kill()
        killed.wait()
    records = len([k for k in s3_keys(client, "resumed/per_image/") if k.endswith(".json")])
    rows.append(killed.row("predict (killed)", records, f"SIGKILL at {killed.seconds:.1f} s"))
    resumed = run_tool(python("predict.py", *common, "--output", f"s3://{BUCKET}/resumed", "--skip-done"),
                       log("predict_resumed"), args.lock, env)
    rows.append(resumed.row("predict (--skip-done)", n - records, note))
    got = s3_summary(client, "resumed")
    same = [a == b for a, b in zip(got, expected)]
    checks.update(kill_seed=args.kill_seed, kill_fraction=round(fraction, 3), killed_at_s=round(killed.seconds, 1),
                  killed_before_end=not finished_first, records_at_kill=records,
                  results_entries=len(expected[0]), results_same=same[0], images_json_same=same[1],
                  counts_csv_same=same[2], resume_same=all(same))
    if not all(same):  # kept for a look at what differs
        with open(os.path.join(work, "resume_diff.json"), "w") as f:
            json.dump({"resumed": got, "uninterrupted": expected}, f)
    return rows


if __name__ == "__main__":
    sys.exit(main())
