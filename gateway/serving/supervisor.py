"""The parent of ``gateway serve --workers N``: starts the workers, restarts one that dies, stops them all.

Each worker is a complete gateway sharing the port through SO_REUSEPORT (see :mod:`.server`). A worker that
exits unexpectedly is restarted after a back-off per slot (:class:`RestartBackoff`); each worker, restarts
included, publishes its metrics to a file of its own in a private directory, so any worker can answer a
scrape for all of them (:mod:`.workermetrics`). On SIGTERM or SIGINT the workers are told to stop, given
their shutdown budget, and killed only past it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path

import structlog

from gateway.logging import configure_logging
from gateway.serving.workermetrics import LIVE_SUFFIX, retire
from gateway.settings import Settings

log = structlog.get_logger("gateway.server")

_TEND_EVERY = 0.2
"""Seconds between two looks at the workers."""


def _worker_main(settings: Settings, metrics_file: Path | None) -> None:
    from gateway.serving.server import run_worker  # the worker's own process start, imported in the child

    configure_logging(settings.log_format, settings.log_level)
    # The parent decides when workers stop; ignore the terminal's Ctrl-C burst and wait for its SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(run_worker(settings, reuse_port=True, metrics_file=metrics_file))


class RestartBackoff:
    """How long the supervisor waits before restarting a worker that exited, for one worker slot.

    ``first`` seconds after a crash, doubling with each further crash up to ``most``; a worker that ran
    ``healthy_after`` seconds or longer before it exited was serving, not crash-looping, so its restart
    starts over at ``first``. (Uptime is the test because the supervisor cannot ask one worker for
    ``/readyz``: the workers share the port.)
    """

    def __init__(self, first: float = 0.5, most: float = 10.0, healthy_after: float = 30.0) -> None:
        self.first = first
        self.most = most
        self.healthy_after = healthy_after
        self._next = first

    def after_exit(self, ran_for: float) -> float:
        """The delay before restarting a worker that ran ``ran_for`` seconds; call once per exit."""
        if ran_for >= self.healthy_after:
            self._next = self.first
        delay = self._next
        self._next = min(self._next * 2, self.most)
        return delay


@dataclass
class _Slot:
    """One of the supervisor's workers: the process now running in it, or the time it restarts at."""

    proc: BaseProcess
    metrics_file: Path | None
    started: float
    backoff: RestartBackoff
    restart_at: float | None = None


WorkerStarter = Callable[[Path | None], BaseProcess]
"""Starts one worker process that publishes its metrics to the given file (None: it keeps them to itself)."""


class _Workers:
    """The worker slots and the directory their metrics files live in.

    ``start`` starts one worker; ``count`` slots are kept filled; ``stop_budget`` is how many seconds the
    workers get to stop after SIGTERM before they are killed.
    """

    def __init__(self, start: WorkerStarter, count: int, stop_budget: float,
                 backoff: Callable[[], RestartBackoff]) -> None:
        self._start_worker = start
        self._stop_budget = stop_budget
        self._started = 0
        try:
            self.metrics_dir: Path | None = Path(tempfile.mkdtemp(prefix="gateway-metrics-"))
        except OSError as exc:
            self.metrics_dir = None
            log.error("cannot share metrics among workers: each answers /metrics for itself", error=str(exc))
        now = time.monotonic()
        try:
            self.slots = [_Slot(*self._start(), now, backoff()) for _ in range(count)]
        except BaseException:
            self.remove_metrics_dir()
            raise
        log.info("started workers", workers=count, pids=[slot.proc.pid for slot in self.slots])

    def _start(self) -> tuple[BaseProcess, Path | None]:
        """A new worker and its metrics file (a new file for every worker, restarts included)."""
        self._started += 1
        file = self.metrics_dir / f"worker-{self._started}{LIVE_SUFFIX}" if self.metrics_dir is not None else None
        return self._start_worker(file), file

    def tend(self, slot: _Slot, now: float) -> None:
        """Restart ``slot``'s worker when its back-off is over; start the back-off when the worker exited."""
        if slot.restart_at is not None:
            if now >= slot.restart_at:
                slot.proc, slot.metrics_file = self._start()
                slot.started, slot.restart_at = now, None
                log.info("worker restarted", pid=slot.proc.pid)
        elif slot.proc.exitcode is not None:
            ran_for = now - slot.started
            delay = slot.backoff.after_exit(ran_for)
            log.error("worker exited; restarting", pid=slot.proc.pid, exitcode=slot.proc.exitcode,
                      ran_for=round(ran_for, 1), backoff=delay)
            if slot.metrics_file is not None:
                retire(slot.metrics_file)
            slot.restart_at = now + delay

    def stop(self) -> list[int | None]:
        """SIGTERM every running worker, wait out their shutdown budget (then kill); their exit codes.

        Slots waiting out a back-off have no worker to stop; their crash was logged when it happened.
        """
        running = [slot.proc for slot in self.slots if slot.restart_at is None]
        for proc in running:
            if proc.exitcode is None and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self._stop_budget
        for proc in running:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.exitcode is None:
                proc.kill()
                proc.join()
        return [proc.exitcode for proc in running]

    def remove_metrics_dir(self) -> None:
        """Delete the shared metrics directory (after every worker has stopped)."""
        if self.metrics_dir is not None:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)


def supervise(settings: Settings, backoff: Callable[[], RestartBackoff] = RestartBackoff) -> int:
    """Start ``settings.workers`` worker processes and keep them running until SIGTERM/SIGINT; return the
    exit code (0 when every worker stopped cleanly). ``backoff`` makes each slot's restart policy."""
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    ctx = multiprocessing.get_context("spawn")

    def start_worker(metrics_file: Path | None) -> BaseProcess:
        # Each worker is a whole gateway, so it gets the whole Settings.
        proc = ctx.Process(target=_worker_main, args=(settings, metrics_file), daemon=False)
        proc.start()
        return proc

    serving = settings.serving
    workers: _Workers | None = None
    codes: list[int | None] = []
    try:
        workers = _Workers(start_worker, serving.workers, serving.shutdown_delay + serving.shutdown_timeout + 5,
                           backoff)
        while not stopping:
            time.sleep(_TEND_EVERY)
            for slot in workers.slots:
                if stopping:
                    break
                workers.tend(slot, time.monotonic())
        codes = workers.stop()
    finally:
        if workers is not None:
            workers.remove_metrics_dir()
    log.info("workers stopped", exitcodes=codes)
    # -SIGTERM: a worker still starting up (its handler is set before it listens) had served nothing.
    return 0 if all(c in (0, -signal.SIGTERM) for c in codes) else 1
