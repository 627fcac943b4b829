"""Typos never switch security off: every unknown key or GATEWAY_* variable is a problem naming the one meant.

Covers every settings table, every upstream type in the registry, the environment, the example configs,
and ``gateway check-config`` end to end. Also pins that a provider's allowed keys are exactly the keys it
reads (they come from its config dataclass), so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, cast

import pytest

from gateway.settings import FIELD_PATHS, SessionSettings, load_settings
from upstreams import PROVIDER_TYPES, config_problems, provider_class

ROOT = Path(__file__).resolve().parent.parent

MINIMAL_UPSTREAMS: dict[str, dict[str, Any]] = {
    "oidc": {"issuer": "https://idp.example.com", "client_id": "gateway"},
    "github": {"client_id": "Iv1.0123", "client_secret": "s"},
    "vouch": {"url": "https://vouch.example.com"},
    "dev": {},
    "auth0": {"domain": "acme.eu.auth0.com", "client_id": "gateway"},
    "authing": {"app": "acme", "client_id": "gateway"},
    "cognito": {"region": "eu-west-1", "user_pool_id": "eu-west-1_AbC123", "client_id": "gateway"},
    "google": {"client_id": "gateway"},
    "keycloak": {"base_url": "https://sso.example.com", "realm": "staff", "client_id": "gateway"},
}
"""A valid table (``type`` aside) for every registered upstream type."""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def problems_for(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    return load_settings(write(tmp_path, text), env=env or {})[1]


def test_every_registered_upstream_type_is_covered() -> None:
    assert set(MINIMAL_UPSTREAMS) == set(PROVIDER_TYPES), "add a minimal table for the new type"
    for type_name, table in MINIMAL_UPSTREAMS.items():
        assert config_problems("x", {"type": type_name, **table}) == [], type_name


# ---- one misspelt key per table kind -----------------------------------------------------------------

@pytest.mark.parametrize(("toml", "expected"), [
    pytest.param('listn = "0.0.0.0:4180"', "config file: unknown setting 'listn'; did you mean 'listen'?",
                 id="top-level"),
    pytest.param('[cokie]\nname = "x"', "config file: unknown setting 'cokie'; did you mean 'cookie'?",
                 id="section-name"),
    pytest.param("[cookie]\nsecrue = true",
                 "config file: unknown setting 'cookie.secrue'; did you mean 'cookie.secure'?", id="cookie"),
    pytest.param('[session]\nlifetme = "1d"',
                 "config file: unknown setting 'session.lifetme'; did you mean 'session.lifetime'?", id="session"),
    pytest.param('[cache]\nnegative_tll = "1s"',
                 "config file: unknown setting 'cache.negative_tll'; did you mean 'cache.negative_ttl'?",
                 id="cache"),
    pytest.param("[database]\npool_mx = 5",
                 "config file: unknown setting 'database.pool_mx'; did you mean 'database.pool_max'?",
                 id="database"),
    pytest.param('[hasura]\nanonymous_rol = "anon"',
                 "config file: unknown setting 'hasura.anonymous_rol'; did you mean 'hasura.anonymous_role'?",
                 id="hasura"),
    pytest.param('[check]\njwt_upstream = ["corp"]',
                 "config file: unknown setting 'check.jwt_upstream'; did you mean 'check.jwt_upstreams'?",
                 id="check"),
    pytest.param('[login]\nredirect_host = [".example.com"]',
                 "config file: unknown setting 'login.redirect_host'; did you mean 'login.redirect_hosts'?",
                 id="login"),
    pytest.param('[enrolment]\ndomain = ["example.com"]',
                 "config file: unknown setting 'enrolment.domain'; did you mean 'enrolment.domains'?",
                 id="enrolment"),
    pytest.param('[access]\ndefualt = "deny"',
                 "config file: unknown setting 'access.defualt'; did you mean 'access.default'?", id="access"),
    pytest.param("[roles]\npassthrough_group = false",
                 "config file: unknown setting 'roles.passthrough_group'; did you mean 'roles.passthrough_groups'?",
                 id="roles"),
    pytest.param("[session]\nzzz = 1",
                 "config file: unknown setting 'session.zzz' ([session] holds "
                 f"{', '.join(sorted(f.name for f in dataclasses.fields(SessionSettings)))})",
                 id="nothing-close-lists-the-section"),
    pytest.param('cookie = "gw"', "config file: 'cookie' is a section: write its keys under [cookie]",
                 id="section-given-a-value"),
    pytest.param('[upstreams.corp]\ntype = "google"\nclient_id = "x"\nhosted_domian = "corp.com"',
                 "upstreams.corp.hosted_domian: unknown setting; did you mean 'hosted_domain'?",
                 id="upstream-google"),
])
def test_a_misspelt_key_is_reported_with_a_suggestion(tmp_path: Path, toml: str, expected: str) -> None:
    assert problems_for(tmp_path, toml) == [expected]


@pytest.mark.parametrize("path", [pytest.param(p, id=".".join(p)) for p in FIELD_PATHS])
def test_every_setting_misspelt_names_the_setting(tmp_path: Path, path: tuple[str, ...]) -> None:
    section = f"[{'.'.join(path[:-1])}]\n" if len(path) > 1 else ""
    problems = problems_for(tmp_path, f"{section}{path[-1]}x = 1\n")
    assert problems == [f"config file: unknown setting {'.'.join(path) + 'x'!r}; did you mean {'.'.join(path)!r}?"]


@pytest.mark.parametrize(("type_name", "key"), [
    pytest.param(t, k, id=f"{t}-{k}") for t in sorted(PROVIDER_TYPES)
    for k in sorted(provider_class(t).config_keys() - {"type"})
])
def test_every_upstream_key_misspelt_names_the_key(type_name: str, key: str) -> None:
    """Every key of every registered type and preset, misspelt, is reported and suggested back."""
    table = {"type": type_name, **MINIMAL_UPSTREAMS[type_name], f"{key}x": "typo"}
    assert config_problems("corp", table) == [f"upstreams.corp.{key}x: unknown setting; did you mean {key!r}?"]


def test_an_upstream_key_with_nothing_close_lists_the_keys() -> None:
    [problem] = config_problems("sso", {"type": "vouch", "url": "https://vouch.example.com", "zzz": 1})
    assert problem == ("upstreams.sso.zzz: unknown setting (expected one of allow_insecure_http, "
                       "claims_headers_prefix, cookie_name, display_name, groups_claim, timeout, type, url)")


# ---- every problem at once ---------------------------------------------------------------------------

def test_every_typo_in_one_file_and_environment_is_reported_at_once(tmp_path: Path) -> None:
    toml = """
