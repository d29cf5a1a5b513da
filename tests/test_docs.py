"""The README and docs/ stay true: every relative link (and #anchor) resolves, and every command they
show (``python X.py ...``, ``python -m segkit...``, ``./scripts/...``) exists with the flags shown,
as its ``--help`` lists them."""

import contextlib
import io
import os
import re
import runpy
import shlex
import sys
import warnings

import pytest
from conftest import ROOT

PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
SHELL_FENCES = ("", "bash", "sh", "shell", "console")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FLAG = re.compile(r"^--?[A-Za-z][\w-]*")


def _prose(text):
    """The page without its fenced blocks (a '#' there is a shell comment, a '[x](y)' is code)."""
    return FENCE.sub("", text)


def _slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path):
    return {_slug(m[1]) for m in re.finditer(r"^#+ (.+)$", _prose(path.read_text()), re.M)}


def _commands(text):
    """Command lines the page shows: lines of shell code blocks, and inline code spans that start
    like a command."""
    lines = [line.strip() for lang, body in FENCE.findall(text) if lang in SHELL_FENCES for line in body.splitlines()]
    lines += re.findall(r"`([^`\n]+)`", _prose(text))
    return [line for line in lines if line.startswith(("python ", "./scripts/", "segkit "))]


def _entry_point(line):
    """(kind, target, flags) of a command line: ("script", "predict.py", [...]), ("module",
    "segkit.data.report", [...]), ("shell", "scripts/demo.sh", []); None for other programs."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError as e:
        raise AssertionError(f"{line!r}: not a shell command line ({e})") from None
    if not tokens:
        return None
    if tokens[0].startswith("./scripts/"):
        return "shell", tokens[0][2:], []
    if tokens[0] == "segkit" and len(tokens) > 1:
        kind, target, args = "segkit", tokens[1], tokens[2:]
    elif tokens[0] != "python" or len(tokens) < 2:
        return None
    elif tokens[1] == "-m":
        kind, target, args = "module", tokens[2], tokens[3:]
        if not target.startswith("segkit"):
            return None
    else:
        kind, target, args = "script", tokens[1], tokens[2:]
    flags = []
    for token in args:
        for part in token.strip("[]()|,").split("/"):
            match = FLAG.match(part)
            if match:
                flags.append(match[0])
    return kind, target, flags


_HELP = {}


def _help(kind, target):
    """``--help`` output of a script or module, run in this process (its imports are shared, so all
    the help texts take a few seconds together)."""
    if (kind, target) not in _HELP:
        out = io.StringIO()
        argv, path = sys.argv, list(sys.path)
        sys.argv = [target, "--help"]
        try:
            with contextlib.redirect_stdout(out), pytest.raises(SystemExit), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # runpy: "found in sys.modules after import"
                if kind == "segkit":
                    from segkit.cli.main import main

                    main([target, "--help"])
                elif kind == "module":
                    runpy.run_module(target, run_name="__main__", alter_sys=True)
                else:
                    sys.path.insert(0, str((ROOT / target).parent))
                    runpy.run_path(str(ROOT / target), run_name="__main__")
        finally:
            sys.argv, sys.path[:] = argv, path
        _HELP[kind, target] = out.getvalue()
    return _HELP[kind, target]


def test_docs_exist_and_readme_links_every_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 150, "the README is for newcomers: reference material goes to docs/"
    listing = re.search(r"^## Documentation\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
    assert listing, "README has no '## Documentation' section"
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in listing[1], f"README's Documentation list does not link {page.name}"


def test_no_page_cites_a_file_of_the_ignored_results_folder():
    """benchmarks/results/ is ignored by git: a clone has none of its files, so a page gives the
    number itself or the command that writes it, never the file as its source."""
    cited = [f"{page.name}: {m}" for page in PAGES
             for m in re.findall(r"benchmarks/results/[\w.-]*\w", page.read_text())]
    assert not cited, cited


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(_prose(page.read_text())):
        if re.match(r"^[a-z]+:", target):
            continue  # https://, mailto:
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {os.path.relpath(dest, ROOT)}")
    assert not broken, f"{page.name}: {broken}"


def test_every_documented_command_exists_with_its_flags():
    problems = []
    for page in PAGES:
        for line in _commands(page.read_text()):
            found = _entry_point(line)
            if found is None:
                continue
            kind, target, flags = found
            where = f"{page.name}: {line}"
            if kind == "segkit":
                from segkit.cli.main import COMMANDS

                if target not in COMMANDS:
                    problems.append(f"{where}: no segkit command {target}")
                    continue
            elif kind == "module":
                import importlib.util

                if importlib.util.find_spec(target) is None:
                    problems.append(f"{where}: no module {target}")
                    continue
            elif not (ROOT / target).is_file():
                problems.append(f"{where}: no file {target}")
                continue
            if kind == "shell":
                continue
            text = _help(kind, target)
            missing = [f for f in flags if f != "--help" and not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text)]
            if missing:
                problems.append(f"{where}: {target} --help does not list {', '.join(missing)}")
    assert not problems, "\n".join(problems)
