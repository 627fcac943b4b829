"""Open-loop load at a fixed offered rate: build and drive ``bench/openloop.c``, parse its JSON report.

wrk is closed-loop: each connection sends its next request only after the previous answer, so at
saturation its latency is queueing (Little's law) and a server stall hides the requests that would have
been sent meanwhile (coordinated omission). ``openloop`` schedules request ``i`` at ``t0 + i/rate``
(or a seeded Poisson process) whatever the server does, sends it on an idle keep-alive connection or
queues it FIFO until one frees up, and measures latency from the SCHEDULED time, as wrk2 does. The
send-to-response time is reported separately (``service_ms``), and so is the generator's own lateness
(``behind_schedule_ms``), so a slow generator is not mistaken for a slow server.

The C source is compiled on first use with ``gcc -O2`` into ``workdir`` under a name that carries the hash
of the source and flags, so an edited source is rebuilt and an unchanged one is reused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().with_name("openloop.c")
CFLAGS = ("-O2",)
PERCENTILES = (50.0, 75.0, 90.0, 99.0, 99.9, 99.99)
"""The percentiles the generator reports (besides min, max and mean)."""


class OpenLoopError(RuntimeError):
    """The generator could not be built or did not complete a run."""


def _key(percentile: float) -> str:
    return f"p{percentile:g}"


@dataclass(frozen=True)
class OpenLoopResult:
    """One open-loop run. Counts are of the measured requests (scheduled after the warm-up).

    ``scheduled == completed + errors`` always holds. Latencies are in milliseconds from each request's
    scheduled time (``latency_ms``) or actual send (``service_ms``), keyed ``p50`` ... ``p99.99``,
    ``min``, ``max``, ``mean``; NaN when nothing completed.
    """

    rate_target: float
    rate_achieved: float
    """Responses completed inside the measurement window per second: the throughput the server sustained."""
    measured_seconds: float
    drain_ms: float
    """How long after the window the last measured response arrived."""
    scheduled: int
    sent: int
    completed: int
    errors: int
    error_kinds: Mapping[str, int]
    """Failed requests by cause: read, write, timeout (no full response ``timeout`` s after its
    scheduled time, sent or still queued), parse (bad or chunked response)."""
    connect_errors: int
    """Failed connection attempts (not requests); the connections are retried with back-off."""
    status: Mapping[str, int]
    """Completed responses by status class: ``2xx``, ``3xx``, ``4xx``, ``5xx``, ``other``."""
    reconnects: int
    max_queue: int
    """Largest backlog of due-but-unsent requests (every connection busy)."""
    behind_schedule_ms: float
    """Largest delay of the generator itself: due time to send while a connection was idle."""
    behind_schedule_mean_ms: float
    late_sends_over_1ms: int
    late_sends_over_10ms: int
    latency_ms: Mapping[str, float]
    service_ms: Mapping[str, float]
    warmup: Mapping[str, int]
    tokens_wrapped: bool
    """More requests than tokens: some tokens were sent twice."""
    generator_cpu_seconds: float
    raw: str = field(repr=False, compare=False)

    def p(self, percentile: float) -> float:
        """Latency from the scheduled time at ``percentile`` (50, 75, 90, 99, 99.9, 99.99) in ms, NaN if missing."""
        return self.latency_ms.get(_key(percentile), math.nan)

    def service_p(self, percentile: float) -> float:
        """Latency from the actual send at ``percentile``, in ms (NaN if missing)."""
        return self.service_ms.get(_key(percentile), math.nan)

    @property
    def non_2xx(self) -> int:
        """Completed responses whose status was not 2xx."""
        return self.completed - self.status.get("2xx", 0)

    @property
    def unsent(self) -> int:
        """Measured requests that timed out in the backlog without being sent."""
        return self.scheduled - self.sent


def _latencies(raw: Mapping[str, Any]) -> dict[str, float]:
    return {key: math.nan if value is None else float(value) for key, value in raw.items()}


def parse(text: str) -> OpenLoopResult:
    """Parse the generator's JSON report; raise ValueError if it is not one."""
    try:
        data = json.loads(text)
        return OpenLoopResult(
            rate_target=float(data["rate_target"]), rate_achieved=float(data["rate_achieved"]),
            measured_seconds=float(data["measured_seconds"]), drain_ms=float(data["drain_ms"]),
            scheduled=int(data["scheduled"]), sent=int(data["sent"]), completed=int(data["completed"]),
            errors=int(data["errors"]), error_kinds={k: int(v) for k, v in data["error_kinds"].items()},
            connect_errors=int(data["connect_errors"]),
            status={k: int(v) for k, v in data["status"].items()}, reconnects=int(data["reconnects"]),
            max_queue=int(data["max_queue"]), behind_schedule_ms=float(data["behind_schedule_ms"]),
            behind_schedule_mean_ms=float(data["behind_schedule_mean_ms"]),
            late_sends_over_1ms=int(data["late_sends_over_1ms"]),
            late_sends_over_10ms=int(data["late_sends_over_10ms"]),
            latency_ms=_latencies(data["latency_ms"]), service_ms=_latencies(data["service_ms"]),
            warmup={k: int(v) for k, v in data["warmup"].items()}, tokens_wrapped=bool(data["tokens_wrapped"]),
            generator_cpu_seconds=float(data["generator_cpu_seconds"]), raw=text)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not an openloop report ({exc!r}):\n{text}") from None


