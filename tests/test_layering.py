"""One-way dependency direction: core ← dynamics ← estimators ← train ← cli."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "eqprop"
ORDER = ["core", "dynamics", "reference", "estimators", "analysis", "train", "cli"]
# What each layer may import from eqprop (besides itself).
ALLOWED = {
    "core": set(),
    "dynamics": {"core"},
    "reference": {"core"},
    "estimators": {"core", "dynamics"},
    "analysis": {"core", "dynamics", "estimators", "reference"},
    "train": {"core", "dynamics", "estimators", "reference", "analysis"},
    "cli": {"core", "dynamics", "estimators", "reference", "analysis", "train"},
}


def layer_of(path: Path) -> str | None:
    rel = path.relative_to(PACKAGE)
    head = rel.parts[0].removesuffix(".py")
    return head if head in ALLOWED else None


def eqprop_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("eqprop."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("eqprop.")}
    return found


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_imports_follow_the_layering(path):
    layer = layer_of(path)
    if layer is None:
        return
    bad = {
        m for m in eqprop_imports(path) if m in ALLOWED and m != layer and m not in ALLOWED[layer]
    }
    assert not bad, f"{path.relative_to(PACKAGE)} ({layer}) must not import {sorted(bad)}"
