"""The package's shape (docs/architecture.md, section 6): no module past 450 lines, and imports only downward."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nexus_lab"
MAX_LINES = 450


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imported(path: Path, top_level_only: bool) -> set[str]:
    """Absolute names of the nexus_lab modules ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package[:-1]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join([*base, node.module] if node.module else base)
            out.add(name)
            out.update(f"{name}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {n for n in out if n.startswith("nexus_lab")}


def test_no_module_is_past_450_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


@pytest.mark.parametrize("lower", ["models", "profiles", "runtime"])
def test_lower_layers_never_import_upper_ones(lower):
    upper = ("nexus_lab.planner", "nexus_lab.controller", "nexus_lab.widgets", "nexus_lab.lab")
    bad = {str(p.relative_to(PACKAGE)): sorted(n for n in imported(p, False) if n.startswith(upper))
           for p in (PACKAGE / lower).rglob("*.py")}
    assert not {k: v for k, v in bad.items() if v}


def test_the_controller_imports_no_view_at_import_time():
    views = ("nexus_lab.widgets", "nexus_lab.lab")
    bad = {str(p.relative_to(PACKAGE)): sorted(n for n in imported(p, True) if n.startswith(views))
           for p in (PACKAGE / "controller").rglob("*.py")}
    assert not {k: v for k, v in bad.items() if v}


def test_the_import_check_sees_relative_imports():
    # the checks above are only as good as the resolver: a known relative import must resolve
    assert "nexus_lab.batching" in imported(PACKAGE / "runtime" / "backend" / "slots.py", True)
    assert "nexus_lab.runtime.wire" in imported(PACKAGE / "runtime" / "frontend.py", True)
