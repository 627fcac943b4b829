"""deploy/prometheus: the alert and recording rules pass ``promtool check rules``, their unit tests pass
``promtool test rules``, every alert is shown both firing and silent there, and every metric they read is one
the gateway exports. (tests/deploy/test_grafana.py evaluates them in a real Prometheus scraping a gateway.)"""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest

from tests.deploy.monitoring import RULE_TESTS, RULES, binary, exported_metric_names, metric_names_in

# Test dependency (the `test` extra); without it the module is skipped, and under GATEWAY_TEST_STRICT=1 the
# import error fails the run.
try:
    import yaml
except ImportError as exc:  # pragma: no cover - depends on the environment
    if os.environ.get("GATEWAY_TEST_STRICT") == "1":
        raise
    pytest.skip(f"{exc.name} is not installed (pip install pyyaml)", allow_module_level=True)


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("promtool"), *args], capture_output=True, text=True, timeout=60, check=False)


def test_promtool_checks_the_rules() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    assert RULE_TESTS, "no promtool unit tests in deploy/prometheus/tests"
    result = _promtool("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_silent() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        document = yaml.safe_load(path.read_text())
        assert [RULES.resolve()] == [(path.parent / f).resolve() for f in document["rule_files"]], path
        for case in document["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = {rule["alert"] for rule in _rules() if "alert" in rule}
    assert alerts - fires == set(), "alerts never shown firing"
    assert alerts - silent == set(), "alerts never shown staying silent"
    assert (fires | silent) - alerts == set(), "tests of alerts that do not exist"


def test_rules_read_only_metrics_the_gateway_exports() -> None:
    exported = exported_metric_names()
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    for rule in _rules():
        name = rule.get("alert") or rule["record"]
        assert metric_names_in(rule["expr"]) <= exported, f"{name}: {metric_names_in(rule['expr']) - exported}"
        used = {word for word in rule["expr"].replace("(", " ").split() if word.startswith("gateway:")}
        assert used <= recorded, f"{name} reads recording rules that do not exist: {used - recorded}"
        assert 'job="gateway"' in rule["expr"] or used, f"{name} must select job=\"gateway\""
    for rule in _rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
            assert rule["annotations"].keys() >= {"summary", "description"}, rule["alert"]
