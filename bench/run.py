"""Orchestration and command line of ``python -m bench``: set up, measure every scenario, report, clean up.

Every process (gateway, baseline servers, wrk, the lookup loop) is started through one
:class:`bench.procs.ProcessSet` and the PostgreSQL cluster through :func:`bench.database.cluster`; both
are undone in ``finally`` blocks, so a failure, Ctrl-C or SIGTERM leaves nothing running.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import FrameType

from bench import database, openloop, procs, promtext, report, wrk
from bench.procs import ProcessSet
from bench.report import Measurement, Memory, Results
from gateway.cache import SessionCache
from gateway.models import ActiveSession, SessionRecord, User
from gateway.settings import Settings
from gateway.tokens import hash_token, mint_token
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "docs" / "benchmarks.md"
READY_TIMEOUT = 60.0
OPEN_LOOP_LOAD = 0.5
"""Open-loop latency is measured at this fraction of the saturated (closed-loop) cache-miss throughput."""
OPEN_LOOP_RUNS = 3


class Interrupted(Exception):
    """SIGTERM arrived: unwind through every ``finally`` like Ctrl-C does."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(f"signal {signum}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Options; ``--quick`` shrinks every default for a smoke test."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1, help="worker processes for every server (default 1)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--duration", type=float, help="seconds per measured run (default 10; quick 3)")
    parser.add_argument("--warmup", type=float, help="seconds of discarded warm-up per scenario (default 2; quick 1)")
    parser.add_argument("--sessions", type=int, help="seeded users+sessions (default 100000; quick 10000)")
    parser.add_argument("--memory-tokens", type=int,
                        help="distinct unknown tokens for the memory step (default 1000000; quick 50000)")
    parser.add_argument("--memory-seconds", type=float,
                        help="time bound of the memory step (default 150; quick 20)")
    parser.add_argument("--rounds", type=int,
                        help="repeat scenarios a-d' this many times and report the median round (default 3, "
                             "quick 1; each round takes about 90 s)")
    parser.add_argument("--quick", action="store_true", help="small and short: a smoke test of the benchmark")
    parser.add_argument("--output", type=Path,
                        help=f"Markdown report (default {DEFAULT_OUTPUT.relative_to(ROOT)}; --quick writes none "
                             "unless given)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the work directory with server logs")
    args = parser.parse_args(argv)
    quick = args.quick
    args.duration = args.duration or (3.0 if quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if quick else 2.0)
    args.sessions = args.sessions or (10_000 if quick else 100_000)
    args.memory_tokens = args.memory_tokens or (50_000 if quick else 1_000_000)
    args.memory_seconds = args.memory_seconds or (20.0 if quick else 150.0)
    args.rounds = args.rounds or (1 if quick else 3)  # a shared machine's noise: the median of three rounds
    if args.output is None and not quick:
        args.output = DEFAULT_OUTPUT
    for name in ("workers", "connections", "threads", "sessions", "memory_tokens", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.connections < args.threads:
        parser.error("--connections must be at least --threads")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when it completed (targets missed are reported, not failed), 1 on errors."""
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    try:
        results = Bench(args, workdir).run()
    except (KeyboardInterrupt, Interrupted):
        print("\ninterrupted: every process and the database cluster were stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        print(f"logs: {workdir}", file=sys.stderr)
        args.keep_logs = True
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        if not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(report.table(results))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report.markdown(results), encoding="utf-8")
        print(f"\nwrote {args.output}")
    if args.keep_logs:
        print(f"logs kept in {workdir}")
    return 0


def say(message: str) -> None:
    """Progress on stderr, timestamped."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Bench:
    """One benchmark run: the scenarios in order, sharing one database and one process set."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.procs = ProcessSet(workdir)
        self.params = wrk.WrkParams(connections=args.connections, threads=args.threads)
        self.settings = Settings()
        self.tokens_file = workdir / "tokens.txt"
        self.hashes_file = workdir / "hashes.txt"
        self.distinct_lua, self.unknown_lua = wrk.write_scripts(workdir)
        self.database_url = ""
        self.postmaster_pid = 0
        self.load_average = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        self.runs: dict[str, Measurement] = {}
        self.rounds: dict[str, list[Measurement]] = {}
        self.round = 1
        self.checks: list[str] = []

    # -- the run ---------------------------------------------------------------------------------------

    def run(self) -> Results:
        """Everything, in order; returns the results (processes and cluster are gone when it returns)."""
        args = self.args
        started = time.monotonic()
        with database.cluster() as pg:
            try:
                say(f"PostgreSQL cluster up on port {pg.port}")
                self.postmaster_pid = int((pg.datadir / "postmaster.pid").read_text().split()[0])
                self.database_url = pg.create_database()
                database.migrate(self.database_url, ROOT)
                seed_seconds = database.seed(self.database_url, args.sessions, self.tokens_file)
                self.hashes_file.write_text("\n".join(database.token_hashes(self.tokens_file)) + "\n",
                                            encoding="ascii")
                say(f"seeded {args.sessions:,} users and sessions in {seed_seconds:.1f} s")
                self._check_lookup_sql()
                env = self._environment(database.server_version(pg), seed_seconds)
                # each subject runs right after its baseline, so drift on a shared machine hits both alike
                for self.round in range(1, args.rounds + 1):
                    if args.rounds > 1:
                        say(f"round {self.round} of {args.rounds}")
                    self.bare()
                    self.cache_hit()
                    self.lookup_loop()
                    self.cache_miss("miss", "gateway /auth/webhook, cache miss", seen_ago=0.0)
                    self.raw_http()
                    self.cache_miss("miss_touch", "gateway cache miss + last-use write-back (info)",
                                    seen_ago=3600.0)
                self._settle_rounds()
                self.open_loop("hit_open", "gateway cache hit, open loop at half load", distinct=False)
                self.open_loop("miss_open", "gateway cache miss, open loop at half load", distinct=True)
                memory = self.memory()
            finally:
                self.procs.stop_all()
        say(f"done in {time.monotonic() - started:.0f} s")
        return Results(env=env, runs=self.runs, memory=memory, checks=self.checks)

    # -- helpers ---------------------------------------------------------------------------------------

    def _environment(self, postgres_version: str, seed_seconds: float) -> report.Environment:
        try:
            import uvloop  # noqa: F401 - only whether it is installed matters

            uv = f"yes ({metadata.version('uvloop')})"
        except ImportError:
            uv = "no (asyncio's default loop)"
        wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False,
                                     timeout=10).stdout.splitlines()
        cpu_model = ""
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                                text=True, check=False, timeout=10).stdout.strip() or "unknown"
        return report.Environment(
            date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
            host_cpus=f"nproc {affinity}, {cpu_model or platform.machine()}, {platform.system()} {platform.release()}",
            python=platform.python_version(), uvloop=uv, aiohttp=metadata.version("aiohttp"),
            postgres=postgres_version, wrk=(wrk_version[0].split(" [")[0] if wrk_version else "wrk"),
            commit=commit, workers=self.args.workers, connections=self.args.connections,
            threads=self.args.threads, duration=self.args.duration, warmup=self.args.warmup,
            sessions=self.args.sessions, pool_max=self.settings.database.pool_max, quick=self.args.quick,
            seed_seconds=seed_seconds, load_average=self.load_average, rounds=self.args.rounds)

    def _check_lookup_sql(self) -> None:
        """Say which lookup query the baselines run (the store's own, or the copy)."""
        self.checks.append(f"baselines d and d' ran the store's lookup query from {database.LOOKUP_SQL_SOURCE}")

    def _gateway_env(self, port: int) -> dict[str, str]:
        return database.gateway_env(self.database_url, {
            "GATEWAY_LISTEN": f"127.0.0.1:{port}",
            "GATEWAY_LOG_LEVEL": "warning",
            "GATEWAY_LOG_FORMAT": "json",
            "GATEWAY_COOKIE_SECURE": "false",
        })

    def start_gateway(self, name: str) -> tuple[subprocess.Popen[bytes], str]:
        """``gateway serve --workers N`` on a free port, ready and with the revocation feed live everywhere."""
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = self.procs.start(name, [sys.executable, "-m", "gateway", "serve", "--workers", str(self.args.workers)],
                                env=self._gateway_env(port), cwd=ROOT)
        workers = self.args.workers

        def alive() -> bool:
            return proc.poll() is None

        def all_feeds_up() -> bool:
            if len(procs.worker_pids(proc.pid, workers)) != workers:
                return False
            merged = promtext.scrape(base)
            return merged is not None and merged.workers_seen >= workers and promtext.feed_up(merged)

        try:
            procs.wait_until(lambda: procs.http_get(base + "/readyz")[0] == 200, timeout=READY_TIMEOUT,
                             what=f"gateway ({name}) readiness", alive=alive)
            procs.wait_until(all_feeds_up, timeout=READY_TIMEOUT, what=f"gateway ({name}) revocation feed",
                             alive=alive, interval=0.2)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.procs.log_tail(name)}") from None
        return proc, base

    def _scrape(self, proc: subprocess.Popen[bytes], base: str) -> promtext.Samples:
        """The metrics of every gateway worker; a check note if the answer did not cover them all."""
        samples = promtext.scrape_workers(base, self.args.workers)
        if samples.workers_seen < self.args.workers:
            self.checks.append(f"{self._round_label()}WARNING: /metrics reached {samples.workers_seen} of "
                               f"{self.args.workers} workers; counts below are partial")
        return samples

    def start_server(self, mode: str) -> tuple[subprocess.Popen[bytes], str]:
        """A baseline server from :mod:`bench.servers`, answering before this returns."""
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = self.procs.start(mode, [sys.executable, "-m", "bench.servers", mode, "--listen", f"127.0.0.1:{port}",
                                       "--workers", str(self.args.workers), "--database-url", self.database_url],
                                cwd=ROOT)
        probe = f"{base}/auth/webhook"

        def answering() -> bool:
            return procs.http_get(probe)[0] in (200, 401)

        try:
            procs.wait_until(answering, timeout=READY_TIMEOUT, what=f"{mode} server",
                             alive=lambda: proc.poll() is None)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.procs.log_tail(mode)}") from None
        time.sleep(0.5 if self.args.workers > 1 else 0.0)  # let every worker finish starting
        return proc, base

    def _postgres_cpu(self) -> float:
        """CPU seconds of the PostgreSQL server: postmaster, live backends, and the ones that exited."""
        pm = self.postmaster_pid
        return procs.cpu_seconds(pm, reaped_children=True) + sum(procs.cpu_seconds(c) for c in procs.children(pm))

    def _measure(self, key: str, label: str, url: str, server_pid: int, *, headers: dict[str, str] | None = None,
                 distinct: bool = False) -> tuple[Measurement, wrk.WrkResult, wrk.WrkResult]:
        """Warm-up run (discarded) then the measured run; distinct-token runs use disjoint token ranges."""
        a = self.args
        cookie = self.settings.cookie.name
        script = self.distinct_lua if distinct else None

        def script_args(offset: int) -> list[str] | None:
            if not distinct:
                return None
            return [str(self.tokens_file), str(offset), str(self.params.threads), cookie]

        warm = wrk.run(self.procs, f"wrk-{key}-warmup", url, self.params, a.warmup, headers=headers, script=script,
                       script_args=script_args(0))
        offset = warm.requests + 2 * self.params.connections + 100
        say(f"  {key}: warm-up {warm.rps:,.0f} req/s; measuring {a.duration:g} s")
        server0, pg0, load0 = procs.tree_cpu_seconds(server_pid), self._postgres_cpu(), _children_cpu()
        result = wrk.run(self.procs, f"wrk-{key}", url, self.params, a.duration, headers=headers, script=script,
                         script_args=script_args(offset))
        cpu = report.Cpu(server=procs.tree_cpu_seconds(server_pid) - server0, postgres=self._postgres_cpu() - pg0,
                         load=_children_cpu() - load0)
        m = Measurement(key=key, label=label, rps=result.rps, p50=result.p(50), p90=result.p(90), p99=result.p(99),
                        requests=result.requests, seconds=result.seconds, non_2xx=result.non_2xx,
                        errors=result.errors, cpu=cpu)
        if result.non_2xx:
            m.notes.append(f"{result.non_2xx:,} responses were not 2xx")
        if result.errors:
            m.notes.append(f"socket errors: {result.socket_errors}")
        if distinct:
            used = offset + result.requests + self.params.connections
            if used > self.args.sessions:
                m.notes.append(f"the run needed ~{used:,} tokens but {self.args.sessions:,} were seeded: tokens "
                               "wrapped round (each reused no sooner than the cache TTL; see the /metrics check)")
        say(f"  {key}: {result.rps:,.0f} req/s, p50 {result.p(50):.2f} ms, p99 {result.p(99):.2f} ms")
        self._record(m)
        return m, warm, result

    @staticmethod
    def _other_outcomes(stats: Mapping[str, float]) -> str:
        """``; other outcomes: unavailable 44`` for checks that were not allowed, or ``""``."""
        others = {k.removeprefix("checks_"): v for k, v in stats.items()
                  if k.startswith("checks_") and k not in ("checks_allow", "checks_total") and v}
        if not others:
            return ""
        return "; other outcomes (warm-up included): " + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(others.items()))

    def _round_label(self) -> str:
        return f"round {self.round}: " if self.args.rounds > 1 else ""

    def _record(self, m: Measurement) -> None:
        """Keep one round's measurement (its notes labelled with the round when there are several)."""
        m.notes = [self._round_label() + note for note in m.notes]
        self.rounds.setdefault(m.key, []).append(m)

    def _settle_rounds(self) -> None:
        """Report, per scenario, the round with the median throughput (an actual run, so its latency and
        CPU numbers belong together); list every round's throughput when there were several."""
        for key in ("bare", "hit", "miss", "miss_touch", "loop", "rawhttp"):
            measured = self.rounds.get(key)
            if not measured:
                continue
            ordered = sorted(measured, key=lambda m: m.rps)
            chosen = ordered[(len(ordered) - 1) // 2]
            chosen.notes = [note for m in measured for note in m.notes]
            if len(measured) > 1:
                chosen.notes.append("req/s per round: " + ", ".join(f"{m.rps:,.0f}" for m in measured)
                                    + f" (the table shows the median round, {chosen.rps:,.0f})")
            self.runs[key] = chosen

    def _cookie_header(self) -> dict[str, str]:
        token = self.tokens_file.read_text(encoding="ascii").split("\n", 1)[0]
        return {"Cookie": f"{self.settings.cookie.name}={token}"}

    # -- scenarios -------------------------------------------------------------------------------------

    def bare(self) -> None:
        """a. A minimal aiohttp handler: the HTTP floor."""
        say("a. bare aiohttp")
        proc, base = self.start_server("bare")
        try:
            self._measure("bare", "bare aiohttp (baseline)", base + "/auth/webhook", proc.pid,
                          headers=self._cookie_header())
        finally:
            self.procs.stop(proc)

    def cache_hit(self) -> None:
        """b. The webhook with one valid token: answered from the cache."""
        say("b. gateway cache hit")
        proc, base = self.start_gateway("gateway-hit")
        try:
            m, warm, result = self._measure("hit", "gateway /auth/webhook, cache hit", base + "/auth/webhook",
                                            proc.pid, headers=self._cookie_header())
            stats = promtext.summary(self._scrape(proc, base))
            total = warm.requests + result.requests
            hits = stats.get("cache_hit", 0.0)
            m.notes.append(self._round_label() + f"/metrics: {hits:,.0f} cache hits, "
                           f"{stats.get('cache_miss', 0):,.0f} misses, {stats.get('checks_allow', 0):,.0f} allowed "
                           f"of ~{total:,} requests (warm-up included)" + self._other_outcomes(stats))
        finally:
            self.procs.stop(proc)

    def cache_miss(self, key: str, label: str, *, seen_ago: float) -> None:
        """c. The webhook with a different valid token per request: every check runs the store's lookup."""
        say(f"c. gateway cache miss ({'sessions used just now' if not seen_ago else 'last used an hour ago'})")
        database.mark_sessions_seen(self.database_url, seen_ago)
        since = time.time()
        proc, base = self.start_gateway(f"gateway-{key}")
        try:
            m, warm, result = self._measure(key, label, base + "/auth/webhook", proc.pid, distinct=True)
            stats = promtext.summary(self._scrape(proc, base))
        finally:
            self.procs.stop(proc)
        touched = database.sessions_touched_since(self.database_url, since)
        total = warm.requests + result.requests
        hits, misses = stats.get("cache_hit", 0.0), stats.get("cache_miss", 0.0)
        m.notes.append(self._round_label() + f"/metrics: {misses:,.0f} cache misses, {hits:,.0f} hits, "
                       f"{stats.get('cache_coalesced', 0):,.0f} coalesced, {stats.get('checks_allow', 0):,.0f} "
                       f"allowed; wrk completed {total:,} requests (warm-up included); "
                       f"{touched:,} last-use write-backs" + self._other_outcomes(stats))
        ok = hits <= 0.01 * max(1.0, misses) and misses >= 0.98 * total
        self.checks.append(f"{self._round_label()}{key}: every request missed the cache: {'yes' if ok else 'NO'} "
                           f"(hits {hits:,.0f}, misses {misses:,.0f}, requests {total:,}); "
                           f"write-backs {touched:,}")

    def lookup_loop(self) -> None:
        """d. The store's lookup in a loop on an aiopg pool, no HTTP."""
        say("d. raw aiopg lookup loop")
        a = self.args
        out = self.workdir / "loop.json"
        started = self.workdir / "loop.started"
        proc = self.procs.start("loop", [sys.executable, "-m", "bench.servers", "loop", "--database-url",
                                         self.database_url, "--hashes", str(self.hashes_file), "--workers",
                                         str(a.workers), "--concurrency", str(a.connections), "--warmup",
                                         str(a.warmup), "--duration", str(a.duration), "--out", str(out),
                                         "--started", str(started)], cwd=ROOT)
        try:
            # the database's CPU over the loop's measured window (the loop reports its own)
            procs.wait_until(started.exists, timeout=a.warmup + 60, what="lookup loop",
                             alive=lambda: proc.poll() is None, interval=0.01)
            pg0 = self._postgres_cpu()
            time.sleep(a.duration)
            pg_cpu = self._postgres_cpu() - pg0
            proc.wait(timeout=a.duration + 60)
        except subprocess.TimeoutExpired:
            raise RuntimeError("the lookup loop did not finish") from None
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.procs.log_tail('loop')}") from None
        finally:
            self.procs.stop(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"the lookup loop failed:\n{self.procs.log_tail('loop')}")
        data = json.loads(out.read_text(encoding="utf-8"))
        pct = data["percentiles_ms"]
        m = Measurement(key="loop", label="raw aiopg lookup loop (lookups/s, baseline)", rps=float(data["rps"]),
                        p50=float(pct.get("50", math.nan)), p90=float(pct.get("90", math.nan)),
                        p99=float(pct.get("99", math.nan)), requests=int(data["lookups"]),
                        seconds=float(data["seconds"]),
                        cpu=report.Cpu(server=float(data["cpu_seconds"]), postgres=pg_cpu, load=0.0))
        m.notes.append(f"{data['concurrency']} coroutines over {data['workers']} process(es), aiopg pool of "
                       f"{data['pool_max']} per process; latency includes waiting for a pooled connection")
        say(f"  loop: {m.rps:,.0f} lookups/s, p50 {m.p50:.2f} ms, p99 {m.p99:.2f} ms")
        self._record(m)

    def raw_http(self) -> None:
        """d'. The raw lookup behind a minimal aiohttp handler, driven by wrk like c."""
        say("d'. raw lookup behind aiohttp")
        database.mark_sessions_seen(self.database_url, 0.0)
        proc, base = self.start_server("rawhttp")
        try:
            self._measure("rawhttp", "raw lookup behind aiohttp (info)", base + "/auth/webhook", proc.pid,
                          distinct=True)
        finally:
            self.procs.stop(proc)

    def open_loop(self, key: str, label: str, *, distinct: bool) -> None:
        """f. Latency at a fixed offered load, the same for hits and misses: half of c's saturated cache-miss
        throughput (a load even an all-miss stream sustains), offered on the same number of connections by
        ``bench/openloop.c`` and timed from each request's scheduled send (so a stalled server is fully
        counted). :data:`OPEN_LOOP_RUNS` runs, each on a fresh gateway; the run with the median p99 is
        reported (tails are what a shared machine disturbs most), every run's p99 listed."""
        a = self.args
        saturated = self.runs.get("miss")
        if saturated is None or not saturated.rps:
            return
        rate = OPEN_LOOP_LOAD * saturated.rps
        say(f"f. {label}: {rate:,.0f} req/s offered on {a.connections} connections, {OPEN_LOOP_RUNS} runs")
        runs = sorted((self._open_loop_run(key, label, rate, distinct) for _ in range(OPEN_LOOP_RUNS)),
                      key=lambda m: m.p99)
        chosen = runs[(len(runs) - 1) // 2]
        chosen.notes.insert(0, f"offered {rate:,.0f} req/s ({OPEN_LOOP_LOAD:.0%} of miss's {saturated.rps:,.0f}); "
                               f"p99 per run: {', '.join(f'{m.p99:.2f} ms' for m in runs)} (the table shows the "
                               "median run)")
        self.runs[key] = chosen

    def _open_loop_run(self, key: str, label: str, rate: float, distinct: bool) -> Measurement:
        a = self.args
        database.mark_sessions_seen(self.database_url, 0.0)
        proc, base = self.start_gateway(f"gateway-{key}")
        host, port = base.removeprefix("http://").rsplit(":", 1)
        cookie = self.settings.cookie.name
        try:
            server0, pg0, load0 = procs.tree_cpu_seconds(proc.pid), self._postgres_cpu(), _children_cpu()
            result = openloop.run(host, int(port), rate=rate, duration=a.duration, warmup=a.warmup,
                                  connections=a.connections, path="/auth/webhook",
                                  headers=None if distinct else self._cookie_header(),
                                  tokens_file=self.tokens_file if distinct else None,
                                  token_header=f"Cookie: {cookie}=%s" if distinct else None, workdir=self.workdir)
            share = a.duration / (a.duration + a.warmup)  # CPU was read over warm-up and measured run alike
            cpu = report.Cpu(server=(procs.tree_cpu_seconds(proc.pid) - server0) * share,
                             postgres=(self._postgres_cpu() - pg0) * share, load=(_children_cpu() - load0) * share)
            stats = promtext.summary(self._scrape(proc, base))
        finally:
            self.procs.stop(proc)
        m = Measurement(key=key, label=label, rps=result.rate_achieved, p50=result.p(50), p90=result.p(90),
                        p99=result.p(99), requests=result.completed, seconds=result.measured_seconds,
                        non_2xx=result.non_2xx, errors=result.errors, cpu=cpu)
        worst = result.latency_ms.get("max", math.nan)
        m.notes.append(f"p99.9 {result.p(99.9):.2f} ms, max {worst:.2f} ms; largest backlog {result.max_queue} "
                       f"requests; generator late by more than 1 ms {result.late_sends_over_1ms:,} times "
                       f"(most {result.behind_schedule_ms:.1f} ms); /metrics: {stats.get('cache_hit', 0):,.0f} hits, "
                       f"{stats.get('cache_miss', 0):,.0f} misses" + self._other_outcomes(stats))
        if result.tokens_wrapped:
            m.notes.append("tokens wrapped round: some were sent twice")
        say(f"  {key}: {result.rate_achieved:,.0f} req/s, p50 {m.p50:.2f} ms, p99 {m.p99:.2f} ms, "
            f"max {worst:.2f} ms")
        return m

    def memory(self) -> Memory:
        """e. RSS before and after a flood of distinct unknown tokens."""
        a = self.args
        say("e. memory under distinct unknown tokens")
        proc, base = self.start_gateway("gateway-memory")
        try:
            time.sleep(1.0)
            pids = procs.worker_pids(proc.pid, a.workers)
            if len(pids) != a.workers:
                raise RuntimeError(f"expected {a.workers} gateway worker processes, found {pids}")

            def rss() -> int:
                return sum(procs.rss_kib(pid) for pid in pids)

            before = rss()
            miss = self.runs.get("miss")
            rate = miss.rps if miss is not None and miss.rps > 0 else 1000.0
            seconds = float(max(1, min(a.memory_seconds, math.ceil(a.memory_tokens / rate * 1.05))))
            say(f"  RSS before {before / 1024:.1f} MiB; flooding for {seconds:.0f} s "
                f"(target {a.memory_tokens:,} tokens at ~{rate:,.0f}/s)")
            samples: list[tuple[float, int]] = [(0.0, before)]
            stop = threading.Event()
            t0 = time.monotonic()

            def sample() -> None:
                while not stop.wait(2.0):
                    samples.append((time.monotonic() - t0, rss()))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                seed = str(int(time.time()))
                result = wrk.run(self.procs, "wrk-memory", base + "/auth/webhook", self.params, seconds,
                                 script=self.unknown_lua, script_args=[seed, self.settings.cookie.name])
            finally:
                stop.set()
                sampler.join()
            time.sleep(0.5)
            after = rss()
            samples.append((time.monotonic() - t0, after))
            stats = self._scrape(proc, base)
        finally:
            self.procs.stop(proc)
        summary = promtext.summary(stats)
        sent = int(summary.get("checks_total", 0))
        warm = next((kib for t, kib in samples if t >= min(10.0, seconds / 5)), after)
        cap_entries, cap_kib = negative_cache_footprint(self.settings)
        positive_entries, positive_kib = positive_cache_footprint(self.settings)
        mem = Memory(rss_before_kib=before, rss_warm_kib=warm, rss_peak_kib=max(kib for _, kib in samples),
                     rss_after_kib=after, tokens_sent=sent, tokens_target=a.memory_tokens, seconds=seconds,
                     rps=result.rps, samples=samples, workers=a.workers, negative_cap_entries=cap_entries,
                     negative_cap_kib=cap_kib, positive_cap_entries=positive_entries, positive_cap_kib=positive_kib)
        mem.notes.append(f"/metrics: {sent:,} checks ({summary.get('checks_unknown', 0):,.0f} unknown), "
                         f"{summary.get('cache_miss', 0):,.0f} cache misses, "
                         f"{summary.get('cache_negative_hit', 0):,.0f} negative-cache hits (0 expected: no "
                         "token repeats); wrk: " + f"{result.requests:,} requests, {result.non_2xx:,} non-2xx "
                         "(401 expected)")
        if sent < a.memory_tokens:
            mem.notes.append(f"the {seconds:.0f} s bound stopped the flood at {sent:,} of {a.memory_tokens:,} tokens")
        say(f"  RSS after {after / 1024:.1f} MiB ({(after - before) / 1024:+.1f} MiB) for {sent:,} tokens")
        return mem


def _children_cpu() -> float:
    """CPU seconds of this process's reaped children (wrk, once it has exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _new_cache(settings: Settings) -> SessionCache:
    c = settings.cache
    return SessionCache(max_entries=c.max_entries, ttl=c.ttl, negative_max_entries=c.negative_max_entries,
                        negative_ttl=c.negative_ttl, degraded_ttl=c.degraded_ttl, stale_if_error=c.stale_if_error,
                        clock=time.time)


def negative_cache_footprint(settings: Settings) -> tuple[int, int]:
    """(entries, KiB) of the gateway's negative cache at its cap in steady state, measured with tracemalloc.

    Filled to the cap, then pushed through twice as many more distinct hashes: hash tables that churn
    (inserting new keys while old ones are evicted) settle at a larger table than a single fill leaves.
    """
    entries = settings.cache.negative_max_entries
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        cache = _new_cache(settings)
        # put_bad(hash) in older gateway.cache code, put_bad(hash, now) in newer
        takes_now = "now" in inspect.signature(cache.put_bad).parameters
        now = time.time()
        for _ in range(3 * entries):
            if takes_now:
                cache.put_bad(hash_token(mint_token()), now)  # type: ignore[call-arg, unused-ignore]
            else:
                cache.put_bad(hash_token(mint_token()))  # type: ignore[call-arg, unused-ignore]
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    del cache
    return entries, used // 1024


def positive_cache_footprint(settings: Settings) -> tuple[int, int]:
    """(entries, KiB) of the positive cache filled to its cap with sessions shaped like the seeded ones."""
    entries = settings.cache.max_entries
    now = time.time()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        cache = _new_cache(settings)
        for i in range(1, entries + 1):
            token_hash = hash_token(mint_token())
            user = User(id=i, upstream="bench", subject=f"subject-{i}", email=f"user{i}@bench.invalid",
                        name=f"Bench User {i}", username=f"user{i}", groups=(), roles=("user",), created_at=now,
                        updated_at=now, last_login_at=now)
            session = SessionRecord(token_hash=token_hash, user_id=i, kind="browser", created_at=now,
                                    expires_at=now + database.SESSION_LIFETIME, idle_timeout=database.IDLE_TIMEOUT,
                                    last_seen_at=now, idle_expires_at=now + database.IDLE_TIMEOUT, revoked_at=None,
                                    client_addr="127.0.0.1", user_agent="bench")
            cache.put(token_hash, ActiveSession(session=session, user=user), now, cache.generation)
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    del cache
    return entries, used // 1024
