"""Child processes of the benchmark: each in its own process group, always stopped (SIGTERM, then SIGKILL).

Every server, load generator and helper the benchmark starts goes through :class:`ProcessSet`, whose
:meth:`ProcessSet.stop_all` runs from a ``finally``: a failure or Ctrl-C never leaves a gateway, a
worker or ``wrk`` behind. Each child gets a new session (``start_new_session``), so the terminal's
Ctrl-C reaches only the benchmark, which then stops the children in order; signalling the child's
process group also reaches grandchildren (the gateway's workers) if their parent died first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

TERM_GRACE = 15.0
"""Seconds a child gets to exit after SIGTERM before SIGKILL (the gateway drains up to 10 s)."""


class ProcessSet:
    """The processes started by this benchmark run, stopped in reverse order by :meth:`stop_all`."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: Path | None = None, capture_stdout: bool = False) -> subprocess.Popen[bytes]:
        """Start ``args`` in a new session; stderr (and stdout unless captured) go to ``<log_dir>/<name>.log``."""
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(list(args), env=dict(env) if env is not None else None, cwd=cwd,
                                    stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE if capture_stdout else log, stderr=log,
                                    start_new_session=True)
        self._procs.append(proc)
        return proc

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The end of a child's log, for error messages."""
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, proc: subprocess.Popen[bytes], grace: float = TERM_GRACE) -> int | None:
        """SIGTERM the child's process group, wait up to ``grace`` seconds, then SIGKILL what is left."""
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # Workers whose parent is gone stay in the group: make sure none survives.
        _signal_group(proc.pid, signal.SIGKILL)
        if proc.stdout is not None:
            proc.stdout.close()
        if proc in self._procs:
            self._procs.remove(proc)
        return proc.returncode

    def stop_all(self) -> None:
        """Stop every child still tracked, newest first; never raises."""
        for proc in reversed(list(self._procs)):
            with contextlib.suppress(Exception):
                self.stop(proc)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def rss_kib(pid: int) -> int:
    """VmRSS of one process in KiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (scanning /proc, which works without CONFIG_PROC_CHILDREN)."""
    parent = str(pid)
    return sorted(int(entry) for entry in os.listdir("/proc")
                  if entry.isdigit() and _stat_fields(entry)[1:2] == [parent])


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int | str) -> list[str]:
    """/proc/<pid>/stat fields after the command name (index 0 is the state), [] when gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            # the command name is in parentheses and may hold spaces: split after the last ')'
            return fh.read().rsplit(")", 1)[-1].split()
    except OSError:
        return []


def cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """User + system CPU seconds of ``pid`` (plus its reaped children's when asked), 0 when gone."""
    fields = _stat_fields(pid)
    if len(fields) < 15:
        return 0.0
    # after the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and every live descendant, plus what its exited children used."""
    total = 0.0
    stack = [pid]
    while stack:
        current = stack.pop()
        total += cpu_seconds(current, reaped_children=True)
        stack.extend(children(current))
    return total


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def worker_pids(pid: int, workers: int) -> list[int]:
    """The processes that serve requests: ``pid`` itself for one worker, else its spawned workers.

    With ``--workers N`` the gateway's parent only supervises; its children made by multiprocessing's
    spawn serve (multiprocessing's resource tracker, if any, is not a worker).
    """
    if workers == 1:
        return [pid]
    return [child for child in children(pid)
            if "multiprocessing" in _cmdline(child) and "resource_tracker" not in _cmdline(child)]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``url`` on a fresh connection; (status, body), or (0, b"") when nothing answers."""
    request = urllib.request.Request(url, headers={"Connection": "close"})  # noqa: S310 - our own loopback URL
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, ValueError):
        return 0, b""


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str,
               alive: Callable[[], bool] = lambda: True, interval: float = 0.1) -> None:
    """Poll ``predicate`` until true; raise RuntimeError after ``timeout`` or once ``alive()`` is false."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if not alive():
            raise RuntimeError(f"{what}: the process exited")
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(interval)
