"""Gateway settings: frozen dataclasses merged from defaults < TOML file < GATEWAY_* env < CLI flags.

Every setting has one dotted name (``cookie.name``), one TOML key (``[cookie] name``) and one environment
variable (``GATEWAY_COOKIE_NAME``); a ``*_FILE`` variant of any variable reads the value from a file
(Kubernetes mounts secrets as files). Loading never raises on bad input: it collects every problem so
``gateway check-config`` can list them all at once. A key or ``GATEWAY_*`` variable that no setting reads
is one of those problems, with a did-you-mean suggestion: a typo must never switch a restriction off.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.access import is_role_name
from gateway.redaction import MASK, mask_url
from upstreams import PROVIDER_TYPES, provider_class
from upstreams.base import closest_key

Duration = typing.NewType("Duration", float)
"""Seconds; written in config as ``90``, ``"90s"``, ``"15m"``, ``"12h"`` or ``"7d"``."""

UpstreamTables = typing.NewType("UpstreamTables", Mapping[str, Mapping[str, Any]])
"""``[upstreams.<name>]`` tables, validated by each provider type."""

RuleTables = typing.NewType("RuleTables", tuple[Mapping[str, Any], ...])
"""``[[access.rules]]`` tables, validated by :mod:`gateway.access`."""

RoleMap = typing.NewType("RoleMap", Mapping[str, tuple[str, ...]])
"""Upstream group -> gateway roles."""

class FrozenDict(dict[str, Any]):
    """A read-only dict that pickles (settings cross to ``--workers`` processes; MappingProxyType can't)."""

    def _readonly(self, *args: Any, **kwargs: Any) -> typing.NoReturn:
        raise TypeError("settings are read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items(), key=lambda kv: kv[0])))


_UPSTREAM_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
_HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9-]+$")
USER_FIELDS = ("id", "email", "name", "username", "upstream", "subject", "roles", "groups")


def parse_duration(value: object) -> float:
    """Turn ``90``, ``"90s"``, ``"15m"``, ``"12h"``, ``"7d"`` into seconds; raise ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"negative duration: {value!r}")
        return float(value)
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    raise ValueError(f"not a duration (use e.g. 30s, 15m, 12h, 7d): {value!r}")


@dataclass(frozen=True)
class CookieSettings:
    """The session cookie set on the browser."""

    name: str = "gw_session"
    secure: bool = True
    domain: str = ""
    samesite: str = "Lax"


@dataclass(frozen=True)
class SessionSettings:
    """Session lifetimes, all enforced server-side."""

    lifetime: Duration = Duration(7 * 86400)
    idle_timeout: Duration = Duration(12 * 3600)
    api_token_lifetime: Duration = Duration(90 * 86400)
    last_seen_grain: Duration = Duration(60)


@dataclass(frozen=True)
class CacheSettings:
    """The in-process session cache on the check path."""

    ttl: Duration = Duration(5)
    max_entries: int = 100_000
    negative_ttl: Duration = Duration(2)
    negative_max_entries: int = 100_000
    # While the revocation listener is down, cached entries live at most this long, so a revocation
    # made elsewhere still takes effect within a second.
    degraded_ttl: Duration = Duration(0.5)
    # While the database is unreachable, a session seen within this long keeps working from the cache
    # (nobody can revoke it while the database is down). 0 turns it off.
    stale_if_error: Duration = Duration(300)


@dataclass(frozen=True)
class DatabaseSettings:
    """Connection pool and timeouts."""

    pool_min: int = 1
    pool_max: int = 10
    connect_timeout: Duration = Duration(5)
    query_timeout: Duration = Duration(2)
    sqlite_poll_interval: Duration = Duration(0.1)
    prepared_statements: bool = True
    lookup_concurrency: int = 2
    # PostgreSQL: the revocation feed's own connection (LISTEN/NOTIFY and the revocation log), when
    # database_url goes through PgBouncer in transaction pooling, which drops notifications: point this
    # straight at PostgreSQL (or at a session-pooled PgBouncer database). Empty: database_url.
    feed_url: str = ""


@dataclass(frozen=True)
class HasuraSettings:
    """The Hasura auth webhook."""

    default_role: str = "user"
    anonymous_role: str = ""
    session_variables: Mapping[str, str] = field(
        default_factory=lambda: FrozenDict({"X-Hasura-Email": "email"}))
    max_body_bytes: int = 64 * 1024


@dataclass(frozen=True)
class CheckSettings:
    """The proxy check endpoint."""

    redirect_browsers: bool = False
    jwt_upstreams: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoginSettings:
    """The login dance: attempts, redirect targets, abuse limits."""

    attempt_ttl: Duration = Duration(600)
    cookie_name: str = "gw_login"
    redirect_hosts: tuple[str, ...] = ()
    default_redirect: str = "/"
    rate_limit: int = 30
    lockout_threshold: int = 5
    lockout_window: Duration = Duration(900)
    lockout_duration: Duration = Duration(900)


@dataclass(frozen=True)
class EnrolmentSettings:
    """Who may become a user at first login (empty lists: anyone the upstream admits)."""

    emails: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class AccessSettings:
    """Who may pass where: ordered rules, first match wins, else ``default``."""

    default: str = "allow"
    rules: RuleTables = RuleTables(())


@dataclass(frozen=True)
class RolesSettings:
    """Gateway roles from upstream groups, refreshed at every login."""

    map: RoleMap = field(default_factory=lambda: RoleMap(FrozenDict({})))
    passthrough_groups: bool = True


@dataclass(frozen=True)
class Settings:
    """Everything the gateway needs to run; built by :func:`load_settings`."""

    listen: str = "127.0.0.1:4180"
    public_url: str = "http://127.0.0.1:4180"
    database_url: str = "sqlite:///gateway.db"
    migrate_on_start: bool = True
    trusted_proxies: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    log_format: str = "auto"
    log_level: str = "info"
    access_log: bool = False
    fast_lane: bool = True
    workers: int = 1
    keepalive_timeout: Duration = Duration(75)
    shutdown_timeout: Duration = Duration(10)
    shutdown_delay: Duration = Duration(0)
    gc_full_interval: Duration = Duration(300)
    max_header_bytes: int = 16384
    cookie: CookieSettings = field(default_factory=CookieSettings)
    session: SessionSettings = field(default_factory=SessionSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    hasura: HasuraSettings = field(default_factory=HasuraSettings)
    check: CheckSettings = field(default_factory=CheckSettings)
    login: LoginSettings = field(default_factory=LoginSettings)
    enrolment: EnrolmentSettings = field(default_factory=EnrolmentSettings)
    access: AccessSettings = field(default_factory=AccessSettings)
    roles: RolesSettings = field(default_factory=RolesSettings)
    upstreams: UpstreamTables = field(default_factory=lambda: UpstreamTables(FrozenDict({})))

    @property
    def listen_host_port(self) -> tuple[str, int]:
        """``listen`` split into host and port (validated by :func:`validate`)."""
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)

    @property
    def public_host(self) -> str:
        """``public_url``'s host[:port], lower-cased (validated by :func:`validate`)."""
        return urlsplit(self.public_url).netloc.rpartition("@")[2].lower()

    @property
    def redirect_hosts(self) -> tuple[str, ...]:
        """Hosts a login may return to: the gateway's own plus ``login.redirect_hosts``."""
        return (self.public_host, *self.login.redirect_hosts)

    @property
    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """``trusted_proxies`` parsed (validated by :func:`validate`)."""
        return tuple(ipaddress.ip_network(n, strict=False) for n in self.trusted_proxies)


SECRET_SETTINGS = frozenset({"database_url", "database.feed_url"})
"""Settings whose values must never be printed."""


class SettingsError(Exception):
    """Raised by :func:`load_or_raise` when the settings have problems; ``problems`` lists them all."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


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
_NOT_SETTINGS_ENV_NAMES = frozenset({"GATEWAY_TEST_STRICT", "GATEWAY_TEST_SKIP_INSTALL",
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


def load_settings(config_file: str | os.PathLike[str] | None = None,
                  env: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> tuple[Settings, list[str]]:
    """Merge all sources and validate; return the settings and every problem found (empty when fine).

    ``config_file`` falls back to ``GATEWAY_CONFIG`` from ``env``. ``overrides`` maps dotted names
    (``"database_url"``, ``"cookie.name"``) to CLI flag values and wins over everything. When there are
    problems the settings returned use defaults for the bad values and must not be served.
    """
    env = os.environ if env is None else env
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
    problems.extend(validate(settings))
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


def load_or_raise(config_file: str | os.PathLike[str] | None = None,
                  env: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Settings:
    """Like :func:`load_settings`, but raise :class:`SettingsError` listing every problem."""
    settings, problems = load_settings(config_file, env, overrides)
    if problems:
        raise SettingsError(problems)
    return settings


def validate(s: Settings) -> list[str]:
    """Return every problem with a fully built Settings (empty list when it can be served)."""
    problems: list[str] = []
    _host, sep, port = s.listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        problems.append(f"listen: expected HOST:PORT, got {s.listen!r}")

    public = urlsplit(s.public_url)
    if public.scheme not in {"http", "https"} or not public.hostname:
        problems.append(f"public_url: expected an absolute http(s) URL, got {s.public_url!r}")
    elif public.query or public.fragment:
        problems.append("public_url: must not carry a query or fragment")

    scheme = s.database_url.split(":", 1)[0].lower()
    if scheme not in {"sqlite", "postgresql", "postgres"}:
        # never echo the URL: it may hold a password
        problems.append("database_url: expected sqlite:///PATH or postgresql://USER@HOST/DB")
    elif scheme == "sqlite" and not s.database_url.startswith("sqlite:///"):
        problems.append("database_url: SQLite URLs look like sqlite:///relative.db or sqlite:////abs/path.db")
    if s.database.feed_url:
        feed_scheme = s.database.feed_url.split(":", 1)[0].lower()
        if feed_scheme not in {"postgresql", "postgres"}:
            problems.append("database.feed_url: expected postgresql://USER@HOST/DB (or empty: database_url)")
        elif scheme not in {"postgresql", "postgres"}:
            problems.append("database.feed_url: only for a PostgreSQL database_url (leave it empty for SQLite)")

    for net in s.trusted_proxies:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            problems.append(f"trusted_proxies: {net!r} is not an IP address or CIDR range")

    if s.log_format not in {"auto", "json", "console"}:
        problems.append(f"log_format: expected auto, json or console, got {s.log_format!r}")
    if s.log_level.lower() not in {"debug", "info", "warning", "error"}:
        problems.append(f"log_level: expected debug, info, warning or error, got {s.log_level!r}")
    if s.workers < 1:
        problems.append("workers: must be at least 1")
    if 0 < s.gc_full_interval < 1:
        problems.append("gc_full_interval: must be 0 (CPython's own policy) or at least 1s")
    if s.max_header_bytes < 1024:
        problems.append("max_header_bytes: must be at least 1024")

    if not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", s.cookie.name):
        problems.append(f"cookie.name: {s.cookie.name!r} is not a valid cookie name")
    if s.cookie.samesite not in {"Lax", "Strict", "None"}:
        problems.append(f"cookie.samesite: expected Lax, Strict or None, got {s.cookie.samesite!r}")
    if s.cookie.samesite == "None" and not s.cookie.secure:
        problems.append("cookie.samesite: None requires cookie.secure = true (browsers drop it otherwise)")
    if s.cookie.domain and not re.fullmatch(r"\.?[A-Za-z0-9.-]+", s.cookie.domain):
        problems.append(f"cookie.domain: {s.cookie.domain!r} is not a host name")

    if s.session.lifetime <= 0:
        problems.append("session.lifetime: must be positive")
    if s.session.api_token_lifetime <= 0:
        problems.append("session.api_token_lifetime: must be positive")
    if s.session.last_seen_grain <= 0:
        problems.append("session.last_seen_grain: must be positive")
    if 0 < s.session.idle_timeout <= s.session.last_seen_grain:
        problems.append("session.idle_timeout: must be longer than session.last_seen_grain (or 0 for none)")

    if s.cache.max_entries < 1 or s.cache.negative_max_entries < 1:
        problems.append("cache.max_entries and cache.negative_max_entries: must be at least 1")
    if s.cache.degraded_ttl > 1:
        problems.append("cache.degraded_ttl: must be at most 1s to keep the revocation promise")
    if s.database.lookup_concurrency < 1:
        problems.append("database.lookup_concurrency: must be at least 1")
    if s.database.pool_min < 0 or s.database.pool_max < 1 or s.database.pool_min > s.database.pool_max:
        problems.append("database.pool_min/pool_max: need 0 <= pool_min <= pool_max and pool_max >= 1")
    if s.database.query_timeout <= 0 or s.database.connect_timeout <= 0:
        problems.append("database.query_timeout and database.connect_timeout: must be positive")

    if not s.hasura.default_role:
        problems.append("hasura.default_role: must not be empty")
    for header, user_field in s.hasura.session_variables.items():
        if not header.lower().startswith("x-hasura-") or not _HEADER_NAME_RE.match(header):
            problems.append(f"hasura.session_variables: {header!r} must be a header name starting X-Hasura-")
        elif header.lower() in {"x-hasura-role", "x-hasura-user-id"}:
            problems.append(f"hasura.session_variables: {header!r} is set by the gateway itself")
        if user_field not in USER_FIELDS:
            problems.append(f"hasura.session_variables: {header!r} maps to unknown user field "
                            f"{user_field!r} (one of {', '.join(USER_FIELDS)})")
    if s.hasura.max_body_bytes < 1024:
        problems.append("hasura.max_body_bytes: must be at least 1024")
    problems.extend(_login_problems(s))
    return problems


def _login_problems(s: Settings) -> list[str]:
    """Problems with upstreams, redirects, enrolment, access rules and roles."""
    from gateway.access import rule_problems
    from gateway.redirects import policy_problems
    from upstreams import config_problems

    problems: list[str] = []
    for name, table in s.upstreams.items():
        if not _UPSTREAM_NAME_RE.fullmatch(name):
            problems.append(f"upstreams.{name}: names are lower-case letters, digits and dashes")
            continue
        problems.extend(config_problems(name, table))
    if not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", s.login.cookie_name):
        problems.append(f"login.cookie_name: {s.login.cookie_name!r} is not a valid cookie name")
    elif s.login.cookie_name == s.cookie.name:
        problems.append("login.cookie_name: must differ from cookie.name")
    if not 60 <= s.login.attempt_ttl <= 3600:
        problems.append("login.attempt_ttl: must be between 1m and 1h")
    if s.login.rate_limit < 1:
        problems.append("login.rate_limit: must be at least 1 request per minute")
    if s.login.lockout_threshold < 1 or s.login.lockout_window <= 0 or s.login.lockout_duration <= 0:
        problems.append("login.lockout_*: threshold must be >= 1, window and duration positive")
    problems.extend(f"login.{p}" for p in policy_problems(
        s.redirect_hosts, s.login.default_redirect, allow_http=s.public_url.startswith("http://")))
    for domain in s.enrolment.domains:
        if "@" in domain or not re.fullmatch(r"[A-Za-z0-9.-]+\.[A-Za-z]{2,}", domain.strip()):
            problems.append(f"enrolment.domains: {domain!r} is not a domain (write example.com)")
    for email in s.enrolment.emails:
        if email.count("@") != 1:
            problems.append(f"enrolment.emails: {email!r} is not an email address")
    for name in s.check.jwt_upstreams:
        jwt_table = s.upstreams.get(name)
        if jwt_table is None:
            problems.append(f"check.jwt_upstreams: {name!r} is not a configured upstream")
        elif jwt_table.get("type") not in {"oidc", "auth0", "authing", "cognito", "google", "keycloak"}:
            problems.append(f"check.jwt_upstreams: {name!r} issues no JWTs (needs an OIDC upstream)")
    if s.access.default not in {"allow", "deny"}:
        problems.append(f"access.default: expected allow or deny, got {s.access.default!r}")
    problems.extend(rule_problems(s.access.rules))
    return problems


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
        return mask_url(str(value))
    if isinstance(value, Mapping):
        return {k: MASK if any(w in str(k).lower() for w in ("secret", "password", "token")) and v
                else _printable(f"{name}.{k}", v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_printable(name, v) for v in value]
    return value

