"""deploy/prometheus: the alert and recording rules pass ``promtool check rules``, their unit tests pass
``promtool test rules``, every alert is shown both firing and silent there, and every metric they read is one
the gateway exports. (tests/deploy/test_grafana.py evaluates them in a real Prometheus scraping a gateway.)"""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any

import pytest

from tests.deploy.monitoring import PROMETHEUS_DIR, RULE_TESTS, RULES, binary, exported_metric_names, metric_names_in
from tests.deploy.stack import REPO

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


def test_promtool_checks_the_example_configuration_and_the_rules_it_loads() -> None:
    config = PROMETHEUS_DIR / "prometheus.yml"
    result = _promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert [PROMETHEUS_DIR / f for f in yaml.safe_load(config.read_text())["rule_files"]] == [RULES]
    (job,) = yaml.safe_load(config.read_text())["scrape_configs"]
    assert job["job_name"] == "gateway"


def test_readmes_monitoring_commands_run() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("\n### Monitoring\n"):]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match
    commands = [line.split("  #")[0].split() for line in match.group(1).splitlines() if line.startswith("promtool")]
    assert len(commands) == 2
    for command in commands:
        result = subprocess.run([binary("promtool"), *command[1:]], cwd=REPO, capture_output=True, text=True,
                                timeout=60, check=False)
        assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}{result.stderr}"


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
