"""The layers of docs/architecture.md: no module imports a later layer (lazy imports count)."""

from __future__ import annotations

import ast
from pathlib import Path

import mstage

PACKAGE = Path(mstage.__file__).parent

# Earlier layers never import later ones; a layer may import itself and anything earlier.
LAYERS = [
    {"__init__", "errors", "columns", "config", "progress", "workspace"},
    {"data"},
    {"models"},
    {"features", "index"},
    {"pipeline"},
    {"serving"},
    {"evaluation"},
    {"training"},
    {"cli", "__main__"},
]
LAYER = {part: i for i, parts in enumerate(LAYERS) for part in parts}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


def _part(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_package_has_a_layer():
    assert {_part(p) for p in _modules()} <= set(LAYER)


def test_no_module_imports_a_later_layer():
    wrong = []
    for path in _modules():
        own = LAYER[_part(path)]
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "mstage" and len(parts) > 1 and LAYER.get(parts[1], -1) > own:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert wrong == []


def test_only_the_cli_imports_typer():
    wrong = [str(p.relative_to(PACKAGE)) for p in _modules() if _part(p) != "cli"
             and any(n.split(".")[0] == "typer" for n in _imports(p))]
    assert wrong == []


def test_earlier_stages_never_import_a_later_one():
    order = ["retrieval", "filtering", "scoring", "ordering"]
    wrong = []
    for i, stage in enumerate(order):
        for name in _imports(PACKAGE / "pipeline" / f"{stage}.py"):
            later = [s for s in order[i + 1:] if name == f"mstage.pipeline.{s}"]
            wrong += [f"{stage} imports {name}" for _ in later]
    assert wrong == []
