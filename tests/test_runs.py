"""Runs: each training gets its own folder, the latest one is recorded, and every later command finds
its checkpoint by itself (segkit/data/run_layout.py), the configs are found from any folder, and the
installed command dispatches to the scripts' own functions. Fast: no model is trained here (the whole
user session, trainings included, is in test_packaging.py)."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT

from segkit.data.run_layout import (
    LATEST_RUN,
    MODEL_BEST,
    MODEL_FINAL,
    NoModelError,
    latest_run,
    new_run_dir,
    record_latest_run,
    resolve_weights,
    run_name_of,
)


def _run(folder, *files):
    os.makedirs(folder, exist_ok=True)
    for name in files:
        with open(os.path.join(folder, name), "w") as f:
            f.write(name)
    return str(folder)


def test_a_second_run_gets_a_numbered_folder_and_resume_takes_the_newest(tmp_path):
    base = str(tmp_path / "output" / "lite0")
    assert new_run_dir(base) == base  # nothing there yet
    _run(base)
    assert new_run_dir(base) == base  # an empty folder holds no run
    _run(base, "metrics.json", MODEL_FINAL)
    second = new_run_dir(base)
    assert second == base + "-2"
    _run(second, "config.yaml")
    assert new_run_dir(base) == base + "-3"
    assert new_run_dir(base, resume=True) == second
    assert new_run_dir(base, exist_ok=True) == base
    # lite0-10 sorts after lite0-9 by number, not by text
    for n in range(3, 11):
        _run(f"{base}-{n}", "config.yaml")
    assert new_run_dir(base, resume=True) == base + "-10"
    assert new_run_dir(base) == base + "-11"


def test_run_name_comes_from_the_config(tmp_path):
    assert run_name_of("output/lite0", "configs/mask_rcnn_lite0_FPN.yaml") == "output/lite0"
    # a config that leaves OUTPUT_DIR at the runs root gets a folder named after the config file
    assert run_name_of("output", "configs/mask_rcnn_R_50_FPN_3x.yaml") == os.path.join("output", "mask_rcnn_R_50_FPN_3x")
    assert run_name_of("output/", "x/my.yaml") == os.path.join("output", "my")


def test_weights_resolve_from_the_latest_run_best_then_final_then_periodic(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NoModelError, match="Train one first"):
        resolve_weights(None)
    first = _run("output/lite0", MODEL_FINAL, MODEL_BEST)
    record_latest_run(first)
    second = _run("output/lite0-2", "model_0000019.pth")
    with open(os.path.join(second, "last_checkpoint"), "w") as f:
        f.write("model_0000019.pth")
    record_latest_run(second)
    assert open(os.path.join("output", LATEST_RUN)).read().strip() == "lite0-2"
    assert latest_run() == os.path.join("output", "lite0-2")
    # the newest run has only a periodic checkpoint (still training, or stopped early)
    assert resolve_weights(None) == os.path.join("output", "lite0-2", "model_0000019.pth")
    assert "last periodic" in capsys.readouterr().err
    _run(second, MODEL_FINAL)
    assert resolve_weights(None) == os.path.join("output", "lite0-2", MODEL_FINAL)
    _run(second, MODEL_BEST)
    assert resolve_weights(None) == os.path.join("output", "lite0-2", MODEL_BEST)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("Using output/lite0-2/model_best.pth") and "latest run" in line
    # a run folder, a run name, a file
    assert resolve_weights(first) == os.path.join(first, MODEL_BEST)
    assert resolve_weights("lite0") == os.path.join("output", "lite0", MODEL_BEST)
    assert resolve_weights(os.path.join(first, MODEL_FINAL)) == os.path.join(first, MODEL_FINAL)
    with pytest.raises(NoModelError, match="No checkpoint at nope"):
        resolve_weights("nope")
    _run("output/empty")
    with pytest.raises(NoModelError, match="no checkpoint in this run folder"):
        resolve_weights("empty")


def test_shipped_configs_are_found_from_any_folder(tmp_path, monkeypatch):
    from segkit.modeling.config import get_segkit_cfg, resolve_config_file

    monkeypatch.chdir(tmp_path)
    path = resolve_config_file("configs/mask_rcnn_lite0_FPN.yaml")
    assert os.path.isfile(path) and os.path.samefile(path, ROOT / "configs" / "mask_rcnn_lite0_FPN.yaml")
    cfg = get_segkit_cfg()
    cfg.merge_from_file(path)  # its _BASE_ chain resolves beside it
    assert cfg.MODEL.BACKBONE.NAME == "build_efficientnet_lite_fpn_backbone"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mask_rcnn_lite0_FPN.yaml").write_text("_BASE_: x")
    assert resolve_config_file("configs/mask_rcnn_lite0_FPN.yaml") == "configs/mask_rcnn_lite0_FPN.yaml"  # the user's own first
    with pytest.raises(FileNotFoundError, match="no_such.yaml"):
        resolve_config_file("configs/no_such.yaml")


def test_commands_without_a_model_say_what_to_run_first(tmp_path):
    """predict, export and evaluation in a folder without runs: exit with one line naming the command
    that trains one (no traceback)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for argv in (["predict", "--input", str(tmp_path), "--output", str(tmp_path / "out")],
                 ["export", "--format", "onnx"], ["val"], ["review"]):
        proc = subprocess.run([sys.executable, "-m", "segkit", *argv], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0, argv
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert "No checkpoint found" in proc.stderr and "train_net.py --config-file" in proc.stderr, proc.stderr[-2000:]


def test_segkit_command_lists_and_dispatches(tmp_path):
    from segkit.cli.main import COMMANDS, main

    assert {"convert", "import", "train", "val", "predict", "export", "app", "suspects", "review",
            "report"} <= set(COMMANDS)
    assert main(["nonsense"]) == 2
    # each entry names a function that exists (imported here, not at `segkit --help`)
    import importlib

    for name, (module, function, _) in COMMANDS.items():
        assert callable(getattr(importlib.import_module(module), function)), name
    out = tmp_path / "sample"
    assert main(["sample", "--out", str(out), "--num-images", "2", "--seed", "0"]) == 0
    assert main(["convert", str(out), "--output", str(tmp_path / "data"), "--no-report", "--quiet"]) == 0
    assert (tmp_path / "data" / "trainval.json").is_file()