public_url = "https://auth.example.com"
trusted_proxy = ["10.0.0.0/8"]

[cookie]
domian = ".example.com"

[enrolment]
domain = ["example.com"]

[upstreams.corp]
type = "google"
client_id = "gateway"
hosted_domian = "example.com"

[upstreams.gh]
type = "github"
client_id = "Iv1.0123"
org = ["acme"]
"""
    env = {"GATEWAY_UPSTREAMS_GH_CLIENT_SECRET": "s", "GATEWAY_LOGIN_REDIRECT_HOST": ".example.com",
           "GATEWAY_UPSTREAMS_CORP_CLIENT_SECERT": "s"}
    problems = problems_for(tmp_path, toml, env)
    assert sorted(problems) == sorted([
        "config file: unknown setting 'trusted_proxy'; did you mean 'trusted_proxies'?",
        "config file: unknown setting 'cookie.domian'; did you mean 'cookie.domain'?",
        "config file: unknown setting 'enrolment.domain'; did you mean 'enrolment.domains'?",
        "GATEWAY_LOGIN_REDIRECT_HOST: no setting reads this environment variable; "
        "did you mean 'GATEWAY_LOGIN_REDIRECT_HOSTS'?",
        "GATEWAY_UPSTREAMS_CORP_CLIENT_SECERT: upstreams.corp (type google) has no setting 'client_secert'; "
        "did you mean 'GATEWAY_UPSTREAMS_CORP_CLIENT_SECRET'?",
        "upstreams.corp.hosted_domian: unknown setting; did you mean 'hosted_domain'?",
        "upstreams.gh.org: unknown setting; did you mean 'orgs'?",
    ])


# ---- the environment ---------------------------------------------------------------------------------

UPSTREAMS_TOML = """
[upstreams.corp]
type = "keycloak"
base_url = "https://sso.example.com"
realm = "corp"
client_id = "gateway"

