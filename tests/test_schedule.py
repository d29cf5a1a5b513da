"""Training length in the user's units: SOLVER.EPOCHS and a wall-clock budget (--time-budget)."""

import math
import os
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, TINY_OVERRIDES, run_train_net

from segkit.engine.budget import parse_duration
from segkit.engine.schedule import apply_epochs, count_train_images
from segkit.modeling.config import get_segkit_cfg

MINI = ROOT / "configs/mask_rcnn_R_18_FPN_mini.yaml"


def _cfg(sample_data, *opts):
    from segkit.data.catalog import register_data_dir

    register_data_dir(str(sample_data))
    cfg = get_segkit_cfg()
    cfg.merge_from_file(str(MINI))
    cfg.merge_from_list(["DATASETS.DATA_DIR", str(sample_data), *opts])
    return cfg


def test_epochs_set_iterations_and_place_the_schedule_as_fractions(sample_data):
    opts = ["SOLVER.EPOCHS", "50", "SOLVER.MIN_ITER", "0", "SOLVER.IMS_PER_BATCH", "3"]
    cfg = _cfg(sample_data, *opts)
    n = count_train_images(cfg)
    assert n > 0
    words = apply_epochs(cfg, opts)
    max_iter = math.ceil(50 * n / 3)
    assert cfg.SOLVER.MAX_ITER == max_iter
    assert cfg.SOLVER.STEPS == (round(0.8 * max_iter), round(14 / 15 * max_iter))
    assert cfg.TEST.EVAL_PERIOD == cfg.SOLVER.CHECKPOINT_PERIOD == round(0.1 * max_iter)
    assert cfg.SOLVER.WARMUP_ITERS <= round(0.05 * max_iter)
    assert words.startswith(f"50 epochs of {n} images at batch 3 = {max_iter} iterations; LR drops at ")
    assert f"evaluation every {cfg.TEST.EVAL_PERIOD}" in words


def test_command_line_keys_win_over_epochs(sample_data):
    cfg = _cfg(sample_data, "SOLVER.EPOCHS", "50", "SOLVER.MAX_ITER", "7")
    words = apply_epochs(cfg, ["SOLVER.EPOCHS", "50", "SOLVER.MAX_ITER", "7"])
    assert cfg.SOLVER.MAX_ITER == 7 and "ignored" in words
    cfg = _cfg(sample_data, "SOLVER.EPOCHS", "50", "TEST.EVAL_PERIOD", "0", "SOLVER.STEPS", "(5,)")
    apply_epochs(cfg, ["SOLVER.EPOCHS", "50", "TEST.EVAL_PERIOD", "0", "SOLVER.STEPS", "(5,)"])
    assert cfg.TEST.EVAL_PERIOD == 0 and cfg.SOLVER.STEPS == (5,) and cfg.SOLVER.MAX_ITER > 7
    cfg = _cfg(sample_data, "SOLVER.EPOCHS", "0")
    assert apply_epochs(cfg, ["SOLVER.EPOCHS", "0"]) is None and cfg.SOLVER.MAX_ITER == 600  # off


def test_our_configs_default_to_epochs(sample_data):
    cfg = _cfg(sample_data)
    apply_epochs(cfg, [])
    assert cfg.SOLVER.EPOCHS > 0
    by_epochs = math.ceil(cfg.SOLVER.EPOCHS * count_train_images(cfg) / cfg.SOLVER.IMS_PER_BATCH)
    assert cfg.SOLVER.MAX_ITER == max(by_epochs, cfg.SOLVER.MIN_ITER)


def test_small_sets_get_the_iteration_floor(sample_data):
    opts = ["SOLVER.EPOCHS", "2", "SOLVER.MIN_ITER", "50"]
    cfg = _cfg(sample_data, *opts)
    n = count_train_images(cfg)
    words = apply_epochs(cfg, opts)
    assert math.ceil(2 * n / cfg.SOLVER.IMS_PER_BATCH) < 50 and cfg.SOLVER.MAX_ITER == 50
    assert "raised to SOLVER.MIN_ITER 50" in words and cfg.SOLVER.STEPS == (40, 47)
    cfg = _cfg(sample_data, "SOLVER.EPOCHS", "200", "SOLVER.MIN_ITER", "50")  # the floor does not cap
    apply_epochs(cfg, ["SOLVER.EPOCHS", "200", "SOLVER.MIN_ITER", "50"])
    assert cfg.SOLVER.MAX_ITER == math.ceil(200 * n / cfg.SOLVER.IMS_PER_BATCH) > 50


