"""Fixtures of the security corpus: the processes (started once per session), the tally and its summary line.

The summary line ``N cases, A allows, F 5xx, H hangs, L leaks`` is printed at the end of every run that
collected corpus cases; when any of A, F, H, L is non-zero the run fails even if no case did (the end-of-run
sweep of the gateway logs can find a leak no single case saw). With ``GATEWAY_SECURITY_REPORT=<file>`` every
verdict (case id, class, what was observed, what failed) is written there as JSON lines.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator

import pytest

from tests.security.corpus import CLASSES, FULL, Tally
from tests.security.stacks import OidcStack, SecurityStack, start_oidc_stack, start_security_stack

TALLY = pytest.StashKey[Tally]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[TALLY] = Tally()


@pytest.fixture(scope="session")
def tally(request: pytest.FixtureRequest) -> Tally:
    """The session's verdicts."""
    return request.config.stash[TALLY]


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory, tally: Tally) -> Iterator[SecurityStack]:
    """Echo app, both gateways, nginx, Caddy and HAProxy, with the corpus's tokens: started once, stopped after the
    corpus's last test (the processes are shared by every module of the package)."""
    with start_security_stack(tmp_path_factory.mktemp("security")) as running:
        tally.logs.update(running.logs())
        tally.secrets.update(running.tokens.all())
        yield running


@pytest.fixture(scope="package")
def oidc_stack(tmp_path_factory: pytest.TempPathFactory, tally: Tally) -> Iterator[OidcStack]:
    """The malicious OIDC provider and a gateway signing in with it: started once for the package."""
    with start_oidc_stack(tmp_path_factory.mktemp("security-oidc")) as running:
        tally.logs.add(running.gateway.log)
        tally.secrets.add(running.client_secret)
        yield running


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    tally = session.config.stash.get(TALLY, None)
    if tally is None or not tally.verdicts:
        return
    tally.sweep_logs()
    report = os.environ.get("GATEWAY_SECURITY_REPORT")
    if report:
        with open(report, "w") as out:
            for verdict in tally.verdicts:
                out.write(json.dumps(dataclasses.asdict(verdict) | {"ok": verdict.ok}) + "\n")
    _, allows, errors, hangs, leaks = tally.counts()
    if (allows or errors or hangs or leaks) and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    tally = config.stash.get(TALLY, None)
    if tally is None or not tally.verdicts:
        return
    terminalreporter.section("security corpus")
    mode = "full" if FULL else "sample (GATEWAY_SECURITY_FULL=1 runs every case)"
    terminalreporter.write_line(f"mode: {mode}")
    for klass, count in sorted(tally.per_class().items()):
        terminalreporter.write_line(f"  {klass:<16} {count:>5}  {CLASSES.get(klass, '')}")
    for leak in tally.swept_leaks:
        terminalreporter.write_line(f"LEAK (log sweep): {leak}")
    failed = [v for v in tally.verdicts if not v.ok]
    if failed:
        terminalreporter.write_line(f"failing cases ({len(failed)}):")
        for verdict in failed:
            terminalreporter.write_line(verdict.explain())
    terminalreporter.write_line(tally.summary())
