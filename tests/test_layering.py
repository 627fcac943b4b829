"""Dependencies point one way: gateway -> upstreams -> nothing of ours; upstreams never uses aiohttp.web.

Inside :mod:`upstreams.oidc` too: provider -> verify -> keys -> config, never back.
"""

from __future__ import annotations

import ast
from pathlib import Path

UPSTREAMS = Path(__file__).resolve().parent.parent / "upstreams"
OIDC_LAYERS = ("config", "keys", "verify", "provider")
"""The modules of upstreams/oidc/, lowest first: each may import only those before it."""


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
    files = sorted(UPSTREAMS.rglob("*.py"))
    assert UPSTREAMS / "oidc" / "provider.py" in files
    for path in files:
        for name in imported_modules(path):
            assert not (name == "gateway" or name.startswith("gateway.")), f"{path.name} imports {name}"
            assert not name.startswith("aiohttp.web"), f"{path.name} imports {name}"


def test_oidc_modules_import_in_one_direction() -> None:
    package = UPSTREAMS / "oidc"
    assert sorted(p.stem for p in package.glob("*.py") if p.stem != "__init__") == sorted(OIDC_LAYERS)
    for rank, layer in enumerate(OIDC_LAYERS):
        allowed = {f"upstreams.oidc.{lower}" for lower in OIDC_LAYERS[:rank]}
        for name in imported_modules(package / f"{layer}.py"):
            if name == "upstreams.oidc" or name.startswith("upstreams.oidc."):
                module = ".".join(name.split(".")[:3])
                assert module in allowed, f"oidc/{layer}.py imports {name}: only {sorted(allowed)} may be"
        tree = ast.parse((package / f"{layer}.py").read_text())
        assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree)), \
            f"oidc/{layer}.py uses a relative import (spell it upstreams.oidc.<module>)"



GATEWAY = UPSTREAMS.parent / "gateway"
SERVING = GATEWAY / "serving"


def test_only_the_entry_point_imports_the_serving_machinery() -> None:
    """Serving (process start, supervisor, fast lane, worker metrics, GC policy) sits below nothing but the CLI."""
    outside = [p for p in GATEWAY.rglob("*.py") if SERVING not in p.parents and p.name != "cli.py"]
    assert outside
    for path in outside:
        for name in imported_modules(path):
            assert not name.startswith("gateway.serving"), f"{path.relative_to(GATEWAY)} imports {name}"


def test_the_serving_machinery_serves_endpoints_defined_beneath_it() -> None:
    """The fast lane answers with the hot endpoints from gateway.handlers, never with anything from gateway.app;
    only the process start (server.py) builds the application."""
    for path in sorted(SERVING.glob("*.py")):
        if path.name == "server.py":
            continue
        for name in imported_modules(path):
            assert not (name == "gateway.app" or name.startswith("gateway.app.")), f"serving/{path.name} imports {name}"
