"""Where settings come from: defaults < TOML file < ``GATEWAY_*`` environment < CLI flags, merged.

Every setting has one dotted name (``cookie.name``), one TOML key (``[cookie] name``) and one environment
variable (``GATEWAY_COOKIE_NAME``); a ``*_FILE`` variant of any variable reads the value from a file
(Kubernetes mounts secrets as files). Merging never raises on bad input: a value of the wrong type, an
unreadable file, or a key or ``GATEWAY_*`` variable that no setting reads (with a did-you-mean
suggestion: a typo must never switch a restriction off) is a problem, and every problem is collected.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.access import is_role_name
from gateway.settings.sections import (
    Duration,
    FrozenDict,
    RoleMap,
    RuleTables,
    Settings,
    UpstreamTables,
    parse_duration,
)
from upstreams import PROVIDER_TYPES, provider_class
from upstreams.base import closest_key


def _field_paths(cls: type, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Map each leaf setting's path to its type, e.g. ``("cookie", "name") -> str``."""
    hints = typing.get_type_hints(cls)
    paths: dict[tuple[str, ...], Any] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            paths.update(_field_paths(typing.cast(type, hint), (*prefix, f.name)))
        else:
            paths[(*prefix, f.name)] = hint
    return paths


FIELD_PATHS = _field_paths(Settings)


def env_name(path: tuple[str, ...]) -> str:
    """The environment variable for a setting path: ``("cookie", "name") -> GATEWAY_COOKIE_NAME``."""
    return "GATEWAY_" + "_".join(path).upper()


ENV_PREFIX = "GATEWAY_"
UPSTREAM_ENV_PREFIX = "GATEWAY_UPSTREAMS_"
"""``GATEWAY_UPSTREAMS_<NAME>_<KEY>[_FILE]`` sets ``<key>`` of the config file's ``[upstreams.<name>]``."""

SETTINGS_ENV_NAMES = frozenset({"GATEWAY_CONFIG", *(env_name(p) for p in FIELD_PATHS),
                                *(env_name(p) + "_FILE" for p in FIELD_PATHS)})
"""Every ``GATEWAY_*`` variable :func:`load_settings` reads, besides the ``GATEWAY_UPSTREAMS_<NAME>_*`` ones."""

# GATEWAY_* variables that are not settings, so never reported as unknown. Only these are excused:
# - read by the test suite, not by the gateway; CI exports GATEWAY_TEST_STRICT=1, so every gateway a
#   test starts (and every load_settings() reading os.environ) sees it;
#   (tests/test_config_typos.py fails when the test suite or CI reads one that is missing here)
_NOT_SETTINGS_ENV_NAMES = frozenset({"GATEWAY_TEST_STRICT", "GATEWAY_TEST_SKIP_INSTALL", "GATEWAY_TEST_IMAGE",
                                     "GATEWAY_UPDATE_SCREENSHOTS", "GATEWAY_SECURITY_FULL",
                                     "GATEWAY_SECURITY_REPORT", "GATEWAY_FAULTS_FULL", "GATEWAY_FAULTS_REPORT"})
# - Kubernetes service links for a Service named "gateway" (GATEWAY_SERVICE_HOST, GATEWAY_PORT,
#   GATEWAY_PORT_4180_TCP_ADDR...), injected into every pod in its namespace unless the pod sets
#   enableServiceLinks: false as deploy/k8s does. No setting is called "port" or "service_*", so they
#   can never hide a typo, and refusing to start over them would break otherwise working deployments.
_SERVICE_LINK_ENV_NAME = re.compile(
    r"GATEWAY_(?:SERVICE_HOST|SERVICE_PORT(?:_[A-Z0-9_]+)?|PORT(?:_[0-9]+_(?:TCP|UDP|SCTP)(?:_(?:PROTO|PORT|ADDR))?)?)")


def _suggest(key: str, known: typing.Iterable[str], before: str = "", after: str = "") -> str:
    """``"; did you mean 'X'?"``, X the closest of ``known`` (bare keys) between ``before`` and ``after``,
    or "" when none is close."""
    match = closest_key(key, known)
    return f"; did you mean {before + match + after!r}?" if match is not None else ""


