"""U-Net semantic segmentation: model, semantic datasets (COCO union, label folder), Dice evaluator.

The training test runs a real (short) detectron2 training of configs/unet_R18_mini.yaml on an easy
trimap set and requires mean IoU >= 0.7 on held-out images (predicting "background" everywhere
scores about 0.23 there).
"""

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import SimpleTrainer
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model

import segkit.modeling.unet as unet_mod  # registers UNet
from segkit.data.sample import make_trimap_sample
from segkit.data.semantic import register_semantic_data_dir, register_semantic_folder
from segkit.evaluation.semantic import SemSegDiceEvaluator
from segkit.modeling.config import get_segkit_cfg

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64  # px; the trimap generator's minimum
TRAIN_ITERS = 70
BATCH = 6


@pytest.fixture
def semantic_log():
    """Warnings of segkit.data.semantic, whatever detectron2's setup_logger did to propagation."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    log = logging.getLogger("segkit.data.semantic")
    log.addHandler(handler)
    yield records
    log.removeHandler(handler)


@pytest.fixture(scope="module")
def trimap(tmp_path_factory):
    """Registered trimap train / val sets (folder way in), made by the sample generator."""
    root = tmp_path_factory.mktemp("trimap")
    names = {}
    for split, seed, n in (("train", 0, 32), ("val", 1, 12)):
        out = root / split
        make_trimap_sample(str(out), n, size=(SIZE, SIZE), seed=seed)
        names[split] = f"test_unet_trimap_{split}"
        register_semantic_folder(names[split], out / "images", out / "annotations", out / "classes.json")
    return root, names


def mini_cfg(train=(), test=()):
    cfg = get_segkit_cfg()
    cfg.merge_from_file(str(ROOT / "configs" / "unet_R18_mini.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = tuple(train), tuple(test)
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (SIZE,), SIZE
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = SIZE, SIZE
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = BATCH
    return cfg


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 busy cores: oversubscribed threads are several times slower
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------
def test_mini_config_builds_unet_and_losses_are_finite(trimap, one_thread):
    _, names = trimap
    cfg = mini_cfg(train=[names["train"]])
    assert cfg.MODEL.META_ARCHITECTURE == "UNet" and cfg.MODEL.UNET.ENCODER == "resnet18"
    assert cfg.MODEL.UNET.ENCODER_WEIGHTS == "" and cfg.SOLVER.OPTIMIZER == "ADAM"
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == -1  # resolved from stuff_classes
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model, unet_mod.UNet) and model.num_classes == 3
    assert model.size_divisibility == 32

    model.train()
    batch = [{"image": torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8),
              "sem_seg": torch.randint(0, 3, (50, 70))},
             {"image": torch.randint(0, 256, (3, 64, 40), dtype=torch.uint8),
              "sem_seg": torch.full((64, 40), 255)}]  # all ignored: must not make NaN
    losses = model(batch)
    assert set(losses) == {"loss_sem_seg", "loss_dice"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    all_ignored = model([batch[1]])
    assert all(torch.isfinite(v) and float(v) == 0 for v in all_ignored.values())

    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8), "height": 100, "width": 140},
                     {"image": torch.randint(0, 256, (3, 64, 40), dtype=torch.uint8)}])
    assert out[0]["sem_seg"].shape == (3, 100, 140)  # resized to the requested size
    assert out[1]["sem_seg"].shape == (3, 64, 40)  # padding cropped away


def test_offline_encoder_weights_stop_with_one_clear_sentence(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached
    monkeypatch.setattr(unet_mod, "_hub_unreachable", lambda: "huggingface.co:443 is unreachable")
    cfg = mini_cfg()
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
    cfg.MODEL.UNET.ENCODER_WEIGHTS = "imagenet"
    with pytest.raises(unet_mod.EncoderWeightsUnavailable) as e:
        build_model(cfg)
    msg = str(e.value)
    assert msg.startswith("Could not download the 'imagenet' weights") and 'MODEL.UNET.ENCODER_WEIGHTS ""' in msg
    assert str(tmp_path / "hub" / "models--smp-hub--resnet18.imagenet" / "snapshots") in msg
    assert "\n" not in msg and msg.count(". ") == 0 and msg.endswith(".")

    cfg.MODEL.UNET.ENCODER_WEIGHTS = ""
    cfg.MODEL.UNET.DECODER_CHANNELS = (64, 32, 16)
    with pytest.raises(ValueError, match="DECODER_CHANNELS has 3 entries but MODEL.UNET.ENCODER_DEPTH is 5"):
        build_model(cfg)


# --------------------------------------------------------------------------------------------
# training + evaluation
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_short_training_reaches_miou_and_dice_report(trimap, tmp_path, one_thread):
    _, names = trimap
    cfg = mini_cfg(train=[names["train"]], test=[names["val"]])
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    trainer = SimpleTrainer(model, build_detection_train_loader(cfg), optimizer)
    trainer.train(0, TRAIN_ITERS)

    out_dir = tmp_path / "eval"
    evaluator = SemSegDiceEvaluator(names["val"], distributed=False, output_dir=str(out_dir))
    results = inference_on_dataset(model, build_detection_test_loader(cfg, names["val"]), evaluator)
    res = results["sem_seg"]
    print(f"mIoU {res['mIoU']:.1f} mDice {res['mDice']:.1f} after {TRAIN_ITERS} iterations")
    assert res["mIoU"] >= 70.0, res

    classes = MetadataCatalog.get(names["val"]).stuff_classes
    assert classes == ["pet", "background", "outline"]
    for key in ("mIoU", "fwIoU", "pACC", "mDice"):
        assert 0 <= res[key] <= 100
    for name in classes:
        iou, dice = res[f"IoU-{name}"] / 100, res[f"Dice-{name}"] / 100
        assert dice == pytest.approx(2 * iou / (1 + iou), abs=1e-9)
        assert dice >= iou
    assert res["mDice"] == pytest.approx(np.mean([res[f"Dice-{c}"] for c in classes]))

    report = json.loads((out_dir / "sem_seg_metrics.json").read_text())
    assert [c["name"] for c in report["classes"]] == classes
    assert report["mIoU"] == pytest.approx(res["mIoU"] / 100)
    counts = np.array(report["confusion_matrix"]["counts"])
    assert counts.shape == (3, 3) and counts.sum() == 12 * SIZE * SIZE  # no ignore pixels here
    assert list(counts.sum(axis=1)) == [c["gt_pixels"] for c in report["classes"]]
    png = Image.open(out_dir / "confusion_matrix.png")
    assert png.format == "PNG" and min(png.size) > 200


def test_dice_evaluator_on_known_confusion(tmp_path):
    """Hand-computed numbers, through the evaluator's own process/evaluate path."""
    name = "test_unet_known_conf"
    img, gt_path = tmp_path / "a.jpg", tmp_path / "a.png"
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [2, 2, 2, 2]], np.uint8)
    Image.fromarray(gt).save(gt_path)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [{"file_name": str(img), "sem_seg_file_name": str(gt_path),
                                            "height": 4, "width": 4}])
    MetadataCatalog.get(name).set(stuff_classes=["a", "b", "c"], ignore_label=255)
    pred = np.array([[0, 0, 0, 1], [0, 0, 1, 1], [2, 2, 0, 1], [2, 2, 2, 1]])
    logits = torch.nn.functional.one_hot(torch.as_tensor(pred), 3).permute(2, 0, 1).float()
    ev = SemSegDiceEvaluator(name, distributed=False, output_dir=str(tmp_path / "out"))
    ev.reset()
    ev.process([{"file_name": str(img)}], [{"sem_seg": logits}])
    res = ev.evaluate()["sem_seg"]
    # a: tp 4, gt 4, pred 5 | b: tp 3, gt 4, pred 4 | c: tp 5, gt 6, pred 5 (ignored pixels do not count)
    assert res["Dice-a"] == pytest.approx(100 * 8 / 9)
    assert res["Dice-b"] == pytest.approx(100 * 6 / 8)
    assert res["Dice-c"] == pytest.approx(100 * 10 / 11)
    assert res["IoU-a"] == pytest.approx(100 * 4 / 5)
    report = json.loads((tmp_path / "out" / "sem_seg_metrics.json").read_text())
    assert report["ignored_pixels"] == 2
    assert report["confusion_matrix"]["counts"] == [[4, 0, 0], [1, 3, 0], [0, 1, 5]]


