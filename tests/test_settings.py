"""Settings: source precedence, *_FILE secrets, every problem reported at once, example config complete."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from gateway.settings import FIELD_PATHS, env_name, load_settings, parse_duration, redacted
from upstreams import PROVIDER_TYPES

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_defaults_are_valid_and_embedded() -> None:
    settings, problems = load_settings(env={})
    assert problems == []
    assert settings.database_url.startswith("sqlite:///")
    assert settings.listen.startswith("127.0.0.1:")
    assert settings.cookie.name == "gw_session"


def test_precedence_defaults_file_env_cli(tmp_path: Path) -> None:
    config = write(tmp_path, 'listen = "127.0.0.1:5000"\n[cookie]\nname = "from_file"\nsecure = false\n')
    settings, problems = load_settings(config, env={})
    assert problems == []
    assert (settings.listen, settings.cookie.name, settings.cookie.secure) == ("127.0.0.1:5000", "from_file", False)

    env = {"GATEWAY_COOKIE_NAME": "from_env", "GATEWAY_LISTEN": "127.0.0.1:6000"}
    settings, _ = load_settings(config, env=env)
    assert (settings.listen, settings.cookie.name) == ("127.0.0.1:6000", "from_env")

    settings, _ = load_settings(config, env=env, overrides={"listen": "127.0.0.1:7000"})
    assert (settings.listen, settings.cookie.name) == ("127.0.0.1:7000", "from_env")


def test_config_file_from_env_variable(tmp_path: Path) -> None:
    config = write(tmp_path, 'public_url = "https://auth.example.com"\n')
    settings, problems = load_settings(env={"GATEWAY_CONFIG": str(config)})
    assert problems == []
    assert settings.public_url == "https://auth.example.com"


def test_file_variant_reads_secrets(tmp_path: Path) -> None:
    secret = tmp_path / "db-url"
    secret.write_text("postgresql://gw:s3cret@db:5432/gw\n")
    settings, problems = load_settings(env={"GATEWAY_DATABASE_URL_FILE": str(secret)})
    assert problems == []
    assert settings.database_url == "postgresql://gw:s3cret@db:5432/gw"
    assert "s3cret" not in str(redacted(settings))


def test_env_values_are_parsed_by_type() -> None:
    settings, problems = load_settings(env={
        "GATEWAY_COOKIE_SECURE": "false", "GATEWAY_CACHE_TTL": "15s", "GATEWAY_CACHE_MAX_ENTRIES": "42",
        "GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.0.0/16",
        "GATEWAY_HASURA_SESSION_VARIABLES": "X-Hasura-Email=email,X-Hasura-Name=name"})
    assert problems == []
    assert settings.cookie.secure is False
    assert settings.cache.ttl == 15
    assert settings.cache.max_entries == 42
    assert settings.trusted_proxies == ("10.0.0.0/8", "192.168.0.0/16")
    assert dict(settings.hasura.session_variables) == {"X-Hasura-Email": "email", "X-Hasura-Name": "name"}


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    config = write(tmp_path, 'listen = "nowhere"\nbogus = 1\n[cookie]\nname = "bad name"\nsamesite = "sometimes"\n'
                             '[hasura]\nsession_variables = { "Email" = "mail" }\n')
    env = {"GATEWAY_CACHE_TTL": "soon", "GATEWAY_DATABASE_URL": "mysql://root:hunter2@db/x",
           "GATEWAY_WORKERS": "0", "GATEWAY_TRUSTED_PROXIES": "not-an-ip"}
    _, problems = load_settings(config, env=env)
    text = "\n".join(problems)
    for fragment in ("listen", "bogus", "cookie.name", "cookie.samesite", "cache.ttl", "database_url",
                     "workers", "trusted_proxies", "must be a header name", "unknown user field"):
        assert fragment in text, fragment
    assert "hunter2" not in text
    assert len(problems) >= 10


def test_unreadable_and_invalid_files_are_problems(tmp_path: Path) -> None:
    _, problems = load_settings(tmp_path / "missing.toml", env={})
    assert any("cannot read" in p for p in problems)
    _, problems = load_settings(write(tmp_path, "listen = ["), env={})
    assert any("invalid TOML" in p for p in problems)
    _, problems = load_settings(env={"GATEWAY_DATABASE_URL_FILE": str(tmp_path / "nope")})
    assert any("GATEWAY_DATABASE_URL_FILE" in p for p in problems)
    _, problems = load_settings(env={"GATEWAY_LISTEN": "127.0.0.1:1", "GATEWAY_LISTEN_FILE": "/x"})
    assert any("both set" in p for p in problems)


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("12h", 43200),
                                               ("7d", 604800), ("250ms", 0.25), ("0.5s", 0.5)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5s", "5 parsecs", "1e9"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_example_config_is_valid_and_documents_every_setting() -> None:
    example = ROOT / "config" / "gateway.example.toml"
    _, problems = load_settings(example, env={})
    assert problems == []
    data = tomllib.loads(example.read_text())
    text = example.read_text()
    commented = {("upstreams",): "# [upstreams.", ("access", "rules"): "# [[access.rules]]",
                 ("roles", "map"): "# [roles.map]"}
    for path in FIELD_PATHS:
        if path in commented:  # empty by default: documented as a commented example
            assert commented[path] in text, path
            continue
        node = data
        for part in path:
            assert part in node, f"{'.'.join(path)} missing from the example config"
            node = node[part]
    assert env_name(("cookie", "name")) == "GATEWAY_COOKIE_NAME"
    assert re.search(r"GATEWAY_COOKIE_NAME", example.read_text())


@pytest.mark.parametrize("role", ["staff,admin", "two words", "", "tab\tx"], ids=["comma", "space", "empty", "tab"])
def test_a_mapped_role_that_would_split_in_a_header_is_a_problem(tmp_path: Path, role: str) -> None:
    config = write(tmp_path, f'[roles.map]\n"acme" = ["user", {role!r}]\n'.replace("'", '"'))
    _, problems = load_settings(config, env={})
    assert any("roles.map" in p and "no commas" in p for p in problems), problems


@pytest.mark.parametrize("type_name", sorted(PROVIDER_TYPES))
def test_jwt_upstreams_must_be_of_a_type_the_registry_says_issues_jwts(tmp_path: Path, type_name: str) -> None:
    config = write(tmp_path, f'[upstreams.u]\ntype = "{type_name}"\n[check]\njwt_upstreams = ["u"]\n')
    _, problems = load_settings(config, env={})
    refused = any(p.startswith("check.jwt_upstreams: 'u' issues no JWTs") for p in problems)
    assert refused == (type_name not in {"oidc", "auth0", "authing", "cognito", "google", "keycloak"}), problems
