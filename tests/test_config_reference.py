"""docs/configuration.md is what ``gateway config-reference`` renders from the settings code, and it
describes every setting and every key of every registered upstream type, each with a meaning."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.settings import FIELD_PATHS, env_name, load_settings
from gateway.settings.reference import (
    REGENERATE,
    field_docs,
    markdown,
    render_reference,
    setting_sections,
    upstream_types,
)
from upstreams import PROVIDER_TYPES, provider_class

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "configuration.md"


@pytest.fixture(scope="module")
def page() -> str:
    return render_reference()


def test_the_committed_page_is_the_generated_one(page: str) -> None:
    committed = PAGE.read_text(encoding="utf-8")
    if committed != page:
        diff = "".join(list(difflib.unified_diff(committed.splitlines(keepends=True), page.splitlines(keepends=True),
                                                 "docs/configuration.md", "generated"))[:40])
        pytest.fail(f"docs/configuration.md is out of date; regenerate it with `{REGENERATE}`\n{diff}")


def test_the_command_prints_the_page(page: str) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    result = subprocess.run([sys.executable, "-m", "gateway", "config-reference"], capture_output=True, text=True,
                            env=environ, cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == page


def test_every_setting_is_described(page: str) -> None:
    documented = {s.path: s for section in setting_sections() for s in section.settings}
    assert set(documented) == set(FIELD_PATHS)
    for path, setting in documented.items():
        dotted = ".".join(path)
        assert setting.meaning, dotted
        row = next(line for line in page.splitlines() if line.startswith(f"| `{dotted}` |"))
        assert markdown(setting.meaning) in row
        if setting.env:
            assert setting.env == env_name(path) + "[_FILE]"
            assert f"`{setting.env}`" in row
        else:
            assert "config file only" in row


def test_variables_marked_config_file_only_are_refused() -> None:
    """The page says which settings no environment variable can carry; the loader agrees."""
    for section in setting_sections():
        for setting in section.settings:
            _, problems = load_settings(env={env_name(setting.path): "x"})
            refused = any("in the config file" in p for p in problems)
            assert refused == (not setting.env), (setting.path, problems)


@pytest.mark.parametrize("type_name", list(PROVIDER_TYPES))
def test_every_upstream_key_is_described(page: str, type_name: str) -> None:
    docs = {doc.type_name: doc for doc in upstream_types()}
    doc = docs[type_name]
    keys = {k.key for k in doc.keys} | ({k.key for k in docs[doc.shares].keys} if doc.shares else set())
    assert keys | {"type"} == provider_class(type_name).config_keys()
    section = page.split(f'### `type = "{type_name}"`\n', 1)[1].split("\n### ", 1)[0]
    for key in doc.keys:
        assert key.meaning, (type_name, key.key)
        assert re.search(rf"^\| `{key.key}` \| {re.escape(key.kind)} \|.*{re.escape(markdown(key.meaning))} \|$",
                         section, re.M), (type_name, key.key)
    if doc.shares:
        assert f'[`type = "{doc.shares}"`](#type--{doc.shares})' in section


def test_upstream_variables_carry_exactly_the_keys_the_page_says(tmp_path: Path) -> None:
    """``GATEWAY_UPSTREAMS_<NAME>_<KEY>`` works for the keys marked with a variable (strings) and fails,
    as a problem, for the others."""
    config = tmp_path / "gateway.toml"
    config.write_text('[upstreams.corp]\ntype = "oidc"\nissuer = "https://idp.example.com"\nclient_id = "gw"\n')
    [oidc] = [doc for doc in upstream_types() if doc.type_name == "oidc"]
    samples = {"client_secret": "s", "display_name": "Corp", "timeout": "5",
               "end_session": "false", "scopes": "openid"}
    for key in oidc.keys:
        if key.key not in samples:
            continue
        settings, problems = load_settings(config, env={f"GATEWAY_UPSTREAMS_CORP_{key.key.upper()}": samples[key.key]})
        assert (problems == []) == key.env, (key.key, problems)
        if key.env:
            assert settings.upstreams["corp"][key.key] == samples[key.key]


def test_presets_show_what_they_fill_in(page: str) -> None:
    fills = {doc.type_name: dict(doc.fills) for doc in upstream_types()}
    assert fills["oidc"] == {}
    assert fills["auth0"]["issuer"] == ('"https://<domain>/"',)
    assert fills["cognito"]["issuer"] == ('"https://cognito-idp.<region>.amazonaws.com/<user_pool_id>"',)
    assert set(fills["authing"]["issuer"]) == {'"https://<app>.authing.cn/oidc"', '"https://<domain>/oidc"'}
    assert fills["google"]["issuer"] == ('"https://accounts.google.com"',)
    assert "| `issuer` | `\"<base_url>/realms/<realm>\"` |" in page


@dataclass(frozen=True)
class _Documented:
    described: int = 1
    """What it is."""
    undescribed: int = 2
    # a comment is not a docstring
    also: str = ""
    """Spread over
    two lines."""


def test_field_docs_are_the_strings_under_the_fields() -> None:
    assert {f.name for f in dataclasses.fields(_Documented)} == {"described", "undescribed", "also"}
    assert field_docs(_Documented) == {"described": "What it is.", "also": "Spread over two lines."}


# ---- the README keeps only a short table, in step with the page ---------------------------------------


def test_readme_links_the_reference_and_its_short_table_agrees() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    assert "(docs/configuration.md)" in section
    defaults = {".".join(s.path): s.default.strip('"') for sec in setting_sections() for s in sec.settings}
    rows = re.findall(r"^\| (`[^|]+`) \| ([^|]+) \|", section, re.M)
    assert rows
    for names, default in rows:
        settings = re.findall(r"`([^`]+)`", names)
        values = re.findall(r"`([^`]+)`", default)
        for name in settings:
            assert name in defaults, f"README's configuration table names {name!r}, which is no setting"
        if default.startswith("empty"):
            assert all(defaults[name] == "" for name in settings), (names, default)
        elif values:
            assert values == [defaults[name] for name in settings], (names, default)