# --------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------
def _uncompressed_rle(mask):
    """COCO uncompressed RLE (column-major runs, starting with zeros)."""
    flat = mask.flatten(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return {"size": list(mask.shape), "counts": [0] + counts if flat[0] else counts}


def _compressed_rle(mask):
    import pycocotools.mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}  # as JSON files hold it


def _rect_poly(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]  # covers rows y0..y1-1, columns x0..x1-1


def test_semantic_from_coco_union_crowd_and_unknown(tmp_path, semantic_log):
    h, w = 12, 16
    dog_rle = np.zeros((h, w), bool)
    dog_rle[0:4, 10:16] = True
    crowd = np.zeros((h, w), bool)
    crowd[8:12, 12:16] = True
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "segmentation": _rect_poly(0, 0, 6, 6), "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "segmentation": _rect_poly(4, 4, 10, 10), "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 7, "segmentation": _compressed_rle(dog_rle), "iscrowd": 0},
        {"id": 4, "image_id": 1, "category_id": 3, "segmentation": _uncompressed_rle(crowd), "iscrowd": 1},
        {"id": 5, "image_id": 1, "category_id": 99, "segmentation": _rect_poly(0, 10, 2, 12), "iscrowd": 0},
        # small dog on top of the cat: smaller objects are painted after larger ones
        {"id": 6, "image_id": 1, "category_id": 7, "segmentation": _rect_poly(1, 1, 3, 3), "iscrowd": 0},
    ]
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": h, "width": w},
                   {"id": 2, "file_name": "sub/b.jpg", "height": 8, "width": 8}],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
        "annotations": anns,
    }
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "train.json").write_text(json.dumps(coco))
    (data / "val.json").write_text(json.dumps({**coco, "images": coco["images"][1:], "annotations": []}))

    names = register_semantic_data_dir(str(data), prefix="test_unet_coco")
    assert names == ["test_unet_coco_sem_train", "test_unet_coco_sem_val"]
    meta = MetadataCatalog.get(names[0])
    assert meta.stuff_classes == ["background", "cat", "dog"]  # categories by id: cat 3, dog 7
    assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
    assert len(meta.stuff_colors) == 3

    dicts = DatasetCatalog.get(names[0])
    assert [d["file_name"] for d in dicts] == [str(data / "images" / "a.jpg"), str(data / "images" / "sub/b.jpg")]
    assert (dicts[0]["height"], dicts[0]["width"]) == (h, w)
    label = np.array(Image.open(dicts[0]["sem_seg_file_name"]))
    expected = np.zeros((h, w), np.uint8)
    expected[0:6, 0:6] = 1  # union of the two cat instances
    expected[4:10, 4:10] = 1
    expected[0:4, 10:16] = 2
    expected[1:3, 1:3] = 2
    expected[8:12, 12:16] = 255  # crowd
    expected[10:12, 0:2] = 255  # unknown category
    np.testing.assert_array_equal(label, expected)
    assert Image.open(dicts[0]["sem_seg_file_name"]).mode == "L"
    np.testing.assert_array_equal(np.array(Image.open(dicts[1]["sem_seg_file_name"])), 0)
    assert any("category_id 99" in r.getMessage() for r in semantic_log)

    # written once: loading again does not rewrite; a changed JSON does
    mtime = os.stat(dicts[0]["sem_seg_file_name"]).st_mtime_ns
    DatasetCatalog.get(names[0])
    assert os.stat(dicts[0]["sem_seg_file_name"]).st_mtime_ns == mtime
    coco["annotations"] = anns[:4]
    (data / "train.json").write_text(json.dumps(coco))
    register_semantic_data_dir(str(data), prefix="test_unet_coco")
    label = np.array(Image.open(DatasetCatalog.get(names[0])[0]["sem_seg_file_name"]))
    assert (label[10:12, 0:2] == 0).all() and (label[1:3, 1:3] == 1).all()


