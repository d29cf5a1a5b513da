"""The package's stages import only from the stages before them (data -> modeling -> engine ->
evaluation -> inference -> app), and no module imports LabelMe (GPL-3.0)."""

import ast

from conftest import ROOT

STAGES = ["data", "modeling", "engine", "evaluation", "inference", "app"]


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_stages_import_only_earlier_stages_and_never_labelme():
    problems = []
    for path in sorted((ROOT / "segkit").rglob("*.py")):
        rel = path.relative_to(ROOT / "segkit")
        stage = STAGES.index(rel.parts[0]) if rel.parts[0] in STAGES else -1
        for module in _imports(path):
            parts = module.split(".")
            if parts[0] == "labelme":
                problems.append(f"{rel} imports labelme")
            if parts[0] == "segkit" and len(parts) > 1 and parts[1] in STAGES:
                if stage < 0 or STAGES.index(parts[1]) > stage:
                    problems.append(f"{rel} ({rel.parts[0]}) imports {module}")
    assert not problems, problems
