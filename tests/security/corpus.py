"""The corpus's oracle, its modes and its tally.

A case is one attack, sent as exact bytes. Its :class:`Verdict` records the four things every case is judged
on, the ones ``make security`` counts:

- **allow**: something the access rules deny was served (the app received a denied path, a check or the
  webhook answered 2xx without a valid credential, a forged sign-in got a session, a redirect left the
  allowed hosts);
- **5xx**: any answer from 500 to 599, from the gateway or from the proxy in front of it;
- **hang**: neither an answer nor a closed connection within 2 s;
- **leak**: a secret (session token, binding cookie, authorization code, PKCE verifier, client secret, a
  token the provider issued) in a response the gateway (or the proxy) wrote, or in the gateway's log.

A case may also state its own expectations (a control request must reach the app, a refusal must be a
401...): those failures are ``problems``, reported with the case but not counted in the four.

Modes: the normal run takes the ``core`` cases (the ones written out in the tables) plus a fixed sample of
the generated variants; ``GATEWAY_SECURITY_FULL=1`` runs every case.
"""

from __future__ import annotations

import os
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest

from tests.security.echo import ECHO_MARKER
from tests.security.rawhttp import Exchange, Response, exchange
from tests.security.stacks import DENIED_PREFIXES, Echo, SecurityStack

FULL = os.environ.get("GATEWAY_SECURITY_FULL") == "1"
"""Run every case (and many more property examples) instead of the sample."""

LIGHT_SAMPLE = 25
"""In the normal run, one generated (non-core) variant in this many runs, chosen by a hash of its id."""

CLASSES = {
    "1-host": "host and authority tricks through nginx, Caddy and HAProxy",
    "2-path": "path tricks through nginx, Caddy and HAProxy",
    "3-differential": "path normalisation held against real nginx (hypothesis)",
    "4-forwarded": "forwarded headers from trusted and untrusted peers",
    "5-credentials": "tokens and cookies",
    "6-redirect": "redirect targets on /login and /logout",
    "7-webhook": "Hasura webhook calls",
    "8-raw": "raw HTTP against both front-ends",
    "9-oidc": "sign-in forgery with a malicious OIDC provider",
}


# ---- cases and the sample ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One attack: a readable id, whether it is in every run, and whatever the module needs to send it."""

    id: str
    core: bool = False
    data: Any = None


def in_this_run(case: Case) -> bool:
    """Core cases always run; a generated variant in the normal run only when its id hashes into the sample."""
    return FULL or case.core or zlib.crc32(case.id.encode()) % LIGHT_SAMPLE == 0


def params(cases: Iterable[Case]) -> list[Any]:
    """``pytest.param`` for every case of this run, with the case's id; duplicate ids are a bug in a table."""
    chosen = [c for c in cases if in_this_run(c)]
    duplicates = [i for i, n in Counter(c.id for c in chosen).items() if n > 1]
    assert not duplicates, f"duplicate case ids: {sorted(duplicates)}"
    return [pytest.param(c, id=c.id) for c in chosen]


# ---- how the app routes what it received --------------------------------------------------------------------

def remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 on an absolute path (a final ``.``/``..`` leaves the directory, with its slash)."""
    out: list[str] = []
    segments = path.split("/")[1:]
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        elif segment == ".":
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


def merge_slashes(path: str) -> str:
    """``//`` runs as one ``/`` (nginx's merge_slashes, file systems, Werkzeug, Go's ServeMux)."""
    while "//" in path:
        path = path.replace("//", "/")
    return path


def _decode(path: str) -> str:
    return unquote_to_bytes(path).decode("utf-8", "replace")