def test_semantic_folder_remaps_and_reports_unknown_values(tmp_path, semantic_log):
    out = tmp_path / "pets"
    make_trimap_sample(str(out), 3, size=(SIZE, SIZE), seed=5)
    bad = out / "annotations" / "pet_0001.png"
    raw = np.array(Image.open(bad))
    raw[:5, :5] = 7
    Image.fromarray(raw).save(bad)
    name = "test_unet_folder"
    register_semantic_folder(name, out / "images", out / "annotations", out / "classes.json",
                             cache_dir=tmp_path / "cache")
    assert MetadataCatalog.get(name).stuff_classes == ["pet", "background", "outline"]
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 3 and {d["height"] for d in dicts} == {SIZE}

    reports = [r.getMessage() for r in semantic_log if "not in" in r.getMessage()]
    assert len(reports) == 1
    assert str(bad) in reports[0] and "value(s) 7 " in reports[0] and "\n" not in reports[0]

    for d in dicts:
        src = np.array(Image.open(out / "annotations" / (d["image_id"] + ".png")))
        ids = np.array(Image.open(d["sem_seg_file_name"]))
        lut = {1: 0, 2: 1, 3: 2, 7: 255}
        np.testing.assert_array_equal(ids, np.vectorize(lut.get)(src))
    # still reported on the next load (from the cache), never silently used
    semantic_log.clear()
    DatasetCatalog.get(name)
    assert sum("value(s) 7 " in r.getMessage() for r in semantic_log) == 1


