"""Workers that die are restarted after a back-off that grows while they crash-loop and starts over once one
has run healthy; SIGTERM stops the supervisor with exit 0 even while a restart is pending."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from gateway.serving.supervisor import RestartBackoff
from tests.deploy.stack import gateway_env, gateway_toml, http, running, wait_until
from tests.faults.report import Figures
from tests.helpers import free_port

SCENARIO = "Workers that die, under the supervisor"

_SUPERVISE = """\
import sys
from gateway.logging import configure_logging
from gateway.serving.supervisor import RestartBackoff, supervise
from gateway.settings import load_or_raise

settings = load_or_raise()
configure_logging(settings.log_format, settings.log_level)
first, most, healthy_after = map(float, sys.argv[1:])
sys.exit(supervise(settings, lambda: RestartBackoff(first, most, healthy_after)))
"""


def test_the_backoff_doubles_while_a_worker_crash_loops_and_starts_over_after_a_healthy_run() -> None:
    backoff = RestartBackoff(first=0.5, most=10.0, healthy_after=30.0)
    assert [backoff.after_exit(ran_for=1.0) for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.after_exit(ran_for=30.0) == 0.5  # it had been serving: this crash is news
    assert backoff.after_exit(ran_for=1.0) == 1.0


class Supervisor:
    """A ``supervise`` process with one worker, and what it logged."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, port: int) -> None:
        self.proc, self.log, self.port = proc, log, port

    def events(self, event: str) -> list[dict[str, object]]:
        lines = [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("event") == event]

    def wait_for(self, event: str, count: int, timeout: float = 30.0) -> dict[str, object]:
        """The ``count``-th ``event`` logged (1-based), once it is."""
        wait_until(lambda: len(self.events(event)) >= count, f"{event!r} #{count}", timeout=timeout,
                   proc=self.proc, log=self.log)
        return self.events(event)[count - 1]

    def ready(self) -> bool:
        try:
            return http("GET", f"http://127.0.0.1:{self.port}/readyz", timeout=1).status == 200
        except OSError:
            return False


@contextlib.contextmanager
def supervisor(tmp_path: Path, first: float, most: float, healthy_after: float) -> Iterator[Supervisor]:
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(gateway_toml(port=port, public_url="http://127.0.0.1", database=tmp_path / "gateway.db",
                                   redirect_hosts=["127.0.0.1"]))
    env = {**gateway_env(config), "GATEWAY_WORKERS": "1"}
    log = tmp_path / "supervisor.log"
    command = [sys.executable, "-c", _SUPERVISE, str(first), str(most), str(healthy_after)]
    with running(command, log, env=env) as proc:
        running_supervisor = Supervisor(proc, log, port)
        wait_until(running_supervisor.ready, "worker", proc=proc, log=log)
        yield running_supervisor


def kill(pid: object) -> None:
    assert isinstance(pid, int)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_a_crash_looping_worker_backs_off_and_one_that_ran_healthy_restarts_at_once(tmp_path: Path,
                                                                                    figures: Figures) -> None:
    with supervisor(tmp_path, first=0.2, most=0.8, healthy_after=3.0) as running_supervisor:
        pid = running_supervisor.events("started workers")[0]["pids"]
        assert isinstance(pid, list)
        kill(pid[0])
        for restart in range(1, 5):  # each new worker dies while it is still starting up: a crash loop
            kill(running_supervisor.wait_for("worker restarted", restart)["pid"])
        healthy = running_supervisor.wait_for("worker restarted", 5)
        wait_until(running_supervisor.ready, "restarted worker")
        time.sleep(3.2)  # it has now run longer than healthy_after
        kill(healthy["pid"])
        running_supervisor.wait_for("worker restarted", 6)
        wait_until(running_supervisor.ready, "worker restarted after a healthy run")
        running_supervisor.proc.send_signal(signal.SIGTERM)
        code = running_supervisor.proc.wait(30)
        figures.record(SCENARIO, "crash loop, then a healthy run: supervisor exit code at SIGTERM", code, goal="0",
                       ok=code == 0)
        assert running_supervisor.proc.wait(30) == 0, running_supervisor.log.read_text()

    exits = running_supervisor.events("worker exited; restarting")
    backoffs = [e["backoff"] for e in exits]
    expected = [0.2, 0.4, 0.8, 0.8, 0.8, 0.2]
    figures.record(SCENARIO, "crash loop, then a healthy run: back-off before each of 6 restarts",
                   ", ".join(f"{b:g}" for b in backoffs if isinstance(b, float)) + " s",
                   goal=", ".join(f"{b:g}" for b in expected) + " s (doubling to the 0.8 s cap; from the start after"
                   " a healthy run)", ok=backoffs == expected)
    assert [e["backoff"] for e in exits] == [0.2, 0.4, 0.8, 0.8, 0.8, 0.2], exits
    assert isinstance(exits[-1]["ran_for"], float) and exits[-1]["ran_for"] >= 3.0
    assert running_supervisor.events("workers stopped")[0]["exitcodes"] == [0]


def test_sigterm_while_a_restart_waits_out_its_backoff_stops_at_once_with_exit_0(tmp_path: Path,
                                                                                 figures: Figures) -> None:
    with supervisor(tmp_path, first=20.0, most=20.0, healthy_after=30.0) as running_supervisor:
        kill(running_supervisor.events("started workers")[0]["pids"][0])  # type: ignore[index]
        running_supervisor.wait_for("worker exited; restarting", 1)
        started = time.monotonic()
        running_supervisor.proc.send_signal(signal.SIGTERM)
        code = running_supervisor.proc.wait(30)
        took = time.monotonic() - started
        figures.record(SCENARIO, "SIGTERM during a 20 s back-off: exit code", code, goal="0", ok=code == 0)
        figures.record(SCENARIO, "SIGTERM during a 20 s back-off: SIGTERM to exit", took, goal="< 5 s", ok=took < 5,
                       unit="s")
        assert running_supervisor.proc.wait(30) == 0, running_supervisor.log.read_text()
        assert time.monotonic() - started < 5
    restarted = len(running_supervisor.events("worker restarted"))
    figures.record(SCENARIO, "SIGTERM during a 20 s back-off: workers started after it", restarted, goal="0",
                   ok=not restarted)
    assert running_supervisor.events("worker restarted") == []