def app_routes(raw_path: str) -> set[str]:
    """Every path an app could route the request path ``raw_path`` (as received, still encoded) to.

    Decoded once and completely (``%2F`` too, as Go, Werkzeug, Starlette and Express do), then slashes merged
    and dot segments removed in either order; and the same after dropping ``;parameters`` from each segment
    first (as servlet containers do). Letter case is kept: nginx matches locations case-sensitively, and so
    do the access rules and the apps the corpus models. A raw request path that does not start with ``/``
    (an absolute-form target the proxy passed on) is routed by its path part.
    """
    if not raw_path.startswith("/"):
        after_scheme = raw_path.partition("://")[2]
        raw_path = "/" + after_scheme.partition("/")[2] if after_scheme else "/" + raw_path
    candidates = {raw_path, "/".join(segment.partition(";")[0] for segment in raw_path.split("/"))}
    routes: set[str] = set()
    for candidate in candidates:
        decoded = _decode(candidate)
        routes.add(remove_dot_segments(merge_slashes(decoded)))
        routes.add(merge_slashes(remove_dot_segments(decoded)))
    return routes


def denied_route(raw_path: str) -> str | None:
    """The first route of ``raw_path`` the access rules deny (``/forbidden/**``, ``/api/forbidden/**``), or None."""
    for route in sorted(app_routes(raw_path)):
        for prefix in DENIED_PREFIXES:
            if route == prefix or route.startswith(prefix + "/"):
                return route
    return None


def served_by_app(response: Response) -> bool:
    """True when the echo app wrote this response (the proxy passed the request on)."""
    return response.header(ECHO_MARKER) == "1"


# ---- verdicts --------------------------------------------------------------------------------------------

@dataclass
class Verdict:
    """What one case did, judged."""

    case_id: str
    klass: str
    observed: str = ""
    allows: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)
    hang: bool = False
    leaks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No allow, 5xx, hang, leak or problem."""
        return not (self.allows or self.server_errors or self.hang or self.leaks or self.problems)

    def explain(self) -> str:
        """A report of a failed case: what was observed and what went wrong."""
        lines = [f"{self.klass} {self.case_id}: {self.observed}"]
        lines += [f"  ALLOW: {a}" for a in self.allows]
        lines += [f"  5xx: {e}" for e in self.server_errors]
        lines += ["  HANG: no answer and no close within 2 s"] if self.hang else []
        lines += [f"  LEAK: {leak}" for leak in self.leaks]
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)

    def judge_exchange(self, exchange: Exchange, secrets: Sequence[str] = ()) -> None:
        """5xx, hang and leaks in the answers (the app's own answers echo the request, so they are skipped)."""
        self.hang = self.hang or exchange.hang
        for response in exchange.responses:
            if 500 <= response.status <= 599:
                self.server_errors.append(f"{response.status} {response.text[:120]!r}")
            if not served_by_app(response):
                self.leaks += leaks_in_response(response, secrets)

    def judge_app(self, received: Sequence[dict[str, Any]]) -> None:
        """An allow for every request the app received whose path routes under a denied prefix."""
        for record in received:
            route = denied_route(str(record.get("raw_path", record.get("path", ""))))
            if route is not None:
                self.allows.append(f"the app was served {record['method']} {record['raw_path']!r} (routes as "
                                   f"{route!r})")


def leaks_in_response(response: Response, secrets: Sequence[str]) -> list[str]:
    """Secrets in a response's body or headers (Set-Cookie excepted: setting the session cookie is its job)."""
    found = []
    headers = "\n".join(f"{k}: {v}" for k, v in response.headers if k.lower() != "set-cookie")
    for secret in secrets:
        if secret and (secret.encode() in response.body or secret in headers):
            found.append(f"{_label(secret)} in a {response.status} response")
    return found


def _label(secret: str) -> str:
    return f"secret {secret[:8]}…"


class LogWatch:
    """Reads what the gateways logged while one case ran."""

    def __init__(self, logs: Sequence[Path]) -> None:
        self._offsets = {log: _size(log) for log in logs}

    def new_text(self) -> str:
        """Everything logged since the watch started."""
        parts = []
        for log, offset in self._offsets.items():
            try:
                with log.open("rb") as fh:
                    fh.seek(offset)
                    parts.append(fh.read().decode("utf-8", "replace"))
            except FileNotFoundError:  # not written yet
                continue
        return "\n".join(parts)

    def leaks(self, secrets: Sequence[str]) -> list[str]:
        """Secrets in the new log lines."""
        text = self.new_text()
        return [f"{_label(s)} in the gateway log" for s in secrets if s and s in text]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# ---- the tally -------------------------------------------------------------------------------------------

@dataclass
class Tally:
    """Every verdict of the session, for the summary line and ``make security``'s exit code."""

    verdicts: list[Verdict] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)
    """Every secret any case used, for the sweep of the whole gateway logs at the end."""
    logs: set[Path] = field(default_factory=set)
    swept_leaks: list[str] = field(default_factory=list)

    def record(self, verdict: Verdict) -> None:
        """Count one case."""
        self.verdicts.append(verdict)

    def conclude(self, verdict: Verdict) -> None:
        """Count one case, then fail it when it is not clean."""
        self.record(verdict)
        assert verdict.ok, verdict.explain()

    def counts(self) -> tuple[int, int, int, int, int]:
        """(cases, allows, 5xx, hangs, leaks), each counting cases, plus the end-of-run log sweep as leaks."""
        v = self.verdicts
        return (len(v), sum(bool(x.allows) for x in v), sum(bool(x.server_errors) for x in v),
                sum(x.hang for x in v), sum(bool(x.leaks) for x in v) + len(self.swept_leaks))

    def summary(self) -> str:
        """``N cases, A allows, F 5xx, H hangs, L leaks``."""
        n, a, f, h, leaks = self.counts()
        return f"{n} cases, {a} allows, {f} 5xx, {h} hangs, {leaks} leaks"

    def per_class(self) -> dict[str, int]:
        """Cases run per class."""
        out: dict[str, int] = {}
        for verdict in self.verdicts:
            out[verdict.klass] = out.get(verdict.klass, 0) + 1
        return out

    def sweep_logs(self) -> None:
        """Look for every secret in every gateway log, whole (lines written after a case ended count too)."""
        for log in sorted(self.logs):
            try:
                text = log.read_text(errors="replace")
            except OSError:
                continue
            for secret in sorted(self.secrets):
                if secret and secret in text:
                    self.swept_leaks.append(f"{_label(secret)} in {log}")


