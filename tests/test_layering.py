"""Dependencies point one way: gateway -> upstreams -> nothing of ours; upstreams never uses aiohttp.web.

Inside :mod:`upstreams.oidc` too: provider -> tokens -> verify -> keys -> config, never back.
"""

from __future__ import annotations

import ast
from pathlib import Path

UPSTREAMS = Path(__file__).resolve().parent.parent / "upstreams"
OIDC_LAYERS = ("config", "keys", "verify", "tokens", "provider")
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


def module_name(path: Path) -> str:
    parts = path.relative_to(GATEWAY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def gateway_imports(path: Path) -> set[str]:
    """The gateway modules ``path`` imports (``from gateway import tokens`` counts as gateway.tokens)."""
    names = {n for n in imported_modules(path) if n == "gateway" or n.startswith("gateway.")}
    return {n for n in names if (GATEWAY.parent / (n.replace(".", "/") + ".py")).exists()
            or (GATEWAY.parent / n.replace(".", "/") / "__init__.py").exists()} - {"gateway"}


STORE_MAY_IMPORT = ("gateway.models", "gateway.errors", "gateway.redaction", "gateway.settings")
"""The floor beneath the store: records, errors, the scrubber and the settings types."""

CHECK_CORE = ("core", "lastseen", "cache", "access", "facts", "credentials")
"""The check core's modules: they decide, and know nothing of who asks (handlers, sign-in, the app)."""


def test_the_store_imports_only_the_floor_beneath_it() -> None:
    for path in sorted((GATEWAY / "store").glob("*.py")):
        for name in gateway_imports(path):
            if name.startswith("gateway.store"):
                continue
            assert name.startswith(STORE_MAY_IMPORT), f"store/{path.name} imports {name}"


def test_the_check_core_knows_nothing_above_it() -> None:
    """The core is asked by the endpoints, never the other way; of the store it knows only the roles."""
    above = ("gateway.handlers", "gateway.app", "gateway.login", "gateway.sessions", "gateway.serving",
             "gateway.cli", "gateway.admin", "gateway.hasura")
    for stem in CHECK_CORE:
        for name in gateway_imports(GATEWAY / f"{stem}.py"):
            assert not name.startswith(above), f"{stem}.py imports {name}"
            assert not name.startswith("gateway.store") or name == "gateway.store.base", \
                f"{stem}.py imports {name}: the core depends on the store's role protocols only"


def test_handlers_sit_beneath_the_app() -> None:
    for path in sorted((GATEWAY / "handlers").glob("*.py")):
        for name in gateway_imports(path):
            assert not name.startswith(("gateway.app", "gateway.cli")), f"handlers/{path.name} imports {name}"


def test_nothing_imports_the_command_line() -> None:
    for path in sorted(GATEWAY.rglob("*.py")):
        if path.name in {"cli.py", "__main__.py"}:
            continue
        for name in gateway_imports(path):
            assert name != "gateway.cli", f"{module_name(path)} imports the entry point"


LONG_MODULE = 500
"""Lines a module of gateway/ may have, unless its docstring says why one job needs more."""


def test_modules_stay_small_or_say_why() -> None:
    for path in sorted(GATEWAY.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") <= LONG_MODULE:
            continue
        docstring = ast.get_docstring(ast.parse(text)) or ""
        assert "one job" in docstring, (f"{module_name(path)} has {text.count(chr(10))} lines: split it, or say in "
                                        f"its docstring why its one job needs them")
