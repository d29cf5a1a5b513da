"""The set-up's choice of Python (scripts/find_python.sh, scripts/env.sh) and the CI's way of hiding
Python 3.10 (scripts/with_python312_only.sh), on stand-in interpreters: small shell scripts that
answer the version question, in a scratch pyenv root. Nothing is installed."""

import os
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT


def _fake_python(path: Path, version: str, works: bool = True):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {version}\n" if works else "#!/bin/sh\nexit 1\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def machine(tmp_path):
    """A scratch pyenv root with 3.10 (working), 3.11 (broken) and 3.12; a bin folder on the PATH
    with a python3.10; a HOME without conda."""
    pyenv = tmp_path / "pyenv"
    fakes = {v: _fake_python(pyenv / "versions" / v / "bin" / "python", v[:4])
             for v in ("3.10.9", "3.12.4", "3.13.0")}
    _fake_python(pyenv / "versions" / "3.11.2" / "bin" / "python", "3.11", works=False)
    on_path = _fake_python(tmp_path / "bin" / "python3.10", "3.10")
    (tmp_path / "home").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "CONDA_PREFIX", "PYENV_VERSION")}
    # The system folders stay for the tools the scripts use (mktemp, ln, ...), never pyenv's shims.
    env.update(PYENV_ROOT=str(pyenv), HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"),
               PATH=f"{tmp_path / 'bin'}:/usr/bin:/bin")
    return env, fakes, on_path


def _bash(script, env):
    return subprocess.run(["bash", "-c", f"source scripts/find_python.sh; {script}"], cwd=ROOT, env=env,
                          capture_output=True, text=True)


def test_find_python_takes_the_path_first_then_pyenv_and_skips_broken_ones(machine):
    env, fakes, on_path = machine
    assert _bash("find_python 3.10", env).stdout.strip() == str(on_path)
    assert _bash("find_python 3.12", env).stdout.strip() == str(fakes["3.12.4"])
    broken = _bash("find_python 3.11", env)
    assert str(ROOT) not in broken.stdout and "3.11.2" not in broken.stdout
    assert _bash("py_version " + str(fakes["3.13.0"]), env).stdout.strip() == "3.13"


@pytest.mark.skipif(any(Path(d, "python3.10").exists() for d in ("/usr/bin", "/bin", "/usr/local/bin")),
                    reason="a system Python 3.10 cannot be hidden")
def test_with_python312_only_hides_every_python310(machine):
    env, fakes, _ = machine
    out = subprocess.run(["scripts/with_python312_only.sh", "bash", "-c",
                          "echo PYTHON=${PYTHON:-unset}; source scripts/find_python.sh; "
                          "find_python 3.10 || echo 'no 3.10'; find_python 3.12; find_python 3.13 || echo 'no 3.13'"],
                         cwd=ROOT, env={**env, "PYTHON": str(fakes["3.10.9"])}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("== only Python 3.12 visible")
    assert lines[1:3] == ["PYTHON=unset", "no 3.10"]
    # 3.12 through the stand-in pyenv root, which links to the real version folder
    assert lines[3].endswith("/versions/3.12.4/bin/python") and Path(lines[3]).resolve() == fakes["3.12.4"].resolve()
    assert lines[4] == "no 3.13"


def test_env_sh_refuses_an_unsupported_python_and_a_folder_that_is_not_a_venv(machine, tmp_path):
    env, fakes, _ = machine
    out = subprocess.run(["bash", "-c", "source scripts/env.sh"], cwd=ROOT, capture_output=True, text=True,
                         env={**env, "PYTHON": str(fakes["3.13.0"]), "SEGKIT_VENV": str(tmp_path / "v")})
    assert out.returncode == 1 and "is Python 3.13, not a working Python 3.10, 3.11 or 3.12" in out.stderr
    precious = tmp_path / "notavenv"
    precious.mkdir()
    (precious / "keep").write_text("x")
    out = subprocess.run(["bash", "-c", "source scripts/env.sh"], cwd=ROOT, capture_output=True, text=True,
                         env={**env, "PYTHON": str(fakes["3.12.4"]), "SEGKIT_VENV": str(precious)})
    assert out.returncode == 1 and "refusing to replace it" in out.stderr
    assert "No Python 3.10 found" not in out.stdout and "PYTHON is Python 3.12" in out.stdout
    assert (precious / "keep").exists()
