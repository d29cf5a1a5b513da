import atexit
import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import List, NamedTuple

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
LABELME_EXAMPLES = SHARED / "labelme-examples"

# Tests run on 2 cores next to each other: one intra-op thread pool per process is plenty.
os.environ.setdefault("OMP_NUM_THREADS", "2")

# Gradio reads its temp folder at import: keep its uploads and caches out of the shared /tmp root.
_GRADIO_TMP = tempfile.mkdtemp(prefix="segkit_test_gradio_")
atexit.register(shutil.rmtree, _GRADIO_TMP, True)
os.environ.setdefault("GRADIO_TEMP_DIR", _GRADIO_TMP)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

requires_shared = pytest.mark.skipif(
    not LABELME_EXAMPLES.is_dir(), reason="../shared/labelme-examples is not present"
)


def run_train_net(*args, cwd=ROOT, timeout=900):
    """train_net.py in a subprocess (as a user runs it); returns the CompletedProcess."""
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.run(
        [sys.executable, str(ROOT / "train_net.py"), *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


# A configuration small enough for tests: 192x144 sample images, no resize, no workers.
TINY_OVERRIDES = [
    "INPUT.MIN_SIZE_TRAIN", "(144,)", "INPUT.MAX_SIZE_TRAIN", "192",
    "INPUT.MIN_SIZE_TEST", "144", "INPUT.MAX_SIZE_TEST", "192",
    "DATALOADER.NUM_WORKERS", "0", "TEST.VAL_LOSS_MAX_IMAGES", "4",
]


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory):
    """A converted COCO folder (train/val/trainval.json + images/) made from the sample generator."""
    from segkit.data.coco_convert import convert
    from segkit.data.sample import make_instance_sample

    root = tmp_path_factory.mktemp("sample")
    make_instance_sample(root / "labelme", num_images=6, size=(192, 144), seed=3)
    result = convert(root / "labelme", root / "data", val_fraction=0.34, seed=0, progress=False)
    assert result.exit_code == 0, result.reason
    return root / "data"


@pytest.fixture(scope="session")
def trained_mini_checkpoint(sample_data, tmp_path_factory):
    """model_final.pth of the mini config trained (from scratch) until it fits the sample's
    trainval images; the run folder also holds eval/ with its COCO metrics on them."""
    out = tmp_path_factory.mktemp("mini_run")
    proc = run_train_net(
        "--config-file", ROOT / "configs/mask_rcnn_R_18_FPN_mini.yaml",
        "DATASETS.DATA_DIR", sample_data, "OUTPUT_DIR", out,
        "DATASETS.TRAIN", "('mydata_trainval',)", "DATASETS.TEST", "('mydata_trainval',)",
        "SOLVER.MAX_ITER", "200", "SOLVER.STEPS", "(9999,)", "SOLVER.WARMUP_ITERS", "20",
        "SOLVER.CHECKPOINT_PERIOD", "1000", "TEST.EVAL_PERIOD", "0", "TEST.VAL_LOSS_PERIOD", "50",
        "INPUT.RANDOM_FLIP", "none", "INPUT.AUG.BRIGHTNESS", "()", "INPUT.AUG.CONTRAST", "()",
        *TINY_OVERRIDES,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "model_final.pth"


@pytest.fixture(scope="session")
def trained_lite0_checkpoint(sample_data, tmp_path_factory):
    """model_final.pth of configs/mask_rcnn_lite0_FPN.yaml, 100 iterations from its ImageNet
    weights (pip) on the sample's trainval images, evaluated on them (eval/ in the run folder)."""
    out = tmp_path_factory.mktemp("lite0_run")
    proc = run_train_net(
        "--config-file", ROOT / "configs/mask_rcnn_lite0_FPN.yaml", "DATASETS.DATA_DIR", sample_data,
        "OUTPUT_DIR", out, "DATASETS.TRAIN", "('mydata_trainval',)", "DATASETS.TEST", "('mydata_trainval',)",
        "SOLVER.MAX_ITER", "100", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "10",
        "SOLVER.CHECKPOINT_PERIOD", "1000", "TEST.EVAL_PERIOD", "0", "SEED", "0",
        "INPUT.AUG.PREVIEW_BATCHES", "0", "TEST.PR_CURVES", "False", *TINY_OVERRIDES,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "model_final.pth"


SLOW_FIXTURES = {"trained_mini_checkpoint", "trained_lite0_checkpoint"}


def pytest_collection_modifyitems(items):
    """Tests that need the trained checkpoint are slow too (the first one trains it)."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread while a module's tests run (``pytest.mark.usefixtures("one_thread")``):
    on 2 cores shared with other processes, a 2-thread pool waits on the busy core and inference
    gets many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def save_random_mask_rcnn(path, seed=0):
    """A Mask R-CNN checkpoint in our format at ``path``: the mini config, random weights from
    ``seed``, 3 classes."""
    import torch
    from detectron2.modeling import build_model

    from segkit.modeling.config import get_segkit_cfg

    cfg = get_segkit_cfg()
    cfg.merge_from_file(str(ROOT / "configs" / "mask_rcnn_R_18_FPN_mini.yaml"))
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(seed)
    model = build_model(cfg)
    torch.save({"model": model.state_dict(), "config": cfg.dump(), "class_names": ["disc", "square", "triangle"],
                "iteration": 0}, path)
    return path


@pytest.fixture(scope="session")
def random_mask_rcnn(tmp_path_factory):
    """A Mask R-CNN checkpoint in our format (the mini config, random weights, 3 classes): at a low
    threshold it finds many instances, which is all the comparison needs."""
    return save_random_mask_rcnn(tmp_path_factory.mktemp("random_mask_rcnn") / "model.pth")


class UnetCheckpoint(NamedTuple):
    path: Path
    class_names: List[str]


@pytest.fixture
def unet_checkpoint(tmp_path):
    """A U-Net checkpoint in our format: configs/unet_R18_mini.yaml, random weights, 3 classes."""
    import torch
    from detectron2.modeling import build_model

    import segkit.modeling.unet  # noqa: F401  registers UNet
    from segkit.modeling.config import get_segkit_cfg

    classes = ["pet", "background", "outline"]
    cfg = get_segkit_cfg()
    cfg.merge_from_file(str(ROOT / "configs" / "unet_R18_mini.yaml"))
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = len(classes)
    cfg.MODEL.UNET.ENCODER_WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg)
    path = tmp_path / "unet.pth"
    torch.save({"model": model.state_dict(), "config": cfg.dump(), "class_names": classes,
                "meta_architecture": "UNet", "iteration": 0}, path)
    return UnetCheckpoint(path, classes)


@pytest.fixture(scope="session")
def serve_app():
    """``with serve_app(app) as url:`` the app (a SegkitApp) served on 127.0.0.1 for the block."""
    from segkit.app.gradio_app import launch

    @contextlib.contextmanager
    def served(app):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launch(app, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
        try:
            yield f"http://127.0.0.1:{port}/"
        finally:
            app.blocks.close(verbose=False)
            app.workdirs.cleanup()

    return served


# ---------------------------------------------------------------- data helpers


def tree_digest(folder, mtimes=False):
    """{relative path: sha256 (and mtime with ``mtimes``)} of every file below ``folder``: equal before
    and after a run when the run left an input alone (``mtimes``: not even rewritten in place)."""
    digest = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                sha = hashlib.sha256(f.read()).hexdigest()
            digest[os.path.relpath(p, folder)] = (sha, os.stat(p).st_mtime_ns) if mtimes else sha
    return digest


def uncompressed_rle_counts(mask):
    """COCO's uncompressed RLE counts of a 0/1 mask (column-major run lengths, starting with zeros),
    written out by hand so that readers are checked against pycocotools, not against themselves."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run_length = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run_length)
            current, run_length = v, 0
        run_length += 1
    counts.append(run_length)
    return counts


# ---------------------------------------------------------------- S3 on 127.0.0.1

SECRET = "testing-secret-never-printed"


@pytest.fixture(scope="module")
def moto_s3(tmp_path_factory):
    """A boto3 client of a moto S3 server on 127.0.0.1, with the usual AWS environment (credentials
    and ``AWS_ENDPOINT_URL_S3``, nothing else) pointing at it for the module's tests and their
    subprocesses."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    import boto3
    from s3fs import S3FileSystem

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    none = str(tmp_path_factory.mktemp("aws") / "none")
    with pytest.MonkeyPatch.context() as env:
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": SECRET,
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}",
                           "AWS_CONFIG_FILE": none, "AWS_SHARED_CREDENTIALS_FILE": none}.items():
            env.setenv(key, value)
        S3FileSystem.clear_instance_cache()  # a cached filesystem would keep another endpoint
        yield boto3.client("s3", endpoint_url=f"http://{host}:{port}")
        S3FileSystem.clear_instance_cache()
    server.stop()


# ---------------------------------------------------------------- import fixtures
# A Label Studio COCO export (tests/test_import_data.py, tests/test_remote_import.py).

W, H = 48, 36


def make_image(path, width=W, height=H, seed=0, fmt=None):
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path, format=fmt)


def rect_poly(x, y, w, h):
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def coco_doc(images, annotations, categories):
    return {"images": images, "annotations": annotations, "categories": categories, "info": {}}


def make_label_studio(root):
    """Label Studio 'COCO': result.json beside images/, ids from 0, Windows separators, hash prefixes,
    an extra 'ignore' key, category 0 used by a real class."""
    make_image(root / "images" / "1a2b3c4d-cat.jpg", seed=1)
    make_image(root / "images" / "5e6f7a8b-two.jpg", seed=2)
    make_image(root / "images" / "9c0d1e2f-empty.jpg", seed=3)
    make_image(root / "images" / "77aa88bb-url.jpg", seed=4)
    make_image(root / "images" / "0f0f0f0f-server.jpg", seed=5)
    doc = coco_doc(
        [{"id": 0, "file_name": "images\\1a2b3c4d-cat.jpg", "width": W, "height": H},
         {"id": 1, "file_name": "images\\5e6f7a8b-two.jpg", "width": W, "height": H},
         {"id": 2, "file_name": "images\\9c0d1e2f-empty.jpg", "width": W, "height": H},
         {"id": 3, "file_name": "images\\deadbeef-gone.jpg", "width": W, "height": H},
         {"id": 4, "file_name": "https://bucket.example.com/ls/77aa88bb-url.jpg?X-Amz-Signature=1", "width": W,
          "height": H},
         {"id": 5, "file_name": "/data/upload/3/0f0f0f0f-server.jpg", "width": W, "height": H}],
        [{"id": 0, "image_id": 0, "category_id": 0, "segmentation": [rect_poly(2, 2, 10, 8)], "bbox": [0, 0, 1, 1],
          "ignore": 0, "iscrowd": 0, "area": 1.0},
         {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [rect_poly(20, 10, 12, 12)], "bbox": [],
          "ignore": 0, "iscrowd": 0},  # no area: recomputed
         {"id": 2, "image_id": 1, "category_id": 0, "segmentation": [rect_poly(1, 1, 5, 5)], "bbox": [1, 1, 5, 5],
          "ignore": 0, "iscrowd": 0, "area": 25.0},
         {"id": 3, "image_id": 3, "category_id": 0, "segmentation": [rect_poly(1, 1, 5, 5)], "bbox": [1, 1, 5, 5],
          "ignore": 0, "iscrowd": 0, "area": 25.0},
         {"id": 4, "image_id": 4, "category_id": 1, "segmentation": [rect_poly(0, 0, 4, 4)], "bbox": [0, 0, 4, 4],
          "ignore": 0, "iscrowd": 0, "area": 16.0}],
        [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}])
    (root / "result.json").write_text(json.dumps(doc))
