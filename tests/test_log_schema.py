"""docs/logging.md lists every event the code logs, at its levels and with exactly its fields, and every field
a JSON log line can carry; the code is read with ``ast``, the common fields come from a real JSON line."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "logging.md"
PACKAGES = ("gateway", "upstreams")
LEVELS = {"debug": "debug", "info": "info", "warning": "warning", "warn": "warning", "error": "error",
          "exception": "error", "critical": "critical", "fatal": "critical", "msg": "info"}
FACTORIES = {"structlog.get_logger": "structlog", "logging.getLogger": "stdlib"}


@dataclass
class Event:
    levels: set[str] = field(default_factory=set)
    fields: set[str] = field(default_factory=set)
    where: list[str] = field(default_factory=list)


def _sources() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def _log_calls(path: Path) -> Iterator[tuple[ast.Call, str, str]]:
    """Every call of a logging method on a logger the module made, with the logger's kind and the method."""
    tree = ast.parse(path.read_text(), str(path))
    loggers: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            kind = FACTORIES.get(ast.unparse(node.value.func))
            if kind:
                loggers.update((ast.unparse(target), kind) for target in node.targets)
    # ``event = log.error if failed else log.info`` then ``event("...", ...)``: a call at either level
    aliases: dict[str, list[tuple[str, str]]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.IfExp):
            chosen = [(ast.unparse(branch.value), branch.attr) for branch in (node.value.body, node.value.orelse)
                      if isinstance(branch, ast.Attribute) and branch.attr in LEVELS]
            if len(chosen) == 2 and all(receiver in loggers for receiver, _ in chosen):
                aliases.update((ast.unparse(target), [(loggers[r], m) for r, m in chosen]) for target in node.targets)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in aliases:
            for kind, method in aliases[node.func.id]:
                yield node, kind, method
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LEVELS:
            receiver = ast.unparse(node.func.value)
            if receiver in loggers:
                yield node, loggers[receiver], node.func.attr
            else:  # a log call through a logger this test does not know would slip past the doc
                assert receiver not in ("structlog", "logging") and not receiver.startswith("structlog."), \
                    f"{path.relative_to(ROOT)}:{node.lineno}: log through a module-level logger"


def logged_events() -> dict[str, Event]:
    """Every event sentence the code logs, with its levels and fields."""
    events: dict[str, Event] = {}
    for path in _sources():
        for call, kind, method in _log_calls(path):
            where = f"{path.relative_to(ROOT)}:{call.lineno}"
            assert call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str), \
                f"{where}: the event must be a fixed sentence (a string literal)"
            names = {"exception" if k.arg == "exc_info" else k.arg for k in call.keywords}
            assert None not in names, f"{where}: **kwargs hide the fields from docs/logging.md"
            if method == "exception":
                names.add("exception")
            if kind == "stdlib":
                assert names <= {"exception"}, f"{where}: stdlib loggers render no fields but the traceback"
            event = events.setdefault(call.args[0].value, Event())
            event.levels.add(LEVELS[method])
            event.fields |= {name for name in names if name is not None}
            event.where.append(where)
    return events


def bound_fields() -> set[str]:
    """Fields bound to every later line of a request (``bind_contextvars``)."""
    names: set[str] = set()
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith(("bind_contextvars", ".bind")):
                names |= {k.arg for k in node.keywords if k.arg}
    return names


def _section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def _rows(section: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| `")]


def documented_fields() -> dict[str, set[str]]:
    """Field names per table of docs/logging.md (``pid``, ``pids`` both from a row listing two)."""
    return {title: {name for row in _rows(_section(title)) for name in re.findall(r"`([^`]+)`", row[0])}
            for title in ("Fields on every line", "Fields on some lines", "Fields of particular events")}


def documented_events() -> dict[str, Event]:
    events: dict[str, Event] = {}
    for event, levels, names, _when in _rows(_section("Events")):
        match = re.fullmatch(r"`([^`]+)`", event)
        assert match, event
        assert match.group(1) not in events, f"{match.group(1)} documented twice"
        events[match.group(1)] = Event({level.strip() for level in levels.split(",")},
                                       set(re.findall(r"`([^`]+)`", names)))
    return events


def test_the_scan_finds_the_log_calls() -> None:
    """A guard for the scan itself: the gateway logs dozens of events through both kinds of logger."""
    events = logged_events()
    assert len(events) > 50
    assert events["login succeeded"].fields == {"upstream", "user_id", "client", "mfa", "known_device"}
    assert events["revocation handler failed"].fields == {"exception"}
    assert "request_id" in bound_fields()


def test_every_logged_event_is_documented_with_its_levels_and_fields() -> None:
    logged, documented = logged_events(), documented_events()
    missing = sorted(set(logged) - set(documented))
    assert not missing, "events logged but not in docs/logging.md:\n" + "\n".join(
        f"{e} ({', '.join(logged[e].where)})" for e in missing)
    stale = sorted(set(documented) - set(logged))
    assert not stale, f"events in docs/logging.md the code no longer logs: {stale}"
    for name, event in logged.items():
        assert documented[name].levels == event.levels, f"{name}: levels {event.levels} ({event.where})"
        assert documented[name].fields == event.fields, f"{name}: fields {event.fields} ({event.where})"


def test_every_field_is_explained() -> None:
    tables = documented_fields()
    explained = set().union(*tables.values())
    used = {name for event in logged_events().values() for name in event.fields} | bound_fields()
    assert used <= explained, f"fields without an explanation in docs/logging.md: {used - explained}"
    in_events = {name for event in documented_events().values() for name in event.fields}
    particular = tables["Fields of particular events"]
    assert particular <= in_events, f"explained but never logged: {particular - in_events}"


_EMIT = """
import logging, sys, structlog
from gateway.logging import configure_logging
configure_logging("json", "debug")
structlog.contextvars.bind_contextvars(request_id="r-1")
structlog.get_logger("gateway.test").info("structlog line", client="127.0.0.1")
try:
    raise RuntimeError("boom")
except RuntimeError:
    structlog.get_logger("gateway.test").exception("structlog error")
    logging.getLogger("gateway.store.sqlite").exception("stdlib error %s", "x")
logging.getLogger("aiohttp.access").info("library line")
"""


def test_a_real_json_line_carries_only_documented_common_fields() -> None:
    """The processors configured by gateway.logging add nothing the doc does not list."""
    result = subprocess.run([sys.executable, "-c", _EMIT], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=True)
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert [line["event"] for line in lines] == ["structlog line", "structlog error", "stdlib error x",
                                                 "library line"]
    tables = documented_fields()
    for line in lines:
        common = set(line) - {"client"}
        assert tables["Fields on every line"] <= common, line
        assert common <= tables["Fields on every line"] | tables["Fields on some lines"], line
    # a standard-library logger's traceback is rendered as text, like structlog's own
    stdlib_traceback = lines[2]["exception"]
    assert "Traceback (most recent call last)" in stdlib_traceback and "RuntimeError: boom" in stdlib_traceback
