"""The benchmark's results: what was measured, the ratios against same-run baselines, a table and Markdown."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

_LOOKUP_SHAPE = "`SELECT ... FROM sessions s JOIN users u ... WHERE s.token_hash = %s`"

HIT_RATIO_TARGET = 0.85
MISS_RATIO_TARGET = 0.6
P99_TARGET_MS = 10.0


@dataclass
class Cpu:
    """CPU seconds used during a measured window: the server under test, PostgreSQL, the load generator."""

    server: float = 0.0
    postgres: float = 0.0
    load: float = 0.0

    @property
    def total(self) -> float:
        """All three together."""
        return self.server + self.postgres + self.load


@dataclass
class Measurement:
    """One measured scenario: throughput (requests or lookups per second) and latency percentiles (ms)."""

    key: str
    label: str
    rps: float
    p50: float
    p90: float
    p99: float
    requests: int
    seconds: float
    non_2xx: int = 0
    errors: int = 0
    cpu: Cpu = field(default_factory=Cpu)
    notes: list[str] = field(default_factory=list)

    def us_per_request(self, seconds: float) -> float:
        """``seconds`` of CPU spread over the requests served, in microseconds."""
        return seconds / self.requests * 1e6 if self.requests else math.nan


@dataclass
class Memory:
    """Gateway RSS around a flood of distinct unknown tokens."""

    rss_before_kib: int
    rss_warm_kib: int
    rss_peak_kib: int
    rss_after_kib: int
    tokens_sent: int
    tokens_target: int
    seconds: float
    rps: float
    samples: list[tuple[float, int]]
    workers: int
    negative_cap_entries: int
    negative_cap_kib: int
    positive_cap_entries: int
    positive_cap_kib: int
    notes: list[str] = field(default_factory=list)

    @property
    def growth_kib(self) -> int:
        """RSS after minus RSS before."""
        return self.rss_after_kib - self.rss_before_kib

    @property
    def bound_kib(self) -> int:
        """The most the flood may add: every worker's negative cache full, plus warm-up."""
        return self.negative_cap_kib * self.workers + WARMUP_ALLOWANCE_KIB

    @property
    def cap_reached_at(self) -> float:
        """Seconds into the flood at which every worker's negative cache is full if no entry ever expires."""
        rate = self.tokens_sent / self.seconds if self.seconds else 0.0
        return self.negative_cap_entries * self.workers / rate if rate else math.inf

    def _rss_at(self, t: float) -> int:
        return next((kib for when, kib in self.samples if when >= t), self.rss_after_kib)

    @property
    def steady_at(self) -> float:
        """Seconds into the flood after which full caches stop growing: two turnovers past the point they
        fill, by when hash tables churned by evictions have made their last resize."""
        return 2 * self.cap_reached_at

    @property
    def plateau_observed(self) -> bool:
        """True when the flood ran on for a while (at least a fifth of it) after the caches reached steady state."""
        return self.steady_at <= 0.8 * self.seconds

    @property
    def late_growth_kib(self) -> int:
        """Growth from the caches' steady state (or the last fifth of the flood, if later) to the end."""
        return self.rss_after_kib - self._rss_at(max(self.steady_at, 0.0) if self.plateau_observed
                                                   else 0.8 * self.seconds)

    @property
    def projected_kib(self) -> int:
        """Growth with full caches: observed once they are full, else the second half's rate extended to
        the point they fill."""
        if self.cap_reached_at <= self.seconds:
            return self.growth_kib
        half = self.seconds / 2
        slope = (self.rss_after_kib - self._rss_at(half)) / half if half else 0.0
        return round(self.growth_kib + max(0.0, slope) * (self.cap_reached_at - self.seconds))

    @property
    def bounded(self) -> bool:
        """Growth (observed, or projected to full caches) within the caches' steady-state size plus warm-up,
        and flat after the caches' steady state when the flood lasted long enough to see it."""
        within = self.growth_kib <= self.bound_kib and self.projected_kib <= self.bound_kib
        if self.plateau_observed:
            return within and self.late_growth_kib <= LATE_GROWTH_ALLOWANCE_KIB
        return within

    def basis(self) -> str:
        """How :attr:`bounded` was judged, in words."""
        if self.plateau_observed:
            return (f"caches full after ~{self.cap_reached_at:.0f} s and steady after ~{self.steady_at:.0f} s of "
                    f"{self.seconds:.0f}; growth after that {self.late_growth_kib / 1024:+.1f} MiB (at most "
                    f"{LATE_GROWTH_ALLOWANCE_KIB // 1024} MiB allowed)")
        if self.cap_reached_at <= self.seconds:
            return (f"caches full after ~{self.cap_reached_at:.0f} s of {self.seconds:.0f}, but the flood ended before "
                    f"they could reach steady state (~{self.steady_at:.0f} s): judged on growth against the "
                    "steady-state size only")
        return (f"the caches were not full when the flood ended ({self.tokens_sent:,} tokens for "
                f"{self.negative_cap_entries * self.workers:,} entries); the second half's growth rate extended to "
                f"full caches gives {self.projected_kib / 1024:+.1f} MiB")


