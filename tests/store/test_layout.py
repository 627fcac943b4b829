"""How gateway/store is laid out: the package only names things, and no module grows past 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import gateway.store

STORE = Path(gateway.store.__file__).resolve().parent
MAX_LINES = 500


def test_the_package_only_exports() -> None:
    """``gateway/store/__init__.py`` names what the store offers; the code lives in the modules beside it."""
    tree = ast.parse((STORE / "__init__.py").read_text())
    allowed = (ast.ImportFrom, ast.Assign, ast.Expr)
    assert all(isinstance(node, allowed) for node in tree.body), [type(n).__name__ for n in tree.body]
    assert all(name in vars(gateway.store) for name in gateway.store.__all__)


def test_no_store_module_is_over_500_lines() -> None:
    sizes = {path.name: len(path.read_text().splitlines()) for path in STORE.glob("*.py")}
    assert "postgres.py" in sizes and "sqlite.py" in sizes
    assert {name: size for name, size in sizes.items() if size > MAX_LINES} == {}