# ---- one request case against the stack ------------------------------------------------------------------

def attempt(stack: SecurityStack, klass: str, case_id: str, port: int, data: bytes | Sequence[bytes], *,
            secrets: Sequence[str] = (), expect: int = 1, head_only: bool = False,
            source: str | None = None) -> tuple[Verdict, Exchange, list[dict[str, Any]]]:
    """Send one case's bytes to ``port`` and judge them: 5xx, hang, leaks (answers and gateway logs) and
    what the app received. Returns the verdict (to add the case's own expectations to), the exchange and
    the app's records for this case."""
    proxies = (stack.nginx.port, stack.caddy.port if stack.caddy else -1)
    return probe(stack.logs(), stack.echo, klass, case_id, port, data, secrets=secrets, expect=expect,
                 head_only=head_only, source=source, app_behind=port in proxies)


def probe(logs: Sequence[Path], echo: Echo | None, klass: str, case_id: str, port: int,
          data: bytes | Sequence[bytes], *, secrets: Sequence[str] = (), expect: int = 1, head_only: bool = False,
          source: str | None = None, app_behind: bool = False) -> tuple[Verdict, Exchange, list[dict[str, Any]]]:
    """:func:`attempt` for any gateway: ``logs`` are read for leaks, ``echo`` (if any) for what the app got."""
    watch = LogWatch(logs)
    mark = echo.count() if echo is not None else 0
    sent = exchange(port, data, expect=expect, head_only=head_only, source=source)
    received = echo.since(mark) if echo is not None else []
    verdict = Verdict(case_id, klass)
    verdict.observed = sent.short()
    if app_behind or received:
        served = ", ".join(f"{r['method']} {r['raw_path']}" for r in received) or "nothing"
        verdict.observed += f"; the app received: {served}"
    verdict.judge_exchange(sent, secrets)
    verdict.judge_app(received)
    verdict.leaks += watch.leaks(secrets)
    return verdict, sent, received
