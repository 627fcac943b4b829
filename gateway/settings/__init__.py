"""Gateway settings: frozen dataclasses merged from defaults < TOML file < GATEWAY_* env < CLI flags.

Every setting has one dotted name (``cookie.name``), one TOML key (``[cookie] name``) and one environment
variable (``GATEWAY_COOKIE_NAME``); a ``*_FILE`` variant of any variable reads the value from a file
(Kubernetes mounts secrets as files). Loading never raises on bad input: it collects every problem so
``gateway check-config`` can list them all at once. A key or ``GATEWAY_*`` variable that no setting reads
is one of those problems, with a did-you-mean suggestion: a typo must never switch a restriction off.

The package splits by job: :mod:`.sections` is the data, :mod:`.sources` merges the sources, and
:mod:`.checks` asks each part of the gateway about its own section.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from gateway.redaction import MASK, mask_url
from gateway.settings.sections import (
    SECRET_SETTINGS,
    AccessSettings,
    CacheSettings,
    CheckSettings,
    CookieSettings,
    DatabaseSettings,
    Duration,
    EnrolmentSettings,
    FrozenDict,
    HasuraSettings,
    LoginSettings,
    RoleMap,
    RolesSettings,
    RuleTables,
    ServingSettings,
    SessionSettings,
    Settings,
    SettingsError,
    UpstreamTables,
    parse_duration,
)
from gateway.settings.sources import (
    ENV_PREFIX,
    FIELD_PATHS,
    SETTINGS_ENV_NAMES,
    UPSTREAM_ENV_PREFIX,
    env_name,
    merge_sources,
)

__all__ = ["ENV_PREFIX", "FIELD_PATHS", "SECRET_SETTINGS", "SETTINGS_ENV_NAMES", "UPSTREAM_ENV_PREFIX",
           "AccessSettings", "CacheSettings", "CheckSettings", "CookieSettings", "DatabaseSettings", "Duration",
           "EnrolmentSettings", "FrozenDict", "HasuraSettings", "LoginSettings", "RoleMap", "RolesSettings",
           "RuleTables", "ServingSettings", "SessionSettings", "Settings", "SettingsError", "UpstreamTables",
           "env_name", "load_or_raise", "load_settings", "parse_duration", "redacted", "validate"]


def load_settings(config_file: str | os.PathLike[str] | None = None,
                  env: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> tuple[Settings, list[str]]:
    """Merge all sources and validate; return the settings and every problem found (empty when fine).

    ``config_file`` falls back to ``GATEWAY_CONFIG`` from ``env`` (default: ``os.environ``). ``overrides``
    maps dotted names (``"database_url"``, ``"cookie.name"``) to CLI flag values and wins over everything.
    When there are problems the settings returned use defaults for the bad values and must not be served.
    """
    settings, problems = merge_sources(config_file, os.environ if env is None else env, overrides)
    return settings, problems + validate(settings)


def load_or_raise(config_file: str | os.PathLike[str] | None = None,
                  env: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Settings:
    """Like :func:`load_settings`, but raise :class:`SettingsError` listing every problem."""
    settings, problems = load_settings(config_file, env, overrides)
    if problems:
        raise SettingsError(problems)
    return settings


def validate(settings: Settings) -> list[str]:
    """Every problem each part of the gateway finds with its section of a fully built Settings (empty
    when they can be served); see :mod:`gateway.settings.checks`."""
    # Imported when first asked: every owner of a check imports its section's type from this package.
    from gateway.settings.checks import settings_problems

    return settings_problems(settings)


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective settings as a flat dict of dotted names, secrets masked, for printing."""
    out: dict[str, Any] = {}
    for path in FIELD_PATHS:
        value: Any = settings
        for part in path:
            value = getattr(value, part)
        name = ".".join(path)
        out[name] = _printable(name, value)
    return out


def _printable(name: str, value: Any) -> Any:
    """A setting value as plain data with every secret masked."""
    if name in SECRET_SETTINGS:
        # a URL keeps its user, host and database readable; any other secret (a key) is masked whole
        return mask_url(str(value)) if "://" in str(value) else (MASK if value else "")
    if isinstance(value, Mapping):
        return {k: MASK if any(w in str(k).lower() for w in ("secret", "password", "token")) and v
                else _printable(f"{name}.{k}", v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_printable(name, v) for v in value]
    return value