@pytest.mark.parametrize("bad, match", [
    ({"1": "pet", "255": "x"}, "ignore label"),
    ({"one": "pet"}, "keys must be pixel values"),
    ({"0": "__ignore__"}, "no classes"),
])
def test_semantic_folder_rejects_bad_mapping(tmp_path, bad, match):
    (tmp_path / "classes.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=match):
        register_semantic_folder("test_unet_bad_mapping", tmp_path, tmp_path, tmp_path / "classes.json")


def test_mini_config_matches_the_trainer_contract():
    cfg = get_segkit_cfg()
    cfg.merge_from_file(str(ROOT / "configs" / "unet_R34.yaml"))
    assert cfg.MODEL.UNET.ENCODER == "resnet34" and cfg.MODEL.UNET.ENCODER_WEIGHTS == "imagenet"
    cfg = get_segkit_cfg()
    cfg.merge_from_file(str(ROOT / "configs" / "unet_R18_mini.yaml"))
    assert cfg.DATASETS.TRAIN == ("mydata_sem_train",) and cfg.DATASETS.TEST == ("mydata_sem_val",)
    assert cfg.DATASETS.DATA_DIR == "data" and cfg.SOLVER.BEST_METRIC == "sem_seg/mIoU"
    assert tuple(cfg.MODEL.UNET.LOSSES) == ("ce", "dice") and cfg.SOLVER.OPTIMIZER == "ADAM"
    assert math.lcm(cfg.MODEL.UNET.SIZE_DIVISIBILITY, 2 ** cfg.MODEL.UNET.ENCODER_DEPTH) == 32
