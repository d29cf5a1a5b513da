"""`pip install .` brings what segkit imports: the wheel's metadata lists the runtime dependencies
(detectron2 under the platform marker its prebuilt wheel supports) and the extras, with ranges that
the pinned requirements.txt satisfies."""

import ast
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from conftest import ROOT, tree_digest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

LINUX_CP310 = {"platform_system": "Linux", "platform_machine": "x86_64", "platform_python_implementation": "CPython",
               "python_version": "3.10"}
# The second stack (scripts/source_stack.sh): detectron2 built from source, its own exact pins.
LINUX_CP312 = {**LINUX_CP310, "python_version": "3.12", "python_full_version": "3.12.1"}
# Pinned for users, never imported: the annotation program (GPL-3.0), run as its own command.
NOT_IMPORTED = {"labelme"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built from a copy of the sources (the build leaves build/ behind)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in ("segkit", "configs"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    build_backend = Requirement(_pyproject()["build-system"]["requires"][0])
    try:
        offline = importlib.metadata.version(build_backend.name) in build_backend.specifier
    except importlib.metadata.PackageNotFoundError:
        offline = False
    # Without the build backend in this environment, pip fetches it from the package index into an
    # isolated build environment, as scripts/env.sh's `pip install -e .` does.
    flags = ["--no-build-isolation"] if offline else []
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q",
                           *flags, "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = (tmp / "dist").glob("segkit-*.whl")
    return built


@pytest.fixture(scope="module")
def metadata(wheel):
    """The METADATA of the wheel."""
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(z.read(name).decode())


def _pyproject():
    try:
        import tomllib
    except ImportError:  # Python 3.10: pytest's own TOML reader
        import tomli as tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirements(metadata, env=LINUX_CP310):
    """{extra or None: {canonical name: Requirement}} from Requires-Dist, as seen from ``env`` (a
    name listed once per Python version keeps the entry for env's; sal-detectron2 stays listed)."""
    found = {}
    for line in metadata.get_all("Requires-Dist") or []:
        req = Requirement(line)
        extra = next((e for e in metadata.get_all("Provides-Extra") or [] if req.marker and
                      req.marker.evaluate({**env, "extra": e}) and
                      not req.marker.evaluate({**env, "extra": ""})), None)
        name = canonicalize_name(req.name)
        if name in found.get(extra, {}) and req.marker and not req.marker.evaluate({**env, "extra": extra or ""}):
            continue
        found.setdefault(extra, {})[name] = req
    return found


def _pinned(file="requirements.txt"):
    """{canonical name: version} of requirements.txt (the tested set scripts/env.sh installs) or
    requirements-source.txt (scripts/source_stack.sh's)."""
    pins = {}
    for line in (ROOT / file).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            pins[canonicalize_name(req.name)] = req.specifier
    return pins


def _imported_distributions():
    """Distributions of the third-party modules segkit imports (lazy imports included)."""
    by_module = {}  # importlib.metadata.packages_distributions() reads only top_level.txt on Python 3.10
    for dist in importlib.metadata.distributions():
        tops = {line.split(",")[0].split("/")[0] for line in (dist.read_text("RECORD") or "").splitlines()}
        for top in tops - {"", ".."}:
            if not top.endswith((".dist-info", ".egg-info", ".pth")):
                by_module.setdefault(top[:-3] if top.endswith(".py") else top, set()).add(dist.metadata["Name"])
    modules = set()
    for path in (ROOT / "segkit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules.add(node.module.split(".")[0])
    modules -= set(sys.stdlib_module_names) | {"segkit"}
    return {m: {canonicalize_name(d) for d in by_module.get(m, [])} for m in sorted(modules)}


def test_wheel_lists_runtime_dependencies_and_extras(metadata):
    reqs = _requirements(metadata)
    runtime = reqs.get(None, {})
    assert {"torch", "torchvision", "fvcore", "iopath", "numpy", "opencv-python-headless", "pycocotools",
            "gradio", "onnxruntime", "segmentation-models-pytorch"} <= set(runtime)
    detectron2 = runtime["sal-detectron2"]
    assert detectron2.marker.evaluate(LINUX_CP310)
    for elsewhere in ({"platform_system": "Darwin", "platform_machine": "arm64"},
                      {"platform_system": "Windows", "platform_machine": "AMD64"},
                      {"platform_machine": "aarch64"}, {"python_version": "3.11"}):
        assert not detectron2.marker.evaluate({**LINUX_CP310, **elsewhere}), elsewhere
    assert {"cloud", "tests"} <= set(metadata.get_all("Provides-Extra"))
    assert {"fsspec", "s3fs", "gcsfs"} <= set(reqs["cloud"])
    assert {"pytest", "moto", "playwright"} <= set(reqs["tests"])


def test_every_imported_package_is_a_dependency(metadata):
    listed = {name for group in _requirements(metadata).values() for name in group}
    # Built from source (scripts/source_stack.sh), detectron2 installs as "detectron2", which is not
    # on the registry: pyproject lists sal-detectron2 where that wheel works and nothing elsewhere.
    listed.add("detectron2")
    # An optional extra (deploy: openvino, nncf) may be absent on a stack it does not install on
    # (nncf wants numpy < 2.5, the source stack has 2.5); the code imports it only when asked.
    optional = {name for extra, group in _requirements(metadata).items() if extra for name in group}
    missing = {}
    for module, dists in _imported_distributions().items():
        if not dists and canonicalize_name(module) in optional:
            continue
        if not dists & listed:
            missing[module] = sorted(dists) or "not installed"
    assert not missing, missing


# requirements-source.txt also pins what building detectron2 from source needs (its own
# dependencies, which sal-detectron2 brings on the pinned stack, and the build tools).
SOURCE_BUILD_ONLY = {"omegaconf", "hydra-core", "yacs", "termcolor", "cloudpickle", "setuptools", "wheel", "ninja"}


@pytest.mark.parametrize("file, env", [("requirements.txt", LINUX_CP310), ("requirements-source.txt", LINUX_CP312)])
def test_pinned_requirements_fall_in_the_declared_ranges(metadata, file, env):
    declared = {}
    for group in _requirements(metadata, env).values():
        declared.update(group)
    outside = {}
    for name, pin in _pinned(file).items():
        if name in NOT_IMPORTED or (file != "requirements.txt" and name in SOURCE_BUILD_ONLY):
            continue
        assert name in declared, f"{file} pins {name}, which pyproject.toml does not list"
        (exact,) = [Version(s.version) for s in pin if s.operator == "=="] or [None]
        if exact is not None and exact not in declared[name].specifier:
            outside[name] = (str(exact), str(declared[name].specifier))
    assert not outside, outside


def test_every_package_folder_is_listed_and_the_configs_ship(wheel):
    """pyproject.toml lists segkit's packages (configs/ is mapped into the package, which package
    discovery cannot do): a new package folder left out would be missing from the wheel."""
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.relative_to(ROOT).parts) for p in (ROOT / "segkit").rglob("*")
               if p.is_dir() and (p / "__init__.py").is_file()}
    assert on_disk | {"segkit", "segkit.configs"} == listed
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    shipped = {n.split("/")[-1] for n in names if n.startswith("segkit/configs/")}
    assert shipped == {p.name for p in (ROOT / "configs").glob("*.yaml")}
    assert "segkit = segkit.cli.main:main" in entry_points, entry_points


def _fresh_venv_with(wheel, folder):
    """A new venv holding the wheel (and nothing of this checkout), its dependencies borrowed from
    the running environment: a .pth line adds this venv's site-packages after its own, and Python
    reads no .pth file found there (so the checkout's editable install stays invisible)."""
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=300)
    python = folder / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--no-index", str(wheel)], check=True, timeout=300)
    return folder / "bin"


