import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
LABELME_EXAMPLES = SHARED / "labelme-examples"

# Tests run on 2 cores next to each other: one intra-op thread pool per process is plenty.
os.environ.setdefault("OMP_NUM_THREADS", "2")

requires_shared = pytest.mark.skipif(
    not LABELME_EXAMPLES.is_dir(), reason="../shared/labelme-examples is not present"
)


def run_train_net(*args, cwd=ROOT, timeout=900):
    """train_net.py in a subprocess (as a user runs it); returns the CompletedProcess."""
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2")
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