WARMUP_ALLOWANCE_KIB = 16 * 1024
"""RSS a fresh process may gain on its first requests whatever it caches (pool, buffers, code paths)."""

LATE_GROWTH_ALLOWANCE_KIB = 4 * 1024
"""Growth still allowed once the negative caches have reached their steady state."""


@dataclass
class Environment:
    """Where and how the run happened."""

    date: str
    host_cpus: str
    python: str
    uvloop: str
    aiohttp: str
    postgres: str
    wrk: str
    commit: str
    workers: int
    connections: int
    threads: int
    duration: float
    warmup: float
    sessions: int
    pool_max: int
    quick: bool
    seed_seconds: float
    load_average: str
    rounds: int


@dataclass
class Results:
    """Everything one run produced."""

    env: Environment
    runs: dict[str, Measurement]
    memory: Memory | None
    checks: list[str] = field(default_factory=list)
    """Verification notes (cache hit/miss counts from /metrics, write-backs, wraps)."""


@dataclass
class Ratio:
    """A comparison: ``value`` against ``target`` (``higher`` is better or not); PASS/MISS/INFO."""

    label: str
    value: float
    shown: str
    target: str
    verdict: str
    basis: str


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _ratio(a: Measurement | None, b: Measurement | None) -> float:
    if a is None or b is None or b.rps <= 0:
        return math.nan
    return a.rps / b.rps


def ratios(results: Results) -> list[Ratio]:
    """The targets (PASS/MISS) then informational comparisons (INFO)."""
    r = results.runs
    out: list[Ratio] = []
    hit, bare, miss, loop = r.get("hit"), r.get("bare"), r.get("miss"), r.get("loop")
    value = _ratio(hit, bare)
    out.append(Ratio("cache hit / bare aiohttp (req/s)", value, f"{value:.3f}", f">= {HIT_RATIO_TARGET}",
                     _verdict(value >= HIT_RATIO_TARGET), "b / a"))
    value = _ratio(miss, loop)
    out.append(Ratio("cache miss / raw aiopg lookup loop", value, f"{value:.3f}", f">= {MISS_RATIO_TARGET}",
                     _verdict(value >= MISS_RATIO_TARGET), "c / d"))
    for key, name in (("hit", "cache hit"), ("miss", "cache miss")):
        m = r.get(key)
        p99 = m.p99 if m else math.nan
        # Little's law for a closed loop: mean latency = connections / throughput
        floor = results.env.connections / m.rps * 1000 if m and m.rps else math.nan
        out.append(Ratio(f"p99 {name} at {results.env.connections} connections, saturated (closed loop)", p99,
                         f"{p99:.2f} ms", f"<= {P99_TARGET_MS:g} ms", _verdict(p99 <= P99_TARGET_MS),
                         f"{key}; mean latency is {results.env.connections} connections / req/s = {floor:.1f} ms"))
        m = r.get(key + "_open")
        if m is not None:
            out.append(Ratio(f"p99 {name} at {results.env.connections} connections, half load (open loop; stricter "
                             "than the issue's wrk measure)", m.p99,
                             f"{m.p99:.2f} ms", f"<= {P99_TARGET_MS:g} ms", _verdict(m.p99 <= P99_TARGET_MS),
                             f"{key}_open: {m.rps:,.0f} req/s offered; timed from each request's scheduled send"))
    mem = results.memory
    if mem is not None:
        shown = (f"{mem.growth_kib / 1024:+.1f} MiB for {mem.tokens_sent:,} tokens "
                 f"(at full caches: {mem.projected_kib / 1024:+.1f} MiB)")
        out.append(Ratio("memory growth, distinct unknown tokens", mem.growth_kib, shown,
                         f"bounded (<= {mem.bound_kib / 1024:.0f} MiB)", _verdict(mem.bounded), "e: " + mem.basis()))
    rawhttp, touch = r.get("rawhttp"), r.get("miss_touch")
    value = _ratio(rawhttp, loop)
    out.append(Ratio("raw lookup behind aiohttp / raw loop", value, f"{value:.2f}", "-", "INFO",
                     "d' / d: what HTTP costs on its own"))
    value = _ratio(miss, rawhttp)
    out.append(Ratio("cache miss / raw lookup behind aiohttp", value, f"{value:.2f}", "-", "INFO",
                     "c / d': the gateway's own share on a miss"))
    value = _ratio(touch, miss)
    out.append(Ratio("miss + last-use write-back / cache miss", value, f"{value:.2f}", "-", "INFO",
                     "c' / c: first use in over a minute"))
    for label, a, b, basis in (("server CPU per cached check, gateway minus bare aiohttp", hit, bare, "b - a"),
                               ("server CPU per miss, gateway minus raw lookup behind aiohttp", miss, rawhttp,
                                "c - d'")):
        if a is not None and b is not None:
            delta = a.us_per_request(a.cpu.server) - b.us_per_request(b.cpu.server)
            out.append(Ratio(label, delta, f"{delta:.0f} us/req", "-", "INFO",
                             f"{basis}, server processes' CPU per request (table below)"))
    return out