[upstreams.corp-eu]
type = "github"
client_id = "Iv1.0123"
"""


@pytest.mark.parametrize(("env", "expected"), [
    pytest.param({"GATEWAY_COOKIE_NAM": "x"},
                 "GATEWAY_COOKIE_NAM: no setting reads this environment variable; did you mean 'GATEWAY_COOKIE_NAME'?",
                 id="setting"),
    pytest.param({"GATEWAY_DATABASE_URL_FLE": "/run/secrets/db"},
                 "GATEWAY_DATABASE_URL_FLE: no setting reads this environment variable; "
                 "did you mean 'GATEWAY_DATABASE_URL_FILE'?", id="file-variant"),
    pytest.param({"GATEWAY_FROBNICATE": "1"},
                 "GATEWAY_FROBNICATE: no setting reads this environment variable (a setting's variable is "
                 "GATEWAY_ and its dotted name in capitals: GATEWAY_COOKIE_NAME)", id="nothing-close"),
    pytest.param({"GATEWAY_UPSTREAMS_CORP_CLIENT_SECRET_FLE": "/run/secrets/corp"},
                 "GATEWAY_UPSTREAMS_CORP_CLIENT_SECRET_FLE: upstreams.corp (type keycloak) has no setting "
                 "'client_secret_fle'; did you mean 'GATEWAY_UPSTREAMS_CORP_CLIENT_SECRET_FILE'?",
                 id="upstream-key"),
    pytest.param({"GATEWAY_UPSTREAMS_COPR_CLIENT_SECRET": "s"},
                 "GATEWAY_UPSTREAMS_COPR_CLIENT_SECRET: names no [upstreams.<name>] table of the config file "
                 "(configured: corp, corp-eu); did you mean 'GATEWAY_UPSTREAMS_CORP_CLIENT_SECRET'?",
                 id="upstream-name"),
    pytest.param({"GATEWAY_UPSTREAMS_CORP_EU_CLIENT_SECRET": "s", "GATEWAY_UPSTREAMS_CORP_EU_ORG": "acme"},
                 "GATEWAY_UPSTREAMS_CORP_EU_ORG: upstreams.corp-eu (type github) has no setting 'org'; "
                 "did you mean 'GATEWAY_UPSTREAMS_CORP_EU_ORGS'?", id="longest-upstream-name-wins"),
    pytest.param({"GATEWAY_UPSTREAMS_CORP_EU_CLIENT_SECRET": "a", "GATEWAY_UPSTREAMS_CORP_EU_CLIENT_SECRET_FILE": "/x"},
                 "GATEWAY_UPSTREAMS_CORP_EU_CLIENT_SECRET and GATEWAY_UPSTREAMS_CORP_EU_CLIENT_SECRET_FILE are "
                 "both set: set only one", id="upstream-both-set"),
])
def test_an_unknown_environment_variable_is_reported(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    env = {"GATEWAY_UPSTREAMS_CORP_EU_CLIENT_SECRET": "s", **env}
    problems = problems_for(tmp_path, UPSTREAMS_TOML, env)
    assert expected in problems
    assert len(problems) == 1, problems


def test_upstream_variables_without_upstreams_in_the_file_are_reported() -> None:
    _, problems = load_settings(env={"GATEWAY_UPSTREAMS_CORP_CLIENT_SECRET": "s"})
    assert problems == ["GATEWAY_UPSTREAMS_CORP_CLIENT_SECRET: names no [upstreams.<name>] table of the config file"]


def test_upstream_variables_apply_to_the_longest_matching_name(tmp_path: Path) -> None:
    secret = tmp_path / "corp-eu-secret"
    secret.write_text("from-the-file\n")
    settings, problems = load_settings(write(tmp_path, UPSTREAMS_TOML), env={
        "GATEWAY_UPSTREAMS_CORP_CLIENT_SECRET": "corp", "GATEWAY_UPSTREAMS_CORP_EU_CLIENT_SECRET_FILE": str(secret)})
    assert problems == []
    assert settings.upstreams["corp"]["client_secret"] == "corp"
    assert settings.upstreams["corp-eu"]["client_secret"] == "from-the-file"


@pytest.mark.parametrize("var", [
    pytest.param("GATEWAY_TEST_STRICT", id="test-suite-strict"),
    pytest.param("GATEWAY_TEST_SKIP_INSTALL", id="test-suite-skip-install"),
    pytest.param("GATEWAY_UPDATE_SCREENSHOTS", id="test-suite-screenshots"),
    pytest.param("GATEWAY_SECURITY_FULL", id="test-suite-security-full"),
    pytest.param("GATEWAY_SERVICE_HOST", id="k8s-service-host"),
    pytest.param("GATEWAY_SERVICE_PORT", id="k8s-service-port"),
    pytest.param("GATEWAY_SERVICE_PORT_HTTP", id="k8s-named-service-port"),
    pytest.param("GATEWAY_PORT", id="k8s-port"),
    pytest.param("GATEWAY_PORT_4180_TCP", id="k8s-port-proto"),
    pytest.param("GATEWAY_PORT_4180_TCP_ADDR", id="k8s-port-addr"),
])
def test_variables_that_are_not_settings_are_not_reported(var: str) -> None:
    assert load_settings(env={var: "1"})[1] == []


def test_every_variable_the_test_suite_reads_is_excused_or_a_setting() -> None:
    """CI exports these and tests pass os.environ on, so an unexcused one would fail every gateway started."""
    sources = [*ROOT.glob("tests/**/*.py"), *ROOT.glob("bench/*.py")]
    read = {m for path in sources
            for m in re.findall(r'environ(?:\.get\(|\[)\s*"(GATEWAY_[A-Z0-9_]+)"', path.read_text())}
    exported = {m for path in (ROOT / ".ci" / "run", ROOT / "Makefile") if path.exists()
                for m in re.findall(r"\b(GATEWAY_[A-Z0-9_]+)=", path.read_text())}
    assert "GATEWAY_TEST_STRICT" in read & exported
    for var in sorted(read | exported):
        assert not any("no setting reads" in p for p in load_settings(env={var: "1"})[1]), var


def test_no_setting_is_shadowed_by_the_excused_variables() -> None:
    """The excused names must never be a setting's variable, or a typo could hide behind them."""
    names = {"_".join(p).upper() for p in FIELD_PATHS}
    assert not any(n == "PORT" or n.startswith(("PORT_", "SERVICE_", "TEST_", "UPDATE_")) for n in names)


