"""deploy/k8s/monitoring: the ServiceMonitor and PodMonitor are valid Prometheus Operator resources that scrape
the base's gateway pods on their named port under job "gateway", and Prometheus may reach that port.

kubernetes-validate has no schemas for custom resources, so the monitors are checked against the
openAPIV3Schema of the operator's own CRDs, vendored in tests/deploy/crds (prometheus-operator v0.93.0,
descriptions removed), strictly: a field the CRD does not define fails, where a cluster would silently drop
it. The base's manifests are read as files, so no kubectl is needed.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.stack import REPO

# Test dependencies (the `test` extra); without them the module is skipped, and under GATEWAY_TEST_STRICT=1
# the import error fails the run.
try:
    import jsonschema
    import kubernetes_validate
    import yaml
except ImportError as exc:  # pragma: no cover - depends on the environment
    if os.environ.get("GATEWAY_TEST_STRICT") == "1":
        raise
    pytest.skip(f"{exc.name} is not installed (pip install pyyaml kubernetes-validate)", allow_module_level=True)

BASE = REPO / "deploy" / "k8s" / "base"
MONITORING = REPO / "deploy" / "k8s" / "monitoring"
CRDS = Path(__file__).resolve().parent / "crds"
JOB = "gateway"
"""The job deploy/prometheus/gateway-rules.yml and deploy/grafana/gateway.json select."""

Doc = dict[str, Any]


def _load(path: Path) -> Doc:
    return yaml.safe_load(path.read_text())  # type: ignore[no-any-return]


def _strict(schema: Any) -> Any:
    """The schema with every object closed to fields it does not define (unless it preserves unknown ones)."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _strict(value) for key, value in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        closed["additionalProperties"] = False
    return closed


def _validator(plural: str) -> jsonschema.Draft7Validator:
    schema = json.loads((CRDS / f"monitoring.coreos.com_{plural}.v1.json").read_text())
    return jsonschema.Draft7Validator(_strict(schema))


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    assert not selector.get("matchExpressions"), "matchExpressions are not evaluated by these tests"
    return labels.items() >= selector.get("matchLabels", {}).items()


def _server_pod() -> Doc:
    return _load(BASE / "deployment.yaml")["spec"]["template"]  # type: ignore[no-any-return]


def _container_ports() -> dict[str, int]:
    (container,) = _server_pod()["spec"]["containers"]
    return {port["name"]: port["containerPort"] for port in container["ports"]}


MONITORS = [("servicemonitor.yaml", "ServiceMonitor", "servicemonitors", "endpoints"),
            ("podmonitor.yaml", "PodMonitor", "podmonitors", "podMetricsEndpoints")]


@pytest.mark.parametrize(("name", "kind", "plural", "endpoints"), MONITORS, ids=[m[0] for m in MONITORS])
def test_monitor_is_valid_against_the_operators_crd(name: str, kind: str, plural: str, endpoints: str) -> None:
    monitor = _load(MONITORING / name)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == kind
    validator = _validator(plural)
    problems = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(monitor)]
    assert problems == []
    # The strict schema does catch what a cluster would drop without a word.
    misspelt = copy.deepcopy(monitor)
    misspelt["spec"][endpoints][0]["pat"] = misspelt["spec"][endpoints][0].pop("path")
    assert not validator.is_valid(misspelt)


@pytest.mark.parametrize(("name", "kind", "plural", "endpoints"), MONITORS, ids=[m[0] for m in MONITORS])
def test_monitor_scrapes_metrics_under_job_gateway(name: str, kind: str, plural: str, endpoints: str) -> None:
    spec = _load(MONITORING / name)["spec"]
    assert [endpoint["path"] for endpoint in spec[endpoints]] == ["/metrics"]
    assert all(endpoint["scheme"] == "http" for endpoint in spec[endpoints])
    scraped = _load(BASE / "service.yaml")["metadata"] if kind == "ServiceMonitor" else _server_pod()["metadata"]
    assert scraped["labels"][spec["jobLabel"]] == JOB


def test_service_monitor_selects_the_gateway_service_and_its_named_port() -> None:
    spec = _load(MONITORING / "servicemonitor.yaml")["spec"]
    service = _load(BASE / "service.yaml")
    assert _selects(spec["selector"], service["metadata"]["labels"])
    assert "namespaceSelector" not in spec, "the Service is in the monitor's own namespace"
    ports = {port["name"]: port for port in service["spec"]["ports"]}
    for endpoint in spec["endpoints"]:
        target = ports[endpoint["port"]]["targetPort"]
        assert target in _container_ports(), f"the Service's port {endpoint['port']} reaches no container port"
    assert _selects({"matchLabels": service["spec"]["selector"]}, _server_pod()["metadata"]["labels"])


def test_pod_monitor_selects_the_server_pods_only() -> None:
    spec = _load(MONITORING / "podmonitor.yaml")["spec"]
    assert _selects(spec["selector"], _server_pod()["metadata"]["labels"])
    migration_pod = _load(BASE / "migration-job.yaml")["spec"]["template"]["metadata"]["labels"]
    assert not _selects(spec["selector"], migration_pod), "the migration Job serves no metrics"
    for endpoint in spec["podMetricsEndpoints"]:
        assert endpoint["port"] in _container_ports()


def test_network_policy_lets_prometheus_reach_the_metrics_port() -> None:
    policy = _load(MONITORING / "networkpolicy.yaml")
    kubernetes_validate.validate(policy, "1.30", strict=True)
    spec = policy["spec"]
    assert _selects(spec["podSelector"], _server_pod()["metadata"]["labels"])
    (rule,) = spec["ingress"]
    assert [port["port"] for port in rule["ports"]] == [_container_ports()["http"]]
    assert all(peer["podSelector"]["matchLabels"] for peer in rule["from"]), "only Prometheus, not every pod"
