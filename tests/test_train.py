"""train_net.py end to end on the generated sample: it learns, resumes bit-identically, runs DDP on
CPU, stops cleanly on NaN, and writes checkpoints that inference can use on their own."""

import json
import os

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_OVERRIDES, run_train_net

MINI = ROOT / "configs/mask_rcnn_R_18_FPN_mini.yaml"
pytestmark = pytest.mark.slow  # every test here runs train_net.py or builds trainers


def _short_run(data, out, iters, *extra, flags=()):
    return run_train_net(
        *flags, "--config-file", MINI, "DATASETS.DATA_DIR", data, "OUTPUT_DIR", out,
        "SOLVER.MAX_ITER", iters, "SOLVER.CHECKPOINT_PERIOD", iters, "TEST.EVAL_PERIOD", "0",
        "DATASETS.TEST", "()", *TINY_OVERRIDES, *extra,
    )


def test_overfits_sample_images(trained_mini_checkpoint):
    """Trained from scratch on the sample's trainval images, evaluated on the same images."""
    metrics = json.loads((trained_mini_checkpoint.parent / "eval/metrics_mydata_trainval.json").read_text())
    assert metrics["bbox"]["AP50"] >= 80, metrics["bbox"]
    assert metrics["segm"]["AP50"] >= 80, metrics["segm"]
    out = trained_mini_checkpoint.parent
    assert (out / "loss_curves.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    losses = [r["total_loss"] for r in rows if "total_loss" in r]
    assert losses[-1] < 0.5 * losses[0], losses
    assert any("val_total_loss" in r for r in rows), "validation loss was not logged"


def test_checkpoint_is_self_contained_and_weights_only_loadable(trained_mini_checkpoint):
    ckpt = torch.load(trained_mini_checkpoint, map_location="cpu", weights_only=True)
    assert ckpt["class_names"] == ["disc", "square", "triangle"]
    assert ckpt["meta_architecture"] == "GeneralizedRCNN"
    assert "NUM_CLASSES: 3" in ckpt["config"]  # resolved from the dataset, not the -1 default
    assert ckpt["iteration"] == 199 and "trainer" not in ckpt  # for inference: weights and metadata
    last = trained_mini_checkpoint.parent / (trained_mini_checkpoint.parent / "last_checkpoint").read_text().strip()
    full = torch.load(last, map_location="cpu", weights_only=True)  # for --resume: the full state
    assert last.name == "model_0000199.pth" and "optimizer" in full["trainer"]["_trainer"] and "rng" in full["trainer"]

    from segkit.engine.checkpoint import load_for_inference

    cfg, names = load_for_inference(str(trained_mini_checkpoint))[:2]
    assert names == ckpt["class_names"] and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3

    # The final evaluation's best-F1 thresholds went into model_final (written again after it).
    metrics = json.loads((trained_mini_checkpoint.parent / "eval/metrics_mydata_trainval.json").read_text())
    best = {n: v["threshold"] for n, v in metrics["thresholds"]["per_class"].items() if v["threshold"] is not None}
    assert best and ckpt["score_thresholds"] == best
    assert ckpt["score_threshold"] == metrics["thresholds"]["score_threshold"]
    assert all(0 < t < 1 for t in best.values())


def test_eval_only_writes_metrics(trained_mini_checkpoint, sample_data, tmp_path):
    proc = run_train_net(
        "--config-file", MINI, "--eval-only", "MODEL.WEIGHTS", trained_mini_checkpoint,
        "DATASETS.DATA_DIR", sample_data, "OUTPUT_DIR", tmp_path, *TINY_OVERRIDES,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval/metrics_mydata_val.json").read_text())
    assert set(metrics) >= {"bbox", "segm"}
    assert list((tmp_path / "eval").glob("pr_segm*.png"))


def test_eval_only_with_a_config_file_loads_any_checkpoint_detectron2_loads(trained_mini_checkpoint, sample_data, tmp_path):
    """detectron2's own form, --config-file CONFIG --eval-only MODEL.WEIGHTS FILE: the config file builds
    the model and detectron2's checkpointer reads the weights, so its formats work, here a model-zoo
    style .pkl (numpy arrays, no config inside) that torch.load(weights_only=True) cannot read."""
    import pickle

    state = torch.load(trained_mini_checkpoint, map_location="cpu", weights_only=True)["model"]
    pkl = tmp_path / "zoo_style.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "test"}, f)
    proc = run_train_net("--config-file", MINI, "--eval-only", "MODEL.WEIGHTS", pkl,
                         "DATASETS.DATA_DIR", sample_data, *TINY_OVERRIDES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "eval/metrics_mydata_val.json").read_text())["segm"]["AP"] > 0
    url = run_train_net("--eval-only", "--weights", "detectron2://no/such/model.pkl", cwd=tmp_path)
    assert url.returncode != 0 and "needs --config-file" in url.stderr.strip().splitlines()[-1]


def test_eval_only_on_the_test_split_as_the_import_summary_says(trained_mini_checkpoint, sample_data, tmp_path):
    """The command the import summary prints for a test split runs and measures the model on test.json."""
    import shlex
    import shutil

    from segkit.data.layout import eval_test_lines
    from segkit.data.run_layout import record_latest_run

    data = tmp_path / "data"
    shutil.copytree(sample_data, data)
    shutil.copy(data / "val.json", data / "test.json")
    # the command evaluates the latest run, as it is after a training in this folder
    run = tmp_path / "output" / "mini"
    run.mkdir(parents=True)
    shutil.copy(trained_mini_checkpoint, run / "model_final.pth")
    record_latest_run(str(run))
    command = shlex.split(eval_test_lines(str(data))[-1])
    assert command[:2] == ["python", "train_net.py"] and "--weights" not in command
    proc = run_train_net(*command[2:], "OUTPUT_DIR", tmp_path / "eval_test", *TINY_OVERRIDES, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval_test/eval/metrics_mydata_test.json").read_text())
    assert set(metrics) >= {"bbox", "segm"}


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_resume_is_bit_identical(sample_data, tmp_path):
    """2N iterations in one run == N iterations, then --resume to 2N (data workers included)."""
    n = 3
    common = ["DATALOADER.NUM_WORKERS", "1", "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "(4,)"]
    straight = _short_run(sample_data, tmp_path / "straight", 2 * n, *common)
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = _short_run(sample_data, tmp_path / "resumed", n, *common)
    assert first.returncode == 0, first.stderr[-3000:]
    second = _short_run(sample_data, tmp_path / "resumed", 2 * n, *common, flags=("--resume",))
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"Starting training from iteration {n}" in (tmp_path / "resumed/log.txt").read_text()
    a = _weights(tmp_path / "straight/model_final.pth")
    b = _weights(tmp_path / "resumed/model_final.pth")
    mid = _weights(tmp_path / "resumed" / f"model_{n - 1:07d}.pth")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    assert any(not torch.equal(a[k], mid[k]) for k in a), "the resumed run did not train"


def test_keeps_last_checkpoints_and_writes_final_and_best_for_inference(sample_data, tmp_path):
    """SOLVER.CHECKPOINTS_TO_KEEP (default 1) periodic checkpoints of a run stay (and the one a resumed
    run started from); the last iteration's full state is one of them even off the period;
    model_final/model_best hold no optimizer."""
    common = ["SOLVER.CHECKPOINT_PERIOD", "2", "DATASETS.TEST", "('mydata_val',)", "TEST.EVAL_PERIOD", "2",
              "SOLVER.BEST_METRIC", "bbox/AP50", "TEST.PR_CURVES", "False", "SOLVER.WARMUP_ITERS", "1"]
    first = _short_run(sample_data, tmp_path, 5, *common)
    assert first.returncode == 0, first.stderr[-3000:]
    files = sorted(p.name for p in tmp_path.glob("*.pth"))
    assert files == ["model_0000004.pth", "model_best.pth", "model_final.pth"], files
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000004.pth"
    full = torch.load(tmp_path / "model_0000004.pth", map_location="cpu", weights_only=True)
    assert "optimizer" in full["trainer"]["_trainer"] and "rng" in full["trainer"]
    assert "LRScheduler" in full["trainer"]["hooks"]
    for name in ("model_final.pth", "model_best.pth"):
        light = torch.load(tmp_path / name, map_location="cpu", weights_only=True)
        assert "trainer" not in light and not {"optimizer", "scheduler"} & set(light), sorted(light)
        assert light["class_names"] == ["disc", "square", "triangle"] and "config" in light
        assert (tmp_path / name).stat().st_size < 0.6 * (tmp_path / "model_0000004.pth").stat().st_size
    assert torch.equal(_weights(tmp_path / "model_final.pth")["roi_heads.box_predictor.cls_score.weight"],
                       full["model"]["roi_heads.box_predictor.cls_score.weight"])

    second = _short_run(sample_data, tmp_path, 7, *common, flags=("--resume",))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Starting training from iteration 5" in (tmp_path / "log.txt").read_text()
    files = sorted(p.name for p in tmp_path.glob("*.pth"))
    assert files == ["model_0000004.pth", "model_0000006.pth", "model_best.pth", "model_final.pth"], files


def test_training_batch_pictures_leave_training_unchanged(sample_data, tmp_path):
    import cv2

    with_pictures = _short_run(sample_data, tmp_path / "with", 2, "INPUT.AUG.PREVIEW_BATCHES", "2")
    assert with_pictures.returncode == 0, with_pictures.stderr[-3000:]
    without = _short_run(sample_data, tmp_path / "without", 2, "INPUT.AUG.PREVIEW_BATCHES", "0")
    assert without.returncode == 0, without.stderr[-3000:]
    written = sorted(p.name for p in (tmp_path / "with").glob("train_batch_*.png"))
    assert written == ["train_batch_0.png", "train_batch_1.png"]
    assert not list((tmp_path / "without").glob("train_batch_*.png"))
    sheet = cv2.imread(str(tmp_path / "with/train_batch_0.png"))
    assert sheet.shape[1] >= 2 * 192  # IMS_PER_BATCH (2) images of 192 px side by side
    # the ground truth is drawn: Visualizer's label boxes and mask fills change many pixels
    assert len(np.unique(sheet.reshape(-1, 3), axis=0)) > 1000
    a, b = _weights(tmp_path / "with/model_final.pth"), _weights(tmp_path / "without/model_final.pth")
    assert all(torch.equal(a[k], b[k]) for k in a), "drawing the batches changed the training's random stream"


def test_ddp_two_cpu_processes(sample_data, tmp_path):
    proc = _short_run(sample_data, tmp_path / "ddp", 2, "SOLVER.IMS_PER_BATCH", "2", flags=("--num-gpus", "2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "gloo" in proc.stderr
    files = sorted(os.listdir(tmp_path / "ddp"))
    assert not [f for f in files if "rank" in f], files  # rank 1 wrote no log of its own
    assert "model_final.pth" in files and "config.yaml" in files
    ckpt = torch.load(tmp_path / "ddp/model_final.pth", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["model"])  # loadable without DDP
    assert ckpt["iteration"] == 1


def test_early_stopping_under_ddp_stops_every_rank(sample_data, tmp_path):
    """Only rank 0 has the metric; its decision reaches rank 1, so both stop at the same iteration
    and exit cleanly (before: rank 1 died in the next all-reduce)."""
    proc = _short_run(
        sample_data, tmp_path, 40, "SOLVER.IMS_PER_BATCH", "2", "DATASETS.TEST", "('mydata_val',)",
        "TEST.EVAL_PERIOD", "2", "SOLVER.EARLY_STOP_PATIENCE", "1", "SOLVER.BEST_METRIC", "bbox/AP50",
        "TEST.PR_CURVES", "False", flags=("--num-gpus", "2"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Early stop at iteration" in proc.stdout, proc.stdout[-3000:]
    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)
    assert ckpt["iteration"] < 39 and (ckpt["iteration"] + 1) % 2 == 0, ckpt["iteration"]


def test_nan_loss_stops_with_one_sentence_and_keeps_last_good_checkpoint(sample_data, tmp_path):
    proc = _short_run(
        sample_data, tmp_path, 30, "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.BASE_LR", "1e6",
        "SOLVER.WARMUP_ITERS", "0", "SOLVER.CLIP_GRADIENTS.ENABLED", "False",
    )
    assert proc.returncode == 1
    error = [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(error) == 1 and "NaN or infinite at iteration" in error[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "model_final.pth").exists()
    last = (tmp_path / "last_checkpoint").read_text().strip()
    assert last in error[0]
    weights = _weights(tmp_path / last)
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_unreachable_weights_fail_with_one_sentence(sample_data, tmp_path):
    proc = _short_run(sample_data, tmp_path, 2, "MODEL.WEIGHTS", "http://127.0.0.1:9/model_final.pkl")
    assert proc.returncode == 1
    error = [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(error) == 1 and "Could not download http://127.0.0.1:9/model_final.pkl" in error[0]
    assert "MODEL.WEIGHTS" in error[0]


def test_torchvision_resnet_weights_are_converted_into_the_backbone():
    import torchvision
    from segkit.engine.checkpoint import SegkitCheckpointer, torchvision_resnet_to_d2
    from segkit.modeling.config import get_segkit_cfg
    from detectron2.modeling import build_model

    cfg = get_segkit_cfg()
    cfg.merge_from_file(str(MINI))
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    tv = torchvision.models.resnet18(weights=None).state_dict()
    checkpointer = SegkitCheckpointer(model)
    checkpointer._load_model({"model": torchvision_resnet_to_d2(tv), "matching_heuristics": True, "__author__": "torchvision"})
    ours = model.state_dict()
    assert torch.equal(ours["backbone.bottom_up.stem.conv1.weight"], tv["conv1.weight"])
    assert torch.equal(ours["backbone.bottom_up.res5.1.conv2.weight"], tv["layer4.1.conv2.weight"])
    assert torch.equal(ours["backbone.bottom_up.res3.0.shortcut.weight"], tv["layer2.0.downsample.0.weight"])
    assert torch.equal(ours["backbone.bottom_up.res4.0.conv1.norm.weight"], tv["layer3.0.bn1.weight"])


def test_unet_trains_through_train_net_and_resumes(sample_data, tmp_path):
    """The U-Net meta-architecture runs through the same train_net.py: COCO folder -> semantic
    dataset, Adam, checkpoint with stuff classes, SemSegEvaluator Dice/IoU, --resume."""
    unet = ROOT / "configs/unet_R18_mini.yaml"
    common = ["DATASETS.DATA_DIR", sample_data, "OUTPUT_DIR", tmp_path, "SOLVER.IMS_PER_BATCH", "2",
              "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "0", *TINY_OVERRIDES]
    first = run_train_net("--config-file", unet, "SOLVER.MAX_ITER", "2", *common)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_train_net("--resume", "--config-file", unet, "SOLVER.MAX_ITER", "4", *common)
    assert second.returncode == 0, second.stderr[-3000:]
    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)
    assert ckpt["meta_architecture"] == "UNet" and ckpt["iteration"] == 3
    assert ckpt["class_names"] == ["background", "disc", "square", "triangle"]
    metrics = json.loads((tmp_path / "eval/sem_seg_metrics.json").read_text())
    assert 0 <= metrics["mIoU"] <= 1 and 0 <= metrics["mDice"] <= 1, metrics
    assert [c["name"] for c in metrics["classes"]] == ckpt["class_names"]


# DefaultTrainer.__init__ of detectron2 0.7.2 (upstream a59f0563), which Trainer.__init__ mirrors.
MIRRORED_DEFAULT_TRAINER_INIT_SHA256 = "d7a2d8646201904756a9ea89a504933a9dacff5a923192368c757a31b0999b05"


def test_trainer_init_mirrors_detectron2_default_trainer(sample_data, tmp_path):
    """Trainer.__init__ copies DefaultTrainer.__init__ with three changes (see its comment): when
    detectron2's changes, this fails so the copy is looked at again; and a Trainer ends up with
    what a DefaultTrainer has."""
    import hashlib
    import inspect

    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.engine import DefaultTrainer

    from segkit.engine.launch import build_argument_parser, setup
    from segkit.engine.trainer import Trainer

    source = inspect.getsource(DefaultTrainer.__init__)
    assert hashlib.sha256(source.encode()).hexdigest() == MIRRORED_DEFAULT_TRAINER_INIT_SHA256, source

    args = build_argument_parser().parse_args([
        "--config-file", str(MINI), "DATASETS.DATA_DIR", str(sample_data), "OUTPUT_DIR", str(tmp_path),
        "DATASETS.TEST", "()", *TINY_OVERRIDES])
    cfg = setup(args)
    ours, theirs = Trainer(cfg), DefaultTrainer(cfg)
    assert ours.cfg.dump() == theirs.cfg.dump()
    for name in ("model", "optimizer", "scheduler", "_trainer"):
        # by name: maybe_add_gradient_clipping makes a new optimizer class on every call
        assert type(getattr(ours, name)).__name__ == type(getattr(theirs, name)).__name__, name
    assert isinstance(ours.checkpointer, DetectionCheckpointer)
    assert ours.max_iter == theirs.max_iter and ours.start_iter == theirs.start_iter == 0
    assert len(ours.optimizer.param_groups) == len(theirs.optimizer.param_groups)
    assert type(ours.scheduler) is type(theirs.scheduler)
    # ours may be a subclass (PeriodicCheckpointer keeps the last N checkpoints)
    assert all(any(isinstance(h, type(t)) for h in ours._hooks) for t in theirs._hooks)


def test_precise_bn_runs_where_batch_norm_trains_and_says_so_where_none_does(sample_data, tmp_path):
    """TEST.PRECISE_BN.ENABLED used to do nothing without a word: Trainer.build_hooks left out the
    PreciseBN hook DefaultTrainer makes. Only the hooks are built here; nothing trains."""
    import logging

    from detectron2.engine import hooks

    from segkit.engine.budget import TimeBudget
    from segkit.engine.launch import build_argument_parser, setup
    from segkit.engine.trainer import Trainer

    def trainer_and_warnings(config, *opts):
        args = build_argument_parser().parse_args([
            "--config-file", str(config), "DATASETS.DATA_DIR", str(sample_data),
            "OUTPUT_DIR", str(tmp_path / config.stem), "TEST.PRECISE_BN.ENABLED", "True",
            "INPUT.AUG.PREVIEW_BATCHES", "0", *opts, *TINY_OVERRIDES])
        cfg = setup(args)  # sets up the "segkit" logger (no propagation): listen on it after
        said = []
        listener = logging.Handler(logging.WARNING)
        listener.emit = lambda record: said.append(record.getMessage())
        logging.getLogger("segkit").addHandler(listener)
        try:
            trainer = Trainer(cfg)
        finally:
            logging.getLogger("segkit").removeHandler(listener)
        return trainer, [m for m in said if "PRECISE_BN" in m]

    # The U-Net's batch norm trains: fresh statistics before each evaluation, ahead of the
    # checkpointer (so checkpoints hold them) and of the evaluation, as in DefaultTrainer.
    unet, said = trainer_and_warnings(ROOT / "configs/unet_R18_mini.yaml", "TEST.EVAL_PERIOD", "7",
                                         "SOLVER.TIME_BUDGET", "3600")
    precise = [h for h in unet._hooks if isinstance(h, hooks.PreciseBN)]
    assert len(precise) == 1 and precise[0]._period == 7 and not precise[0]._disabled and said == []
    names = [type(h).__name__ for h in unet._hooks]
    assert names.index("PreciseBN") < names.index("PeriodicCheckpointer") < names.index("EvalHook")
    # a time budget that moves the evaluations moves the recomputation with them
    budget = next(h for h in unet._hooks if isinstance(h, TimeBudget))
    budget._apply(dict(TimeBudget._cfg_plan(unet.cfg), eval_period=5), announce=False)
    assert precise[0]._period == 5

    # The mini R-CNN has GN and FrozenBN only: nothing to recompute, and one line says so.
    rcnn, said = trainer_and_warnings(MINI, "DATASETS.TEST", "()")
    assert not any(isinstance(h, hooks.PreciseBN) for h in rcnn._hooks)
    assert len(said) == 1 and "does nothing for this model" in said[0], said


def test_test_time_augmentation_evaluates_after_training_and_with_eval_only(trained_mini_checkpoint, sample_data, tmp_path):
    """TEST.AUG.ENABLED as in detectron2's tools/train_net.py: one extra evaluation through
    GeneralizedRCNNWithTTA after the last iteration, and beside the plain one with --eval-only."""
    tta = ("TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(192, 224)")
    out = tmp_path / "train"
    proc = _short_run(sample_data, out, "2", "DATASETS.TEST", "('mydata_val',)", "MODEL.WEIGHTS",
                      trained_mini_checkpoint, *tta)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert any("segm_TTA/AP" in r for r in rows) and any("segm/AP" in r for r in rows)
    trained = json.loads((out / "eval_TTA/metrics_mydata_val.json").read_text())
    proc = run_train_net("--config-file", MINI, "--eval-only", "MODEL.WEIGHTS", trained_mini_checkpoint,
                         "DATASETS.DATA_DIR", sample_data, "OUTPUT_DIR", tmp_path / "eval", *TINY_OVERRIDES, *tta)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = json.loads((tmp_path / "eval/eval/metrics_mydata_val.json").read_text())
    augmented = json.loads((tmp_path / "eval/eval_TTA/metrics_mydata_val.json").read_text())
    assert augmented["segm"]["AP50"] >= 50 and abs(augmented["segm"]["AP"] - plain["segm"]["AP"]) < 30
    assert trained["segm"]["AP50"] >= 50