TINY_RUN = ["INPUT.MIN_SIZE_TRAIN", "(144,)", "INPUT.MAX_SIZE_TRAIN", "192", "INPUT.MIN_SIZE_TEST", "144",
            "INPUT.MAX_SIZE_TEST", "192", "DATALOADER.NUM_WORKERS", "0", "INPUT.AUG.PREVIEW_BATCHES", "0",
            "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "4", "TEST.VAL_LOSS_PERIOD", "0", "TEST.PR_CURVES", "False"]

APP_CALL = """
import socket, sys
from gradio_client import Client, handle_file
from segkit.app.gradio_app import build_app, launch
app = build_app(device="cpu")
assert app.model.ready, app.model.error
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
launch(app, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
try:
    client = Client(f"http://127.0.0.1:{port}/", download_files="downloads", verbose=False)
    overlay, table, files, message = client.predict(handle_file(sys.argv[1]), 0.05, [], api_name="/predict")
    print("APP", app.model.weights, overlay is not None, message)
finally:
    app.blocks.close(verbose=False)
"""


def _new_user_session(work, segkit, python, env):
    """Convert, train twice, then predict, the app's API, export and evaluation with no --weights and
    no --config-file, in ``work``. ``segkit(*argv)`` runs one command (``segkit train ...``) and returns
    the CompletedProcess; ``python``: the interpreter for the app's API call."""
    segkit("sample", "--out", "labelme", "--num-images", "8", "--seed", "0")
    segkit("sample", "--out", "labelme_test", "--num-images", "3", "--seed", "1")
    segkit("convert", "labelme", "--no-report", "--quiet")
    segkit("convert", "labelme_test", "--output", "testdata", "--no-report", "--quiet")

    lite0 = ["--config-file", "configs/mask_rcnn_lite0_FPN.yaml"]  # not in `work`: the shipped one
    segkit("train", *lite0, *TINY_RUN, "SOLVER.MAX_ITER", "12", "TEST.EVAL_PERIOD", "0")
    first = work / "output" / "lite0"
    before = tree_digest(first)
    assert "model_final.pth" in before and "metrics.json" in before
    # long enough to predict something on val (the comparison below needs predictions)
    second_run = segkit("train", *lite0, *TINY_RUN, "SOLVER.MAX_ITER", "40", "TEST.EVAL_PERIOD", "40")
    second = work / "output" / "lite0-2"
    assert "Run folder output/lite0-2" in second_run.stderr
    assert tree_digest(first) == before  # the first run untouched: no checkpoint, no metrics line
    assert (work / "output" / "latest_run").read_text().strip() == "lite0-2"
    assert (second / "model_best.pth").is_file()
    training_eval = json.loads((second / "eval" / "coco_instances_results.json").read_text())

    took = "Using output/lite0-2/model_best.pth"
    proc = segkit("predict", "--input", "data/images", "--output", "pred", "--quiet")
    assert took in proc.stderr
    assert len(json.loads((work / "pred" / "images.json").read_text())["images"]) == 8

    image = next((work / "data" / "images").iterdir())
    proc = subprocess.run([str(python), "-c", APP_CALL, str(image)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "APP output/lite0-2/model_best.pth True" in proc.stdout, proc.stdout[-2000:]

    proc = segkit("export", "--format", "onnx")
    assert took in proc.stderr and (second / "model_best.onnx").is_file()

    proc = segkit("val")  # the val split, from the checkpoint's own config
    assert took in proc.stderr
    again = json.loads((second / "eval" / "coco_instances_results.json").read_text())
    assert len(again) == len(training_eval) > 0
    assert [(r["image_id"], r["category_id"]) for r in again] == [(r["image_id"], r["category_id"]) for r in training_eval]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(again, training_eval)) < 1e-4
    segkit("val", "--split", "testdata/trainval.json")
    metrics = json.loads((second / "eval" / "metrics_eval_trainval.json").read_text())
    assert "segm" in metrics and "bbox" in metrics
    assert tree_digest(first) == before


def _runner(command_of, work, env):
    def run(*argv, timeout=600):
        proc = subprocess.run([*command_of(argv[0]), *map(str, argv[1:])], cwd=work, env=env, capture_output=True,
                              text=True, timeout=timeout)
        assert proc.returncode == 0, (argv, proc.stdout[-2000:], proc.stderr[-4000:])
        return proc
    return run


@pytest.mark.slow
def test_installed_wheel_runs_the_new_user_session_outside_the_checkout(wheel, tmp_path):
    """The new user's session (_new_user_session) with the `segkit` command of the wheel installed in a
    fresh venv, in a folder outside the checkout. Evaluating from the checkpoint alone rebuilds the
    trained Lite0 model: the same predictions as training's own evaluation, where train_net's default
    R50 config would give others."""
    bin_dir = _fresh_venv_with(wheel, tmp_path / "venv")
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="2")
    where = subprocess.run([str(bin_dir / "python"), "-c", "import segkit; print(segkit.__file__)"], cwd=work,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(tmp_path / "venv")), where
    _new_user_session(work, _runner(lambda name: ["segkit", name], work, env), bin_dir / "python", env)


# The checkout's own entry points for the session's commands.
SCRIPTS = {"sample": ["-m", "segkit.data.sample"], "convert": [str(ROOT / "labelme2coco.py")],
           "train": [str(ROOT / "train_net.py")], "val": [str(ROOT / "train_net.py"), "--eval-only"],
           "predict": [str(ROOT / "predict.py")], "export": [str(ROOT / "export_model.py")]}


@pytest.mark.slow
def test_checkout_scripts_run_the_new_user_session(tmp_path):
    """The same session with the checkout's scripts (python train_net.py, predict.py, ...), as the
    README shows them, the data and runs in their own folder."""
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="2")
    _new_user_session(work, _runner(lambda name: [sys.executable, *SCRIPTS[name]], work, env), sys.executable, env)