def build(workdir: Path) -> Path:
    """The compiled generator in ``workdir``, compiling it first unless this source was already built there.

    Raises OpenLoopError when gcc is missing or the compilation fails.
    """
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + "\0".join(CFLAGS).encode()).hexdigest()[:16]
    binary = workdir / f"openloop-{digest}"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    gcc = shutil.which("gcc")
    if gcc is None:
        raise OpenLoopError(f"gcc not found: it is needed to build the open-loop generator {SOURCE} "
                            "(apt-get install gcc)")
    workdir.mkdir(parents=True, exist_ok=True)
    partial = workdir / f".{binary.name}.{os.getpid()}.tmp"
    try:
        proc = subprocess.run([gcc, *CFLAGS, "-o", str(partial), str(SOURCE)], capture_output=True, text=True,
                              check=False, timeout=120)
        if proc.returncode != 0:
            raise OpenLoopError(f"compiling {SOURCE} failed:\n{proc.stderr}")
        os.replace(partial, binary)  # atomic: a concurrent build of the same source is harmless
    finally:
        partial.unlink(missing_ok=True)
    return binary


def command(binary: Path, host: str, port: int, *, rate: float, duration: float, warmup: float,
            connections: int = 64, path: str = "/", headers: Mapping[str, str] | None = None,
            tokens_file: Path | None = None, token_header: str | None = None, token_offset: int = 0,
            timeout: float = 5.0, poisson: bool = False, seed: int = 1) -> list[str]:
    """The generator's command line (see :func:`run` for the arguments); raises ValueError on bad ones."""
    if rate <= 0 or duration <= 0 or warmup < 0 or timeout <= 0 or connections < 1 or token_offset < 0:
        raise ValueError("rate, duration, timeout and connections must be positive; warmup and token_offset "
                         "not negative")
    if (tokens_file is None) != (token_header is None):
        raise ValueError("tokens_file and token_header go together")
    if token_header is not None and token_header.count("%s") != 1:
        raise ValueError(f"token_header must hold exactly one %s: {token_header!r}")
    args = [str(binary), host, str(port), "--rate", repr(float(rate)), "--duration", repr(float(duration)),
            "--warmup", repr(float(warmup)), "--connections", str(connections), "--timeout", repr(float(timeout)),
            "--path", path]
    for name, value in (headers or {}).items():
        args += ["--header", f"{name}: {value}"]
    if tokens_file is not None and token_header is not None:
        args += ["--tokens", str(tokens_file), "--token-header-template", token_header,
                 "--token-offset", str(token_offset)]
    if poisson:
        args += ["--poisson", "--seed", str(seed)]
    return args


def run(host: str, port: int, *, rate: float, duration: float, warmup: float, connections: int = 64,
        path: str, headers: dict[str, str] | None = None, tokens_file: Path | None = None,
        token_header: str | None = None, token_offset: int = 0, workdir: Path, timeout: float = 5.0,
        poisson: bool = False, seed: int = 1) -> OpenLoopResult:
    """Offer ``rate`` GET requests per second to ``host:port`` + ``path`` and measure them; blocks until done.

    Opens ``connections`` keep-alive connections first, then schedules requests for ``warmup`` seconds
    (sent, not recorded) and ``duration`` more (measured); waits at most ``timeout`` seconds past each
    request's scheduled time for its response (later = error), so it returns within about
    ``2 * timeout + warmup + duration`` seconds. ``headers`` are added to every request (a ``Host`` entry
    replaces the default ``host:port``). With ``tokens_file`` (one token per non-empty line) request ``i``
    (counting warm-up requests) carries ``token_header`` (e.g. ``"Cookie: gw_session=%s"``) filled with line
    ``token_offset + i``, wrapping round when the file runs out (``tokens_wrapped``). ``poisson`` uses
    exponential inter-arrival times from ``seed`` instead of a constant ``1/rate``.

    Raises ValueError on bad arguments and OpenLoopError when the generator cannot be built, cannot
    connect at all, or fails.
    """
    args = command(build(workdir), host, port, rate=rate, duration=duration, warmup=warmup,
                   connections=connections, path=path, headers=headers, tokens_file=tokens_file,
                   token_header=token_header, token_offset=token_offset, timeout=timeout, poisson=poisson,
                   seed=seed)
    limit = 2 * timeout + warmup + duration + 60
    try:
        proc = subprocess.run(args, capture_output=True, text=True, check=False, timeout=limit)
    except subprocess.TimeoutExpired:
        raise OpenLoopError(f"openloop did not finish within {limit:.0f} s") from None
    if proc.returncode != 0:
        raise OpenLoopError(f"openloop failed ({proc.returncode}): {proc.stderr.strip()}")
    return parse(proc.stdout)
