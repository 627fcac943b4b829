"""The fault report's collector: the ``figures`` fixture, a summary block at the end of every run that
recorded figures, and with ``GATEWAY_FAULTS_REPORT=<file>`` the Markdown report written there
(``make faults`` writes docs/reliability.md). A run in which any recorded goal was missed fails, even when
no test did.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import time
from pathlib import Path

import pytest

from tests.deploy.stack import REPO, find_nginx
from tests.faults.pgstack import FULL, LOOPS
from tests.faults.report import Figures, render_markdown
from tests.helpers import find_postgres_bindir


class _Run:
    """The session's figures, and what became of its tests."""

    def __init__(self) -> None:
        self.figures = Figures()
        self.started = time.time()
        self.outcomes: dict[str, int] = {}
        self.failed: list[str] = []

    def count_outcomes(self, config: pytest.Config) -> None:
        """Read what became of each test off the terminal reporter's tally."""
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        stats: dict[str, list[object]] = getattr(reporter, "stats", {})
        self.outcomes = {outcome: len(reports) for outcome, reports in stats.items()
                         if outcome in {"passed", "failed", "skipped", "error", "xfailed", "xpassed"} and reports}
        self.failed = [str(getattr(r, "nodeid", r)) for outcome in ("failed", "error") for r in stats.get(outcome, [])]


RUN = pytest.StashKey[_Run]()

GOALS = (
    "0 revocations lost in 10,000 at random paces with listeners killed at random",
    "0 5xx for cached sessions through any database fault",
    "uncached tokens: always 503 on /auth/check and 401 on /auth/webhook while the database is away; "
    "never 200 for a revoked token",
    "feed and lookups back within 2 s of the database, without a restart",
    "0 failed requests through rolling restarts behind nginx",
    "exit 0 on SIGTERM",
)
"""The reliability goals every figure is held against (the reliability issue's list)."""

MODE = ("full (`GATEWAY_FAULTS_FULL=1`: 5,000 revocations per event loop, 10 s database outages, 6 s stalls)"
        if FULL else
        "CI (lighter: 500 revocations per event loop, 1 s database outages, 2.5 s stalls; "
        "`make faults` runs the full one)")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[RUN] = _Run()


@pytest.fixture(scope="session")
def figures(request: pytest.FixtureRequest) -> Figures:
    """The session's figures: ``figures.record(scenario, figure, value, goal=..., ok=..., unit=...)``."""
    return request.config.stash[RUN].figures


def _output(command: list[str]) -> str:
    """What ``command`` prints (stdout, else stderr), stripped; "" when it cannot run."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False, cwd=REPO)
    except (OSError, subprocess.SubprocessError):
        return ""
    return (done.stdout or done.stderr).strip()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def run_facts(run: _Run) -> list[tuple[str, str]]:
    """When and on what the figures were measured, for the report's header."""
    commit = _output(["git", "rev-parse", "--short", "HEAD"]) or "unknown"
    changed = _output(["git", "status", "--porcelain", "--", "gateway", "upstreams", "tests/faults"])
    if changed:
        commit += f" (with {len(changed.splitlines())} uncommitted changes in gateway/, upstreams/ or tests/faults/)"
    bindir = find_postgres_bindir()
    nginx = find_nginx()
    took = time.time() - run.started
    outcomes = ", ".join(f"{n} {outcome}" for outcome, n in sorted(run.outcomes.items())) or "none"
    started = datetime.datetime.fromtimestamp(run.started, datetime.UTC)
    return [
        ("Run", f"{started:%Y-%m-%d %H:%M} UTC, {took / 60:.1f} minutes; tests: {outcomes}"),
        ("Mode", MODE),
        ("Commit", commit),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}; aiohttp {_version('aiohttp')}"),
        ("Event loops", f"{' and '.join(LOOPS)} (uvloop {_version('uvloop')}); every gateway test runs under each"),
        ("PostgreSQL", _output([str(bindir / "postgres"), "--version"]) if bindir else "not found"),
        ("nginx", _output([nginx, "-v"]).removeprefix("nginx version: ") if nginx else "not found"),
        ("Machine", f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores"),
    ]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    run = session.config.stash.get(RUN, None)
    if run is None or not run.figures.recorded:
        return
    run.count_outcomes(session.config)
    report = os.environ.get("GATEWAY_FAULTS_REPORT")
    if report:
        path = Path(report)
        path.parent.mkdir(parents=True, exist_ok=True)
        note = "" if FULL else ("These are the CI-mode figures (a lighter run than `make faults`: "
                                "fewer revocations, shorter outages).")
        path.write_text(render_markdown(run.figures, run_facts(run), GOALS, run.failed, note))
    if run.figures.missed() and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    run = config.stash.get(RUN, None)
    if run is None or not run.figures.recorded:
        return
    terminalreporter.section("fault figures")
    terminalreporter.write_line(f"mode: {MODE}")
    for scenario, rows in run.figures.scenarios().items():
        goals = [f for f in rows if f.ok is not None]
        met = sum(1 for f in goals if f.ok)
        terminalreporter.write_line(f"  {met:>3}/{len(goals):<3} goals met  {scenario}")
    for figure in run.figures.missed():
        terminalreporter.write_line(f"MISSED: {figure.scenario}: {figure.figure}: {figure.measured()}"
                                    f" (goal {figure.goal})")
    report = os.environ.get("GATEWAY_FAULTS_REPORT")
    if report:
        terminalreporter.write_line(f"report written to {report}")
    terminalreporter.write_line(run.figures.summary())