def _convert(hint: Any, value: Any, from_text: bool) -> Any:
    """Coerce a raw TOML/env value to the setting's type; raise ValueError with a readable message."""
    if hint is Duration:
        return Duration(parse_duration(value.strip() if isinstance(value, str) else value))
    if hint is UpstreamTables:
        if from_text or not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, dict) for k, v in value.items()):
            raise ValueError("expected [upstreams.<name>] tables in the config file")
        return UpstreamTables(FrozenDict(
            {k: FrozenDict(dict(v)) for k, v in value.items()}))
    if hint is RuleTables:
        if from_text or not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ValueError("expected [[access.rules]] tables in the config file")
        return RuleTables(tuple(FrozenDict(dict(v)) for v in value))
    if hint is RoleMap:
        if from_text or not isinstance(value, dict):
            raise ValueError("expected a [roles.map] table in the config file")
        out: dict[str, tuple[str, ...]] = {}
        for group, roles in value.items():
            roles = [roles] if isinstance(roles, str) else roles
            if not isinstance(roles, list) or not all(isinstance(r, str) and is_role_name(r) for r in roles):
                raise ValueError(f"roles.map.{group!r}: expected a role name or a list of role names "
                                 "(no commas, spaces or control characters: roles travel comma-separated)")
            out[str(group)] = tuple(roles)
        return RoleMap(FrozenDict(out))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if from_text and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
        raise ValueError(f"expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_text and isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise ValueError(f"expected an integer, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"expected a string, got {value!r}")
    origin = typing.get_origin(hint)
    if origin is tuple:
        if from_text and isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ValueError(f"expected a list of strings, got {value!r}")
    if origin in (Mapping, dict) or hint is Mapping:
        if from_text and isinstance(value, str):
            pairs = [p for p in value.split(",") if p.strip()]
            if not all("=" in p for p in pairs):
                raise ValueError("expected KEY=VALUE pairs separated by commas")
            value = {k.strip(): v.strip() for k, v in (p.split("=", 1) for p in pairs)}
        if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return FrozenDict(dict(value))
        raise ValueError(f"expected a table of strings, got {value!r}")
    raise ValueError(f"unsupported setting type {hint!r}")  # pragma: no cover - guards new fields


def _flatten_toml(data: Mapping[str, Any], prefix: tuple[str, ...], out: dict[tuple[str, ...], Any],
                  problems: list[str]) -> None:
    """Collect the file's settings by path into ``out``; every key no setting reads is a problem."""
    # Keys allowed at this level: settings and sections (``cookie``) alike.
    here = {p[len(prefix)] for p in FIELD_PATHS if len(p) > len(prefix) and p[: len(prefix)] == prefix}
    for key, value in data.items():
        path = (*prefix, key)
        dotted = ".".join(path)
        if path in FIELD_PATHS:
            out[path] = value
        elif key in here and isinstance(value, dict):
            _flatten_toml(value, path, out, problems)
        elif key in here:
            problems.append(f"config file: {dotted!r} is a section: write its keys under [{dotted}]")
        else:
            hint = _suggest(key, here, "".join(part + "." for part in prefix))
            if not hint and prefix:
                hint = f" ([{'.'.join(prefix)}] holds {', '.join(sorted(here))})"
            problems.append(f"config file: unknown setting {dotted!r}{hint}")


def _build(cls: type, values: Mapping[tuple[str, ...], Any], prefix: tuple[str, ...] = ()) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        path = (*prefix, f.name)
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = _build(typing.cast(type, hint), values, path)
        elif path in values:
            kwargs[f.name] = values[path]
    return cls(**kwargs)


