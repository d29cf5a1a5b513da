"""The GPU kit (benchmarks/gpu/) runs on a lent machine without a registry, so everything it runs is
run here first: its dry run on the CPU (every step, tiny), and its wheel list against the pins the
source stack proved."""
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def _pins(path):
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            pins[canonicalize_name(req.name)] = str(req.specifier)
    return pins


def test_carried_wheels_are_the_versions_the_source_stack_proved():
    wheels = _pins(ROOT / "benchmarks" / "gpu" / "wheels.txt")
    proved = _pins(ROOT / "requirements-source.txt")
    assert all(spec.startswith("==") for spec in wheels.values()), wheels
    differ = {name: (spec, proved[name]) for name, spec in wheels.items() if name in proved and proved[name] != spec}
    assert not differ, differ
    # what detectron2 and segkit import that the GPU machine lacks (it has torch, numpy, opencv, ...)
    assert {"fvcore", "iopath", "pycocotools", "yacs", "omegaconf", "matplotlib", "ninja"} <= set(wheels)


@pytest.mark.slow
@pytest.mark.skipif(sys.version_info[:2] != (3, 12),
                    reason="the GPU machine runs Python 3.12 with numpy 2: CI runs this dry run on the source "
                           "stack (scripts/source_stack.sh), the nearest to it")
def test_dry_run_on_the_cpu_writes_every_row(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu" / "run.sh"), "--cpu", "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_rows.json").read_text())
    assert report["dry_run"] is True and report["machine"]["gpu"] is None
    assert {r["config"] for r in report["train"]} == {"R50-FPN", "mini", "lite0"}
    assert all(r["images_per_s"] > 0 and r["device"] == "cpu" for r in report["train"])
    timed = {r["model"]: r for r in report["infer"] if "median_ms" in r}
    assert set(timed) == {"R50-FPN", "mini", "lite0"}, report["infer"]
    assert timed["R50-FPN"]["vs_model_zoo_v100"] > 0
    finetune = report["finetune"]
    assert finetune["checkpoint"] == "model_final.pth"
    assert (tmp_path / "finetune" / "model_final.pth").is_file()
    assert "segm_AP" in finetune and "bbox_AP" in finetune
    assert "| training |" in proc.stdout and "wrote" in proc.stdout