# ---- allowed keys are exactly the keys a provider reads ----------------------------------------------

SAMPLE_VALUES: dict[str, Any] = {
    "issuer": "https://other-idp.example.com", "client_id": "another-client", "client_secret": "s3cret",
    "scopes": ["openid", "email", "profile", "offline_access"], "display_name": "Corp SSO", "groups_claim": "roles",
    "groups_from_access_token": True, "audience": "https://api.example.com",
    "extra_auth_params": {"prompt": "login"}, "allowed_algorithms": ["ES256"],
    "token_endpoint_auth": "client_secret_basic", "timeout": 3, "clock_skew": 5,
    "bearer_audience": "api", "end_session": False, "logout_endpoint": "https://idp.example.com/logout",
    "email_claim": "mail", "require_verified_email": False, "trust_unverified_email": True,
    "mfa_acr_values": ["phr"], "required_claims": {"tid": "acme"}, "allow_insecure_http": True,
    "base_url": "https://ghe.example.com", "api_url": "https://ghe.example.com/api/v4", "orgs": ["acme"],
    "teams": ["acme/ops"], "fetch_groups": True, "url": "https://sso.example.com",
    "cookie_name": "OtherCookie", "claims_headers_prefix": "X-Claims-", "groups": ["staff"],
    "domain": "login.example.com", "app": "other", "region": "us-east-1", "user_pool_id": "us-east-1_Xyz",
    "hosted_domain": "example.com", "realm": "other",
}
"""A valid value, unlike the default, for each upstream key; add one when a type gains a key."""
SAMPLE_OVERRIDES: dict[tuple[str, str], Any] = {("auth0", "groups_from_access_token"): False}
"""Where a preset's default is the general sample."""