@pytest.mark.parametrize("text,seconds", [("90", 90), ("90s", 90), ("10m", 600), ("1.5h", 5400), ("1h30m", 5400)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "10x", "0s", "-5m"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def _train(data, out, *extra, flags=()):
    return run_train_net(
        *flags, "--config-file", MINI, "DATASETS.DATA_DIR", data, "OUTPUT_DIR", out,
        "DATASETS.TEST", "()", *TINY_OVERRIDES, *extra,
    )


@pytest.mark.slow
def test_training_by_epochs_runs_that_many_iterations(sample_data, tmp_path):
    cfg = _cfg(sample_data)
    n = count_train_images(cfg)
    proc = _train(sample_data, tmp_path, "SOLVER.EPOCHS", "2", "SOLVER.MIN_ITER", "0", "SOLVER.IMS_PER_BATCH", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    iters = math.ceil(2 * n / 2)
    assert f"2 epochs of {n} images at batch 2 = {iters} iterations" in (tmp_path / "log.txt").read_text()
    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)
    assert ckpt["iteration"] == iters - 1
    assert f"MAX_ITER: {iters}" in ckpt["config"]


@pytest.mark.slow
def test_time_budget_ends_in_time_with_final_checkpoint_and_evaluation(sample_data, tmp_path):
    budget = 40  # room past the 6 timed warm-up iterations even when another job shares the cores
    t0 = time.monotonic()
    proc = run_train_net(
        "--config-file", MINI, "--time-budget", f"{budget}s", "DATASETS.DATA_DIR", sample_data,
        "OUTPUT_DIR", tmp_path, "SOLVER.MAX_ITER", "100000", *TINY_OVERRIDES,
    )
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "log.txt").read_text()
    assert "training to iteration" in log
    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)
    planned = int(ckpt["config"].split("MAX_ITER: ")[1].split()[0])
    assert ckpt["iteration"] == planned - 1 and planned > 6  # ended at its plan, not at 100000
    assert (tmp_path / "eval/metrics_mydata_val.json").is_file()  # the final evaluation ran
    # Behaviour, not a speed target: a generous margin for a loaded machine.
    assert wall < 1.5 * budget, (wall, log[-2000:])

    # --resume counts the time already spent: the budget is used up, so it ends almost at once.
    proc = run_train_net(
        "--resume", "--config-file", MINI, "--time-budget", f"{budget}s", "DATASETS.DATA_DIR", sample_data,
        "OUTPUT_DIR", tmp_path, "SOLVER.MAX_ITER", "100000", *TINY_OVERRIDES,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "log.txt").read_text()
    assert "used by earlier runs" in log
    resumed = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)
    assert planned <= resumed["iteration"] <= planned + 7  # at most a warm-up more


@pytest.mark.slow
def test_time_budget_plans_no_longer_than_the_epochs_rule(sample_data, tmp_path):
    """A generous budget on a small set stops where SOLVER.EPOCHS says, not when the time is up."""
    cfg = _cfg(sample_data)
    rule = math.ceil(6 * count_train_images(cfg) / 2)
    proc = run_train_net(
        "--config-file", MINI, "--time-budget", "10m", "DATASETS.DATA_DIR", sample_data, "OUTPUT_DIR", tmp_path,
        "SOLVER.EPOCHS", "6", "SOLVER.MIN_ITER", "0", "SOLVER.IMS_PER_BATCH", "2", "DATASETS.TEST", "()",
        *TINY_OVERRIDES,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the length SOLVER.EPOCHS gives; the budget allows more" in (tmp_path / "log.txt").read_text()
    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)
    assert ckpt["iteration"] == rule - 1


def _checkpoint_iterations(folder):
    return sorted(int(p.stem.split("_")[1]) for p in folder.glob("model_0*.pth"))


@pytest.mark.slow
def test_time_budget_keeps_a_checkpoint_period_given_on_the_command_line(sample_data, tmp_path):
    proc = run_train_net(
        "--config-file", MINI, "--time-budget", "30s", "DATASETS.DATA_DIR", sample_data, "OUTPUT_DIR", tmp_path,
        "SOLVER.MAX_ITER", "100000", "DATASETS.TEST", "()", "SOLVER.CHECKPOINT_PERIOD", "4",
        "SOLVER.CHECKPOINTS_TO_KEEP", "0", *TINY_OVERRIDES,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)["iteration"]
    assert last > 8
    # every 4th iteration, and the last one (which --resume continues from)
    assert _checkpoint_iterations(tmp_path) == sorted(set(range(3, last + 1, 4)) | {last})


@pytest.mark.slow
def test_time_budget_without_evaluation_checkpoints_and_a_killed_run_resumes_with_its_time(sample_data, tmp_path):
    """No evaluation, no period given: the plan still writes periodic checkpoints (every 10% of
    its length here). A run killed after one resumes from it, counting the time it had used."""
    args = ["--config-file", MINI, "--time-budget", "60s", "DATASETS.DATA_DIR", sample_data, "OUTPUT_DIR", tmp_path,
            "SOLVER.MAX_ITER", "100000", "DATASETS.TEST", "()", *TINY_OVERRIDES]
    env = dict(os.environ, OMP_NUM_THREADS="2")
    proc = subprocess.Popen([sys.executable, str(ROOT / "train_net.py"), *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    pointer = tmp_path / "last_checkpoint"  # written after the checkpoint it names
    try:
        while not pointer.is_file():
            assert proc.poll() is None, "the run ended without a periodic checkpoint: " + proc.stderr.read()[-3000:]
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.communicate()
    saved = torch.load(tmp_path / pointer.read_text().strip(), map_location="cpu", weights_only=True)
    spent = saved["trainer"]["hooks"]["TimeBudget"]["spent_s"]
    assert 0 < spent < 60 and not (tmp_path / "model_final.pth").exists()

    resumed = run_train_net("--resume", *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = (tmp_path / "log.txt").read_text()
    assert f"Starting training from iteration {saved['iteration'] + 1}" in log
    assert f"Time budget 60 s, {spent:.0f} s of it used by earlier runs" in log
    final = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)
    assert final["iteration"] > saved["iteration"]


def test_two_writes_at_one_untimed_iteration_print_without_eta():
    """A resumed run whose budget is spent stops at once: the writer's step and the final write
    share an iteration before any step was timed (detectron2's printer divided by zero there)."""
    from detectron2.utils.events import CommonMetricPrinter, EventStorage

    from segkit.engine.trainer import MetricPrinter

    for printer, crashes in ((CommonMetricPrinter(max_iter=100), True), (MetricPrinter(max_iter=100), False)):
        with EventStorage(start_iter=41) as storage:
            storage.put_scalar("total_loss", 1.0)
            printer.write()
            if crashes:
                with pytest.raises(ZeroDivisionError):
                    printer.write()
            else:
                printer.write()
