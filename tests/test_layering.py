"""Dependencies point one way: gateway -> upstreams -> nothing of ours; upstreams never uses aiohttp.web."""

from __future__ import annotations

import ast
from pathlib import Path

UPSTREAMS = Path(__file__).resolve().parent.parent / "upstreams"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_upstreams_import_neither_gateway_nor_aiohttp_web() -> None:
    files = sorted(UPSTREAMS.glob("*.py"))
    assert files
    for path in files:
        for name in imported_modules(path):
            assert not (name == "gateway" or name.startswith("gateway.")), f"{path.name} imports {name}"
            assert not name.startswith("aiohttp.web"), f"{path.name} imports {name}"