def _thin(samples: list[tuple[float, int]], keep: int) -> list[tuple[float, int]]:
    """At most about ``keep`` evenly spaced samples, always with the last one."""
    step = max(1, math.ceil(len(samples) / keep))
    thinned = samples[::step]
    if thinned and thinned[-1] != samples[-1]:
        thinned.append(samples[-1])
    return thinned


def _fmt(v: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(v) else f"{v:,.{digits}f}"


def _rows(results: Results) -> list[list[str]]:
    rows = []
    for m in results.runs.values():
        rows.append([m.key, m.label, _fmt(m.rps, 0), _fmt(m.p50), _fmt(m.p90), _fmt(m.p99), f"{m.requests:,}",
                     str(m.non_2xx + m.errors)])
    return rows


_HEADERS = ["id", "scenario", "req/s", "p50 ms", "p90 ms", "p99 ms", "requests", "errors"]
_CPU_HEADERS = ["id", "server us/req", "postgres us/req", "load gen us/req", "total us/req", "cores busy"]


def _cpu_rows(results: Results) -> list[list[str]]:
    rows = []
    for m in results.runs.values():
        c = m.cpu
        wall = m.seconds or results.env.duration
        rows.append([m.key, _fmt(m.us_per_request(c.server), 0), _fmt(m.us_per_request(c.postgres), 0),
                     _fmt(m.us_per_request(c.load), 0) if c.load else "-", _fmt(m.us_per_request(c.total), 0),
                     _fmt(c.total / wall if wall else math.nan)])
    return rows


def _text_table(rows: list[list[str]], left: int) -> list[str]:
    """Aligned columns: the first ``left`` to the left, the numbers to the right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) if i < left else cell.rjust(w)
                      for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip() for row in rows]


def table(results: Results) -> str:
    """A plain-text summary for the terminal."""
    lines = _text_table([_HEADERS, *_rows(results)], 2)
    lines.append("")
    lines += _text_table([_CPU_HEADERS, *_cpu_rows(results)], 1)
    lines.append("")
    ratio_rows = [[x.label, x.shown, x.target, x.verdict] for x in ratios(results)]
    rw = [max(len(row[i]) for row in ratio_rows) for i in range(4)]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, rw, strict=True)) for row in ratio_rows]
    mem = results.memory
    if mem is not None:
        lines.append("")
        lines.append(f"memory: RSS {mem.rss_before_kib / 1024:.1f} MiB before, {mem.rss_warm_kib / 1024:.1f} warm, "
                     f"{mem.rss_peak_kib / 1024:.1f} peak, {mem.rss_after_kib / 1024:.1f} after "
                     f"{mem.tokens_sent:,} distinct tokens in {mem.seconds:.0f} s")
    for note in results.checks:
        lines.append("check: " + note)
    lines += _reading(results)
    return "\n".join(lines)


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return out


def _reading(results: Results) -> list[str]:
    """What the numbers of this run imply, derived from them (no opinions, just arithmetic)."""
    r, e = results.runs, results.env
    bare, hit, miss, loop, rawhttp = (r.get(k) for k in ("bare", "hit", "miss", "loop", "rawhttp"))
    out = ["", "How to read this run (derived from the numbers below):", ""]
    if bare and hit:
        b_cpu, h_cpu = bare.us_per_request(bare.cpu.server), hit.us_per_request(hit.cpu.server)
        allowed = b_cpu / HIT_RATIO_TARGET - b_cpu
        if h_cpu > b_cpu:
            share = (f"so the gateway adds {h_cpu - b_cpu:.0f} us; a ratio of {HIT_RATIO_TARGET} would leave it about "
                     f"{allowed:.0f} us.")
        else:
            share = (f"{b_cpu - h_cpu:.0f} us less: the fast lane answers a cached check without aiohttp's request "
                     "and response machinery, which the bare handler still pays for.")
        out.append(f"- Cache hit: the server spends {h_cpu:.0f} us of CPU per request against {b_cpu:.0f} us for the "
                   f"bare handler, {share}")
    if miss and loop and rawhttp:
        out.append(f"- Cache miss: the gateway reaches {_ratio(miss, rawhttp):.2f} of the same lookup behind a minimal "
                   f"aiohttp handler, and that handler reaches {_ratio(rawhttp, loop):.2f} of the loop without HTTP: "
                   f"the {MISS_RATIO_TARGET} target is "
                   + ("above" if _ratio(rawhttp, loop) < MISS_RATIO_TARGET else "within")
                   + " what HTTP plus the lookup in one process reaches on this machine. PostgreSQL spends "
                   f"{miss.us_per_request(miss.cpu.postgres):.0f} us of CPU per miss.")
    for m in (hit, miss):
        if m and m.rps:
            mean = e.connections / m.rps * 1000
            tail = m.p99 / mean
            out.append(f"- p99 of {m.key}: with {e.connections} connections always busy, mean latency is "
                       f"connections / throughput = {mean:.1f} ms (Little's law), and p99 was {tail:.2f} times that; "
                       f"with that tail, p99 <= {P99_TARGET_MS:g} ms needs at least "
                       f"{e.connections * tail / P99_TARGET_MS * 1000:,.0f} req/s (this run: {m.rps:,.0f}).")
    hit_open = r.get("hit_open")
    if hit_open and hit_open.rps and hit_open.p99 > P99_TARGET_MS:
        hit_busy = hit_open.cpu.total / (hit_open.seconds or e.duration)
        out.append(f"- Noise floor: cache hits, the cheapest request, offered at half load ({hit_busy:.2f} cores "
                   f"busy) still had p99 {hit_open.p99:.2f} ms: in this run the machine itself held no request to "
                   f"{P99_TARGET_MS:g} ms in the open loop.")
    miss_open = r.get("miss_open")
    if miss and miss_open and miss_open.rps:
        sparse, dense = miss_open.us_per_request(miss_open.cpu.server), miss.us_per_request(miss.cpu.server)
        out.append(f"- Open loop: at half of c's throughput the server spends {sparse:.0f} us of CPU per miss against "
                   f"{dense:.0f} us saturated (fewer misses share each lookup query and each wake-up), so \"half "
                   f"load\" kept {sparse * miss_open.rps / 1e6:.2f} of a core busy with the server alone.")
    busy = [m.cpu.total / (m.seconds or e.duration) for m in r.values() if m.seconds or e.duration]
    cpus = e.host_cpus.split(",")[0].replace("nproc ", "")
    if busy:
        out.append(f"- Cores busy stayed between {min(busy):.2f} and {max(busy):.2f} of {cpus}: no scenario saturated "
                   "the machine, so throughput is bounded by how fast processes wake each other (wrk, server, "
                   "PostgreSQL), which virtual machines make expensive. CPU per request (table below) is the steadier "
                   "measure of work.")
    return out


def markdown(results: Results) -> str:
    """``docs/benchmarks.md``."""
    e = results.env
    lines = [
        "# Benchmarks: the check path",
        "",
        "Written by `python -m bench` (`make bench`) from one real run"
        + (" in **--quick** mode (smoke test: small and short, numbers not meaningful)" if e.quick else "")
        + ". Re-run it to refresh this page; do not edit the numbers by hand.",
        "",
        "**Compare ratios, not absolute numbers.** Every ratio below divides two measurements taken in the same",
        "run on the same machine with the same load shape, so it survives a noisy or differently sized machine;",
        "absolute requests per second drift by tens of percent between runs on shared machines.",
        "",
        "## Results",
        "",
    ]
    lines += _md_table(["Comparison", "Measured", "Target", "Verdict", "Basis"],
                       [[x.label, x.shown, x.target, f"**{x.verdict}**" if x.verdict != "INFO" else x.verdict,
                         x.basis] for x in ratios(results)])
    lines += _reading(results)
    lines += ["", "## Absolute numbers", ""]
    lines += _md_table(_HEADERS, _rows(results))
    lines += ["", "CPU time per request during each measured window (from /proc: the server's processes, all of "
              "PostgreSQL's, and the load generator's own usage (wrk, or openloop for f); for d the loop process's "
              "own), and how many of the machine's "
              f"cores were busy with it. The machine has {e.host_cpus.split(',')[0]}: every scenario competes "
              "with wrk and PostgreSQL for them.", ""]
    lines += _md_table(_CPU_HEADERS, _cpu_rows(results))
    lines += ["", "Notes per scenario:", ""]
    for m in results.runs.values():
        for note in m.notes:
            lines.append(f"- **{m.key}**: {note}")
    if results.checks:
        lines += ["", "Checks made during the run:", ""]
        lines += [f"- {note}" for note in results.checks]
    mem = results.memory
    if mem is not None:
        lines += ["", "## Memory", "",
                  f"One gateway, {e.workers} worker(s), flooded for {mem.seconds:.0f} s with {mem.tokens_sent:,} "
                  f"requests, each with a distinct well-formed unknown token (target {mem.tokens_target:,}; the step "
                  f"is bounded in time, so at {mem.rps:,.0f} req/s it sent what it could). RSS is VmRSS summed over "
                  "the worker processes.", ""]
        lines += _md_table(["before (idle)", "warm (first samples)", "peak", "after", "growth",
                            "growth at full caches", "bound"],
                           [[f"{mem.rss_before_kib / 1024:.1f} MiB", f"{mem.rss_warm_kib / 1024:.1f} MiB",
                             f"{mem.rss_peak_kib / 1024:.1f} MiB", f"{mem.rss_after_kib / 1024:.1f} MiB",
                             f"{mem.growth_kib / 1024:+.1f} MiB",
                             f"{mem.projected_kib / 1024:+.1f} MiB" + ("" if mem.plateau_observed else " (projected)"),
                             f"{mem.bound_kib / 1024:.0f} MiB"]])
        shown_samples = _thin(mem.samples, 24)
        lines += ["", "RSS samples (s, MiB): " + ", ".join(f"{t:.0f}: {kib / 1024:.1f}" for t, kib in shown_samples),
                  "",
                  f"The negative cache holds at most {mem.negative_cap_entries:,} entries per worker; full, it takes "
                  f"about {mem.negative_cap_kib / 1024:.1f} MiB in steady state (measured in-process with tracemalloc "
                  "on the current `gateway.cache` code: filled, then churned through twice as many more hashes, "
                  "since hash tables under churn settle at a larger size). \"Bounded\" means: RSS growth at most "
                  f"every worker's negative cache full plus {WARMUP_ALLOWANCE_KIB // 1024} MiB of warm-up (if the "
                  "flood ended before the caches filled, the second half's growth rate is extended to the point "
                  "where they would be); and if the flood outlasted the caches' steady state (two turnovers after "
                  f"filling), less than {LATE_GROWTH_ALLOWANCE_KIB // 1024} MiB of growth after it. Verdict basis: "
                  f"{mem.basis()}.",
                  "",
                  f"For scale: the positive cache full ({mem.positive_cap_entries:,} sessions like the seeded ones) "
                  f"takes about {mem.positive_cap_kib / 1024:.1f} MiB per worker (same measurement); the valid-token "
                  "miss runs above fill it at their miss rate and keep entries for the cache TTL plus "
                  "`cache.stale_if_error` (300 s).", ""]
        lines += [f"- {note}" for note in mem.notes]
    lines += [
        "",
        "## What was measured, and how",
        "",
        f"- Date (UTC): {e.date}; commit {e.commit}",
        f"- Machine: {e.host_cpus}; load average before the run: {e.load_average} (other work on the machine "
        "adds noise)",
        f"- Python {e.python}; uvloop: {e.uvloop}; aiohttp {e.aiohttp}; {e.postgres}; {e.wrk}",
        f"- Gateway workers: {e.workers} (`gateway serve --workers {e.workers}`); every server in this run used the "
        "same worker count, event loop and aiohttp runner options (`gateway.serving.server.runner_options`, default "
        "settings).",
        f"- Load: `wrk -t{e.threads} -c{e.connections} -d{e.duration:g}s --latency`, after a {e.warmup:g} s "
        "warm-up run on the same server process whose numbers are discarded. wrk shares the machine with the "
        f"servers and PostgreSQL. Rounds: {e.rounds} (scenarios a to d' in the order a, b, d, c, d', c' so each "
        "subject runs right after its baseline; with several rounds each scenario shows its median round).",
        f"- Database: a throwaway PostgreSQL cluster (fsync off), schema from `gateway migrate`, {e.sessions:,} "
        f"users with one valid browser session each, loaded with COPY in {e.seed_seconds:.1f} s (tokens from "
        "`gateway.tokens.mint_token()`, only SHA-256 hashes stored). Gateway pool: "
        f"`database.pool_max` = {e.pool_max}.",
        "- Gateway environment: `GATEWAY_DATABASE_URL`, `GATEWAY_LISTEN`, `GATEWAY_LOG_LEVEL=warning`, "
        "`GATEWAY_LOG_FORMAT=json`, `GATEWAY_COOKIE_SECURE=false`; everything else default (cache TTL 5 s, "
        "negative TTL 2 s, last-use grain 60 s). Each gateway scenario gets a fresh gateway process, started "
        "and ready (`/readyz` 200, revocation feed live on every worker) before the warm-up.",
        "",
        "Scenarios:",
        "",
        "- **a. bare aiohttp**: `bench/servers.py bare`, one GET handler answering a webhook-sized JSON 200, no "
        "middleware. Requests carry the same `Cookie: gw_session=<token>` header as b.",
        "- **b. gateway cache hit**: `GET /auth/webhook`, every request the same valid token cookie.",
        "- **c. gateway cache miss**: every request a different valid token (`distinct_tokens.lua` walks the "
        "seeded tokens; warm-up and measured run use disjoint ranges, threads take disjoint stripes), so every "
        "check misses the in-process cache and runs the store's lookup. Sessions were marked used just before, "
        "so no last-use write-back happens (verified below).",
        "- **c'. cache miss + write-back** (informational): as c, but every session was last used an hour ago, "
        "so each check also writes the use back (one UPDATE, off the request path).",
        f"- **d. raw aiopg lookup loop**: no HTTP. A point lookup of the columns the store reads "
        f"({_LOOKUP_SHAPE}) on an aiopg pool of `pool_max` = {e.pool_max}, {e.connections} coroutines back to back "
        "(split over the workers, one pool each), same warm-up and duration; lookups/s and per-lookup latency "
        "(pool wait included).",
        "- **d'. raw lookup behind aiohttp** (informational): the same lookup in a minimal aiohttp handler "
        "(cookie, SHA-256, query, JSON), driven by wrk like c, to show HTTP's share.",
        "- **e. memory**: a fresh gateway; RSS before, then `unknown_tokens.lua` sends requests each with a new "
        "`gwt_` + 43 URL-safe characters token; every one misses, is looked up, and lands in the negative "
        "cache. RSS sampled throughout; tokens sent read from `gateway_checks_total`.",
        "",
        "- **f. open loop at half load** (`hit_open`, `miss_open`): a fresh gateway, then `bench/openloop.c` "
        "(built with gcc on the spot) offers half of c's measured cache-miss throughput, for hits and misses "
        "alike, at a constant rate on the same number of connections (distinct tokens for the miss, as c). "
        "Three runs, each on a fresh gateway; the table shows the one with the median p99. "
        "Latency runs from each request's "
        "*scheduled* send time, so a stall in the server counts in full for every request that queued behind "
        "it (no coordinated omission, unlike wrk's closed loop). A latency target is about a service under a "
        "load it sustains; saturated closed-loop latency is, by Little's law, connections / throughput.",
        "",
        "Latency percentiles for the other HTTP scenarios are wrk's (per request, client side); for d they are "
        "per lookup.",
        "",
    ]
    return "\n".join(lines)