@pytest.mark.parametrize(("type_name", "key"), [
    pytest.param(t, k, id=f"{t}-{k}") for t in sorted(PROVIDER_TYPES)
    for k in sorted(provider_class(t).config_keys() - {"type"})
])
def test_every_allowed_upstream_key_is_read(type_name: str, key: str) -> None:
    """An allowed key that changed nothing would be a typo's twin: accepted and silently ignored."""
    parse = cast(Any, provider_class(type_name)).parse_config
    base = {"type": type_name, **MINIMAL_UPSTREAMS[type_name]}
    if key in base:
        changed = {k: v for k, v in base.items() if k != key}
    else:
        assert key in SAMPLE_VALUES, f"add a sample value for {key!r}"
        changed = {**base, key: SAMPLE_OVERRIDES.get((type_name, key), SAMPLE_VALUES[key])}
    assert parse(changed) != parse(base)


# ---- example configs and check-config ----------------------------------------------------------------

def _secrets_env(config: dict[str, Any]) -> dict[str, str]:
    """Client secrets for the file's upstreams, as a deployment passes them (GATEWAY_UPSTREAMS_*)."""
    env = {}
    for name, table in config.get("upstreams", {}).items():
        if "client_secret" in provider_class(table["type"]).config_keys() and "client_secret" not in table:
            env[f"GATEWAY_UPSTREAMS_{name.upper().replace('-', '_')}_CLIENT_SECRET"] = "from-the-secret"
    return env


EXAMPLE_CONFIGS = sorted([*ROOT.glob("config/*.toml"), *ROOT.glob("deploy/**/*.toml")])


@pytest.mark.parametrize("path", [pytest.param(p, id=str(p.relative_to(ROOT))) for p in EXAMPLE_CONFIGS])
def test_example_configs_pass(path: Path) -> None:
    _, problems = load_settings(path, env=_secrets_env(tomllib.loads(path.read_text())))
    assert problems == []


def test_the_commented_upstream_examples_pass(tmp_path: Path) -> None:
    """config/gateway.example.toml's commented [upstreams.*] tables, uncommented, hold no unknown key."""
    text = (ROOT / "config" / "gateway.example.toml").read_text()
    start = text.index("# [upstreams.")
    lines = [line.removeprefix("#").removeprefix(" ") for line in text[start:].splitlines()]
    assert all(not line.startswith("#") for line in lines)
    config = tomllib.loads("\n".join(lines))
    assert set(config["upstreams"]) >= {"github", "corp", "vouch", "dev"}
    assert problems_for(tmp_path, "\n".join(lines), _secrets_env(config)) == []


def test_check_config_fails_on_a_misspelt_hosted_domain(tmp_path: Path) -> None:
    config = write(tmp_path, '[upstreams.corp]\ntype = "google"\nclient_id = "gateway"\nhosted_domian = "corp.com"\n')
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    result = subprocess.run([sys.executable, "-m", "gateway", "check-config", "--config", str(config)],
                            capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=60, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: upstreams.corp.hosted_domian: unknown setting; did you mean 'hosted_domain'?"]
