"""How a command-line command talks to the operator: exit codes, the Console, and output formatting.

Results go to stdout, messages to stderr. Everything shown that came from an upstream or the database is
escaped (:func:`printable`), token hashes are shortened, and no token is ever printed here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from gateway import admin
from gateway.models import AuditEvent, SessionRecord, User
from gateway.store.base import Block

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_FULL_HASH_RE = re.compile(r"\b[0-9a-f]{64}\b")
_UNPRINTABLE_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class Console:
    """Where a command writes results (``out``), messages (``err``) and reads piped input (``inp``).

    A message is always exactly one line, control characters escaped: a problem quoting a key or value
    from the config file (a newline, an escape sequence) can neither split it in two for a script reading
    stderr line by line nor drive the terminal.
    """

    out: TextIO
    err: TextIO
    inp: TextIO

    def say(self, line: str = "") -> None:
        """Write one result line to stdout."""
        print(line, file=self.out)

    def note(self, line: str) -> None:
        """Write one informational line to stderr (control characters escaped)."""
        print(printable(line), file=self.err)

    def error(self, message: str) -> None:
        """Write one ``error:`` line to stderr (control characters escaped)."""
        print(f"error: {printable(message)}", file=self.err)


def printable(text: str) -> str:
    """``text`` with control characters escaped, so names from upstreams cannot drive the terminal."""
    return _UNPRINTABLE_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def show_time(ts: float | None) -> str:
    """``ts`` as an ISO time, or ``-`` when there is none."""
    return "-" if ts is None else admin.iso_time(ts)


def json_time(ts: float | None) -> str | None:
    """``ts`` as an ISO time for JSON output, or None."""
    return None if ts is None else admin.iso_time(ts)


def mask_hashes(text: str) -> str:
    """``text`` with every full token hash shortened to its prefix."""
    return _FULL_HASH_RE.sub(lambda m: admin.short_hash(m.group()), text)


def detail_text(detail: Mapping[str, str]) -> str:
    """An audit row's detail as ``key=value`` pairs, hashes shortened."""
    return " ".join(f"{key}={mask_hashes(value)}" for key, value in sorted(detail.items()))


def print_table(console: Console, headers: Sequence[str], rows: Sequence[Sequence[str]],
                empty: str = "") -> None:
    """Print ``rows`` under ``headers`` in aligned columns, cells escaped; ``empty`` when there are none."""
    if not rows and empty:
        console.say(empty)
        return
    cells = [list(headers), *([printable(cell) or "-" for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        console.say("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def print_sessions(console: Console, sessions: Sequence[SessionRecord], now: float) -> None:
    """Print ``sessions`` as a table, states as of ``now``."""
    rows = [[admin.short_hash(s.token_hash), s.kind, admin.session_state(s, now), show_time(s.created_at),
             show_time(s.expires_at), show_time(s.last_seen_at), s.client_addr, s.user_agent] for s in sessions]
    print_table(console, ["SESSION", "KIND", "STATE", "CREATED", "EXPIRES", "LAST SEEN", "CLIENT",
                          "USER AGENT"], rows)


def print_json(console: Console, value: object) -> None:
    """Print ``value`` as indented JSON."""
    console.say(json.dumps(value, indent=2, ensure_ascii=False))


def user_json(user: User) -> dict[str, Any]:
    """A user as JSON output shows it."""
    return {"id": user.id, "email": user.email, "name": user.name, "username": user.username,
            "upstream": user.upstream, "subject": user.subject, "roles": list(user.roles),
            "groups": list(user.groups), "created_at": json_time(user.created_at),
            "updated_at": json_time(user.updated_at), "last_login_at": json_time(user.last_login_at)}


def session_json(session: SessionRecord, now: float) -> dict[str, Any]:
    """A session as JSON output shows it (its hash shortened), state as of ``now``."""
    return {"session": admin.short_hash(session.token_hash), "kind": session.kind,
            "state": admin.session_state(session, now), "created_at": json_time(session.created_at),
            "expires_at": json_time(session.expires_at),
            "idle_expires_at": json_time(session.idle_expires_at),
            "last_seen_at": json_time(session.last_seen_at), "revoked_at": json_time(session.revoked_at),
            "client_addr": session.client_addr, "user_agent": session.user_agent}


def block_json(block: Block) -> dict[str, Any]:
    """A block as JSON output shows it."""
    key = block.key
    return {"kind": "email" if key.is_email else "identity", "upstream": key.upstream, "subject": key.subject,
            "email": key.email, "blocked_at": json_time(block.created_at), "actor": block.actor,
            "reason": block.reason}


def audit_json(event: AuditEvent) -> dict[str, Any]:
    """An audit row as JSON output shows it, hashes shortened."""
    return {"id": event.id, "at": json_time(event.at), "event": event.event, "actor": event.actor,
            "user_key": event.user_key,
            "detail": {key: mask_hashes(value) for key, value in sorted(event.detail.items())}}
