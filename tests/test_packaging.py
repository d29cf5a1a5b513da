"""`pip install .` brings what segkit imports: the wheel's metadata lists the runtime dependencies
(detectron2 under the platform marker its prebuilt wheel supports) and the extras, with ranges that
the pinned requirements.txt satisfies."""

import ast
import importlib.metadata
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser

import pytest
from conftest import ROOT
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
def metadata(tmp_path_factory):
    """The METADATA of a wheel built from a copy of the sources (the build leaves build/ behind)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "segkit", src / "segkit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
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
    (wheel,) = (tmp / "dist").glob("segkit-*.whl")
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
    missing = {}
    for module, dists in _imported_distributions().items():
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
