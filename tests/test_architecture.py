"""The package's stages import only from the stages before them (data -> modeling -> engine ->
evaluation -> inference -> loop -> app -> cli), and no module imports LabelMe (GPL-3.0)."""

import ast

from conftest import ROOT

STAGES = ["data", "modeling", "engine", "evaluation", "inference", "loop", "app", "cli"]
# `python -m segkit` is the installed command: it belongs to the last stage.
ROOT_MODULES_AS_STAGE = {"__main__.py": "cli"}


def test_stages_import_only_earlier_stages_and_never_labelme():
    problems = []
    for path in sorted((ROOT / "segkit").rglob("*.py")):
        rel = path.relative_to(ROOT / "segkit")
        first = ROOT_MODULES_AS_STAGE.get(str(rel), rel.parts[0])
        stage = STAGES.index(first) if first in STAGES else -1
        for module in sorted(set(_imported_modules(path))):
            parts = module.split(".")
            if parts[0] == "labelme":
                problems.append(f"{rel} imports labelme")
            if parts[0] == "segkit" and len(parts) > 1 and parts[1] in STAGES:
                if stage < 0 or STAGES.index(parts[1]) > stage:
                    problems.append(f"{rel} ({rel.parts[0]}) imports {module}")
    assert not problems, problems


def _module_name(path):
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path):
    """Every module an import statement may load, ``from pkg import name`` giving ``pkg`` and ``pkg.name``."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def test_no_import_cycles_inside_a_stage():
    """Lazy imports inside functions count too: a cycle is what made converting a folder load torch."""
    modules = {_module_name(p): p for p in sorted((ROOT / "segkit").rglob("*.py"))}
    graph = {}
    for name, path in modules.items():
        stage = name.split(".")[1] if name.count(".") else None
        targets = set()
        for candidate in _imported_modules(path):
            if candidate in modules and candidate != name and candidate.split(".")[1:2] == [stage]:
                targets.add(candidate)
        graph[name] = targets
    cycles = []
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles
