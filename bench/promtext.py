"""Read the gateway's ``/metrics`` (Prometheus text), summed over every worker process.

Each worker keeps its own registry and the kernel spreads connections over workers (SO_REUSEPORT), so
one scrape sees one worker. :func:`scrape_workers` opens fresh connections, finds which worker process
accepted each one (from ``/proc/net/tcp`` and the workers' open sockets), scrapes ``/metrics`` on it,
and stops once every worker has been scraped; the results are summed.
"""

from __future__ import annotations

import http.client
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from bench.procs import http_get

_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Labels = tuple[tuple[str, str], ...]


@dataclass
class Samples:
    """Samples by (metric name, sorted labels); ``workers_seen`` tells how many workers were summed."""

    values: dict[tuple[str, Labels], float] = field(default_factory=dict)
    workers_seen: int = 1

    def total(self, name: str, **labels: str) -> float:
        """Sum of every sample named ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.values.items() if n == name and wanted <= set(ls))

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """``name``'s samples summed per value of ``label``."""
        out: dict[str, float] = {}
        for (n, ls), v in self.values.items():
            if n == name:
                key = dict(ls).get(label, "")
                out[key] = out.get(key, 0.0) + v
        return out


def parse(text: str) -> Samples:
    """Parse exposition text (comments skipped)."""
    samples = Samples()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE_RE.match(line)
        if not match:
            continue
        name, raw_labels, raw_value = match.groups()
        labels: Labels = tuple(sorted(_LABEL_RE.findall(raw_labels or "")))
        try:
            samples.values[(name, labels)] = float(raw_value)
        except ValueError:
            continue
    return samples


def _socket_inode(server_port: int, client_port: int) -> str | None:
    """Inode of the server side of the loopback TCP connection ``client_port`` -> ``server_port``."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as fh:
                lines = fh.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if int(local.rsplit(":", 1)[1], 16) == server_port and int(remote.rsplit(":", 1)[1], 16) == client_port:
                return inode
    return None


def _owner(inode: str, pids: list[int]) -> int | None:
    """Which of ``pids`` holds the socket ``inode`` open."""
    wanted = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == wanted:
                    return pid
            except OSError:
                continue
    return None


def _scrape_one(host: str, port: int, pids: list[int]) -> tuple[int | None, Samples | None]:
    """One fresh connection: the worker that accepted it, and its /metrics (None when either fails)."""
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.connect()
        assert conn.sock is not None
        client_port = int(conn.sock.getsockname()[1])
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read()
        # the connection is still open (keep-alive): its server side tells which worker answered
        inode = _socket_inode(port, client_port)
        owner = _owner(inode, pids) if inode is not None else None
        if response.status != 200:
            return owner, None
        return owner, parse(body.decode(errors="replace"))
    except (OSError, http.client.HTTPException):
        return None, None
    finally:
        conn.close()


def scrape(base_url: str) -> Samples | None:
    """One scrape of ``/metrics`` (one worker), or None when it fails."""
    status, body = http_get(base_url + "/metrics")
    if status != 200:
        return None
    return parse(body.decode(errors="replace"))


def scrape_workers(base_url: str, pids: list[int], attempts: int = 80) -> Samples:
    """Samples summed over every worker in ``pids`` (``workers_seen`` says how many were reached).

    With one worker this is one plain scrape. Call it once the load has stopped, so counters no longer move.
    """
    if len(pids) <= 1:
        samples = scrape(base_url)
        return samples if samples is not None else Samples(workers_seen=0)
    host, _, port = base_url.removeprefix("http://").partition(":")
    seen: dict[int, Samples] = {}
    for _ in range(attempts):
        owner, samples = _scrape_one(host, int(port), pids)
        if owner is not None and samples is not None:
            seen.setdefault(owner, samples)
        if len(seen) >= len(pids):
            break
    merged = Samples(workers_seen=len(seen))
    for samples in seen.values():
        for key, value in samples.values.items():
            merged.values[key] = merged.values.get(key, 0.0) + value
    return merged


def feed_up(samples: Samples | None) -> bool:
    """True when the scraped worker's revocation feed is live (its cache then uses the full TTL)."""
    return samples is not None and samples.total("gateway_revocation_feed_up") >= 1


def summary(samples: Samples) -> Mapping[str, float]:
    """The numbers the report needs: checks by outcome and cache events by kind."""
    out: dict[str, float] = {}
    for outcome, value in samples.by_label("gateway_checks_total", "outcome").items():
        out[f"checks_{outcome}"] = value
    out["checks_total"] = samples.total("gateway_checks_total")
    for event, value in samples.by_label("gateway_session_cache_events_total", "event").items():
        out[f"cache_{event}"] = value
    return out
