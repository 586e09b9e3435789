"""The layering of docs/architecture.md, checked on the code: every module imports (at the top or
inside a function) only from layers below its own, or from its own package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "pretune"

# bottom first; a unit is a top-level module or package of pretune (as docs/architecture.md lists them)
LAYERS = [
    ("errors",),
    ("io", "config", "tuning", "metrics"),
    ("settings", "precision"),
    ("data", "models", "hf", "hub", "report"),
    ("tokenizer", "tasks"),
    ("checkpoint",),
    ("validate", "loader"),
    ("inference", "lm", "embed"),
    ("train", "senses"),
    ("apps",),
    ("commands",),
    ("cli",),
    ("__main__",),
]
LEVEL = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def _unit(module: str) -> str:
    """``pretune.data.shards`` -> ``data``; the package itself counts as ``errors``'s layer."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "errors"


def _imports(path: Path) -> list[str]:
    """Every pretune module ``path`` imports (``from pretune import x`` counts as ``pretune.x``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "pretune"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pretune":
            found += [f"pretune.{a.name}" for a in node.names] if node.module == "pretune" else [node.module]
    return found


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        out.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return out


def test_every_unit_has_a_layer() -> None:
    units = {_unit(name) for name, _ in _modules()}
    assert units <= set(LEVEL), sorted(units - set(LEVEL))


@pytest.mark.parametrize("name,path", _modules(), ids=[name for name, _ in _modules()])
def test_imports_go_down_the_layers(name: str, path: Path) -> None:
    own = _unit(name)
    wrong = [target for target in _imports(path)
             if _unit(target) != own and LEVEL.get(_unit(target), 99) >= LEVEL[own]]
    assert not wrong, f"{name} ({own}, layer {LEVEL[own]}) imports from its own layer or above: {wrong}"
