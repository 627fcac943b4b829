"""Drive ``wrk`` and parse its report; the Lua scripts that give each request its own token.

``distinct_tokens.lua`` reads the seeded tokens once per wrk thread (``init``) and walks them so that no
token repeats within a run: thread ``t`` of ``T`` sends tokens ``offset + t``, ``offset + t + T``, ...
(wrapping round only if the run outlasts the file, which the report flags). ``unknown_tokens.lua`` makes
a fresh well-formed token per request (``gwt_`` + 43 URL-safe characters: a per-thread random stem and a
base-64 counter), which no database row matches.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import ProcessSet

DISTINCT_TOKENS_LUA = r"""
-- args: <tokens file> <offset> <threads> <cookie name>
local next_tid = 0
function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
end

function init(args)
  tokens = {}
  for line in io.lines(args[1]) do
    if #line > 0 then tokens[#tokens + 1] = line end
  end
  count = #tokens
  position = tonumber(args[2]) + tid
  stride = tonumber(args[3])
  prefix = args[4] .. "="
end

function request()
  local token = tokens[position % count + 1]
  position = position + stride
  return wrk.format(nil, nil, {["Cookie"] = prefix .. token})
end
"""

UNKNOWN_TOKENS_LUA = r"""
-- args: <seed> <cookie name>
local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local next_tid = 0
function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
end

local function char(i)
  return alphabet:sub(i + 1, i + 1)
end

function init(args)
  math.randomseed(tonumber(args[1]) + tid * 7919)
  -- 28-character stem: the thread id, then random characters; then a 15-character counter
  local stem = { char(tid % 64) }
  for i = 2, 28 do stem[i] = char(math.random(0, 63)) end
  stem = "gwt_" .. table.concat(stem)
  prefix = args[2] .. "=" .. stem
  counter = 0
end

function request()
  counter = counter + 1
  local n = counter
  local digits = {}
  for i = 1, 15 do
    digits[i] = char(n % 64)
    n = math.floor(n / 64)
  end
  return wrk.format(nil, nil, {["Cookie"] = prefix .. table.concat(digits)})
end
"""

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_PERCENTILE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_REQUESTS_RE = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.MULTILINE)
_RPS_RE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_NON2XX_RE = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_RE = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


@dataclass
class WrkResult:
    """One wrk run: throughput, latency percentiles (ms), failures, and the raw report."""

    requests: int
    seconds: float
    rps: float
    percentiles_ms: dict[float, float] = field(default_factory=dict)
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    raw: str = ""

    def p(self, percentile: float) -> float:
        """The latency at ``percentile`` (50, 75, 90, 99) in milliseconds, NaN when missing."""
        return self.percentiles_ms.get(percentile, float("nan"))

    @property
    def errors(self) -> int:
        """Socket errors of any kind."""
        return sum(self.socket_errors.values())


def parse(report: str) -> WrkResult:
    """Parse wrk's text report (run with ``--latency``); raise ValueError if it is not one."""
    requests = _REQUESTS_RE.search(report)
    rps = _RPS_RE.search(report)
    if requests is None or rps is None:
        raise ValueError(f"not a wrk report:\n{report}")
    result = WrkResult(requests=int(requests.group(1)),
                       seconds=float(requests.group(2)) * _UNITS[requests.group(3)] / 1000.0,
                       rps=float(rps.group(1)), raw=report)
    for pct, value, unit in _PERCENTILE_RE.findall(report):
        result.percentiles_ms[float(pct)] = float(value) * _UNITS[unit]
    non2xx = _NON2XX_RE.search(report)
    if non2xx:
        result.non_2xx = int(non2xx.group(1))
    sock = _SOCKET_RE.search(report)
    if sock:
        result.socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()),
                                        strict=True))
    return result


@dataclass(frozen=True)
class WrkParams:
    """Load shape shared by every wrk run of one benchmark."""

    connections: int
    threads: int
    timeout: float = 5.0

    def describe(self) -> str:
        """The wrk flags, for the report."""
        return f"wrk -t{self.threads} -c{self.connections} --latency --timeout {self.timeout:g}s"


def run(procs: ProcessSet, name: str, url: str, params: WrkParams, duration: float, *,
        headers: dict[str, str] | None = None, script: Path | None = None,
        script_args: list[str] | None = None) -> WrkResult:
    """Run wrk for ``duration`` seconds against ``url`` and parse its report."""
    args = ["wrk", f"-t{params.threads}", f"-c{params.connections}", f"-d{max(1, round(duration))}s",
            "--latency", f"--timeout={params.timeout:g}s"]
    for key, value in (headers or {}).items():
        args += ["-H", f"{key}: {value}"]
    if script is not None:
        args += ["-s", str(script)]
    args.append(url)
    if script_args:
        args += ["--", *script_args]
    proc = procs.start(name, args, capture_stdout=True)
    try:
        out, _ = proc.communicate(timeout=duration + 60)
    except subprocess.TimeoutExpired:
        procs.stop(proc)
        raise RuntimeError(f"wrk ({name}) did not finish") from None
    procs.stop(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk ({name}) failed ({proc.returncode}): {procs.log_tail(name)}")
    return parse(out.decode(errors="replace"))


def write_scripts(directory: Path) -> tuple[Path, Path]:
    """Write the two Lua scripts into ``directory``; return (distinct_tokens, unknown_tokens)."""
    distinct = directory / "distinct_tokens.lua"
    distinct.write_text(DISTINCT_TOKENS_LUA, encoding="utf-8")
    unknown = directory / "unknown_tokens.lua"
    unknown.write_text(UNKNOWN_TOKENS_LUA, encoding="utf-8")
    return distinct, unknown