def merge_sources(config_file: str | os.PathLike[str] | None, env: Mapping[str, str],
                  overrides: Mapping[str, Any] | None) -> tuple[Settings, list[str]]:
    """Merge all sources into Settings; return them and every problem reading the sources (empty when fine).

    ``config_file`` falls back to ``GATEWAY_CONFIG`` from ``env``. ``overrides`` maps dotted names
    (``"database_url"``, ``"cookie.name"``) to CLI flag values and wins over everything. When there are
    problems the settings returned use defaults for the bad values. Nothing here judges the values
    themselves: each part of the gateway does that for its own section (:mod:`gateway.settings.checks`).
    """
    problems: list[str] = []
    raw: dict[tuple[str, ...], tuple[Any, bool, str]] = {}

    config_file = config_file or env.get("GATEWAY_CONFIG") or None
    if config_file:
        try:
            with open(config_file, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            problems.append(f"config file {str(config_file)!r}: cannot read: {exc.strerror or exc}")
        except tomllib.TOMLDecodeError as exc:
            problems.append(f"config file {str(config_file)!r}: invalid TOML: {exc}")
        else:
            flat: dict[tuple[str, ...], Any] = {}
            _flatten_toml(data, (), flat, problems)
            for path, value in flat.items():
                raw[path] = (value, False, f"config file key {'.'.join(path)}")

    for path in FIELD_PATHS:
        name = env_name(path)
        file_var = name + "_FILE"
        if name in env and file_var in env:
            problems.append(f"{name} and {file_var} are both set: set only one")
            continue
        if name in env:
            raw[path] = (env[name], True, name)
        elif file_var in env:
            try:
                text = Path(env[file_var]).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(f"{file_var}: cannot read {env[file_var]!r}: {exc}")
            else:
                raw[path] = (text, True, file_var)

    upstream_env_names = _upstream_env(raw, env, problems)
    problems.extend(_unknown_env_problems(env, SETTINGS_ENV_NAMES | upstream_env_names))

    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        path = tuple(dotted.split("."))
        if path not in FIELD_PATHS:
            problems.append(f"unknown setting {dotted!r}{_suggest(dotted, ('.'.join(p) for p in FIELD_PATHS))}")
            continue
        raw[path] = (value, isinstance(value, str), f"--{dotted.replace('.', '-').replace('_', '-')}")

    values: dict[tuple[str, ...], Any] = {}
    for path, (value, from_text, source) in raw.items():
        try:
            values[path] = _convert(FIELD_PATHS[path], value, from_text)
        except ValueError as exc:
            problems.append(f"{source} ({'.'.join(path)}): {exc}")

    settings: Settings = _build(Settings, values)
    return settings, problems


def _unknown_env_problems(env: Mapping[str, str], known: frozenset[str]) -> list[str]:
    """A problem for each ``GATEWAY_*`` variable nothing reads (it would otherwise be silently ignored)."""
    problems: list[str] = []
    for var in sorted(env):
        if (not var.startswith(ENV_PREFIX) or var in known or var in _NOT_SETTINGS_ENV_NAMES
                or _SERVICE_LINK_ENV_NAME.fullmatch(var)):
            continue
        hint = _suggest(var.removeprefix(ENV_PREFIX), (k.removeprefix(ENV_PREFIX) for k in known), ENV_PREFIX)
        hint = hint or " (a setting's variable is GATEWAY_ and its dotted name in capitals: GATEWAY_COOKIE_NAME)"
        problems.append(f"{var}: no setting reads this environment variable{hint}")
    return problems


def _upstream_env(raw: dict[tuple[str, ...], tuple[Any, bool, str]], env: Mapping[str, str],
                  problems: list[str]) -> frozenset[str]:
    """Apply ``GATEWAY_UPSTREAMS_<NAME>_<KEY>[_FILE]`` to upstreams named in the config file (secrets).

    Returns every such variable it dealt with, applied or reported. A variable is a problem when no
    upstream in the config file matches ``<NAME>``, when ``<KEY>`` is not a key of that upstream's
    type (each with a did-you-mean suggestion), when it cannot be read, or when both ``<KEY>`` and
    ``<KEY>_FILE`` are set. With names that share a prefix (``corp``, ``corp-eu``) the longest wins.
    """
    variables = sorted(var for var in env if var.startswith(UPSTREAM_ENV_PREFIX) and var not in SETTINGS_ENV_NAMES)
    if not variables:
        return frozenset()
    entry = raw.get(("upstreams",))
    tables: dict[str, Any] = {}
    if entry is not None and isinstance(entry[0], dict):
        tables = {name: dict(table) if isinstance(table, dict) else table for name, table in entry[0].items()}
    prefixes = sorted(((UPSTREAM_ENV_PREFIX + name.upper().replace("-", "_") + "_", name)
                       for name, table in tables.items() if isinstance(table, dict)),
                      key=lambda pair: len(pair[0]), reverse=True)
    known_keys = {name: _upstream_keys(tables[name]) for _prefix, name in prefixes}
    # Every variable the configured upstreams can take, for suggestions when <NAME> matches none.
    candidates = {prefix + key.upper() + suffix for prefix, name in prefixes for key in known_keys[name] or ()
                  for suffix in ("", "_FILE")}

    for var in variables:
        match = next(((prefix, name) for prefix, name in prefixes if var.startswith(prefix)), None)
        if match is None:
            configured = f" (configured: {', '.join(sorted(tables))})" if tables else ""
            hint = _suggest(var.removeprefix(UPSTREAM_ENV_PREFIX),
                            (c.removeprefix(UPSTREAM_ENV_PREFIX) for c in candidates), UPSTREAM_ENV_PREFIX)
            problems.append(f"{var}: names no [upstreams.<name>] table of the config file{configured}{hint}")
            continue
        prefix, name = match
        key = var[len(prefix):].lower()
        from_file = key.endswith("_file")
        key = key.removesuffix("_file")
        known = known_keys[name]
        if known is not None and key not in known:
            hint = _suggest(var[len(prefix):].upper(), (k.upper() + s for k in known for s in ("", "_FILE")), prefix)
            problems.append(f"{var}: upstreams.{name} (type {tables[name].get('type')}) has no setting "
                            f"{key!r}{hint}")
            continue
        value = env[var]
        if from_file:
            plain = var[: -len("_file")]
            if plain in env:
                problems.append(f"{plain} and {var} are both set: set only one")
                continue
            try:
                value = Path(value).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(f"{var}: cannot read {value!r}: {exc}")
                continue
        tables[name][key] = value
    if entry is not None and isinstance(entry[0], dict):
        raw[("upstreams",)] = (tables, False, entry[2])
    return frozenset(variables)


def _upstream_keys(table: Mapping[str, Any]) -> frozenset[str] | None:
    """The keys an upstream table of this ``type`` may hold; None when the type is unknown (reported
    by validation), so no key can be judged."""
    type_name = table.get("type")
    if not isinstance(type_name, str) or type_name not in PROVIDER_TYPES:
        return None
    return provider_class(type_name).config_keys()
