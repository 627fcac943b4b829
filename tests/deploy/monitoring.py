"""Helpers for the monitoring tests: Debian's ``prometheus`` / ``promtool``, a throwaway Prometheus, metric names.

Without the binaries (``apt-get install prometheus``) the tests skip, or fail under ``GATEWAY_TEST_STRICT=1``.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.metrics import Metrics
from tests.deploy.stack import REPO, http, port_open, running, unavailable, wait_until
from tests.helpers import free_port

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "gateway-rules.yml"
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
DASHBOARD = REPO / "deploy" / "grafana" / "gateway.json"

_METRIC_RE = re.compile(r"(?<![A-Za-z0-9_:\"])((?:gateway|process)_[a-z_]+)\b")


def binary(name: str) -> str:
    """The path of ``name`` (``prometheus``, ``promtool``): skipped, or failed under strict mode, if missing."""
    found = shutil.which(name) or next((c for c in (f"/usr/bin/{name}", f"/usr/local/bin/{name}")
                                        if Path(c).is_file()), None)
    if found is None:
        unavailable(f"{name} not found (apt-get install prometheus)")
    return found


def exported_metric_names() -> set[str]:
    """Every sample name a gateway process exports once each labelled family has a child (no process
    metrics without Linux's /proc), plus ``gateway_workers`` (``--workers N``) and Prometheus's ``up``."""
    metrics = Metrics()
    metrics.count_check("check", "allow", 0.001)
    metrics.db_errors.labels("lookup_session").inc()
    metrics.logins.labels("dev", "success").inc()
    names = {line.split("{")[0].split()[0] for line in metrics.render_own().decode().splitlines()
             if line and not line.startswith("#")}
    return names | {"gateway_workers", "up"}


def metric_names_in(expr: str) -> set[str]:
    """The gateway and process metric names a PromQL expression selects (not label values, not rule names)."""
    return set(_METRIC_RE.findall(expr))


@dataclass
class Prometheus:
    """A running Prometheus and its HTTP API."""

    url: str
    log: Path

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>?params``; its ``data`` (fails the test unless the status is success)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        reply = http("GET", f"{self.url}/api/v1/{path}{query}")
        assert reply.status == 200, f"{path} {params}: {reply.status} {reply.text}"
        body = reply.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The series an instant query returns now (fails the test on a bad expression)."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return data["result"]  # type: ignore[no-any-return]


@contextlib.contextmanager
def start_prometheus(directory: Path, targets: Sequence[str], *, job: str = "gateway",
                     rule_files: Sequence[Path] = ()) -> Iterator[Prometheus]:
    """Run ``prometheus`` scraping ``targets`` (host:port) every second under ``job``, evaluating
    ``rule_files`` every second, with its config and data in ``directory``; stop it when the block ends."""
    executable = binary("prometheus")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = directory / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}],
    }))
    log = directory / "prometheus.log"
    args = [executable, f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}"]
    with running(args, log) as proc:
        wait_until(lambda: port_open(port), "prometheus", proc=proc, log=log)
        prometheus = Prometheus(f"http://127.0.0.1:{port}", log)

        first_scrape = urllib.parse.urlencode({"query": f'up{{job="{job}"}} == 1'})

        def scraped() -> bool:
            try:  # the API answers 503 until the database is open
                reply = http("GET", f"{prometheus.url}/api/v1/query?{first_scrape}")
            except OSError:
                return False
            return reply.status == 200 and bool(reply.json()["data"]["result"])

        wait_until(scraped, "prometheus's first scrape", proc=proc, log=log)
        yield prometheus
