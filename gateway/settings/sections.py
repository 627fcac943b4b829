"""The settings as plain data: one frozen dataclass per section, and ``Settings`` holding them all.

Each part of the gateway is handed only its own section (``CookieSettings``, ``LoginSettings``...) and
reports that section's problems itself (see :mod:`gateway.settings.checks`); :mod:`.sources` builds these
from defaults, the TOML file, ``GATEWAY_*`` variables and CLI flags.
"""

from __future__ import annotations

import ipaddress
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

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


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


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
    """The session cookie's name."""
    secure: bool = True
    """Mark the cookie Secure (sent over https only); false only for plain-http local development."""
    domain: str = ""
    """The cookie's Domain (``.example.com`` to share it with sibling subdomains); empty: host-only."""
    samesite: str = "Lax"
    """The cookie's SameSite: ``Lax``, ``Strict`` or ``None`` (``None`` needs ``secure``)."""


@dataclass(frozen=True)
class SessionSettings:
    """Session lifetimes, all enforced server-side."""

    lifetime: Duration = Duration(7 * 86400)
    """Absolute lifetime of a browser session."""
    idle_timeout: Duration = Duration(12 * 3600)
    """A browser session unused this long ends (0: never)."""
    api_token_lifetime: Duration = Duration(90 * 86400)
    """Default lifetime of API tokens minted with ``gateway tokens mint`` (they have no idle timeout)."""
    api_token_self_service: bool = True
    """Let people signed in with a browser mint, list and revoke their own API tokens at ``/tokens`` (and the
    JSON API at ``/auth/tokens``), as GitHub's personal access tokens; off: only ``gateway tokens mint``."""
    api_token_max_lifetime: Duration = Duration(365 * 86400)
    """Longest lifetime someone may choose for an API token they mint themselves (the default lifetime,
    ``api_token_lifetime``, is offered when it is no longer)."""
    api_tokens_per_user: int = 50
    """Most active API tokens one person may hold at once from ``/tokens`` (tokens minted there count,
    as do those from ``gateway tokens mint``, which ignores the limit)."""
    device_code_lifetime: Duration = Duration(600)
    """How long a CLI's device code (OAuth 2.0 Device Authorization Grant, RFC 8628: ``/auth/device/code``,
    approved at ``/device``) may wait for its person's approval, and its token be fetched, before it expires.
    Offered when ``api_token_self_service`` is on; 1 minute to 1 hour."""
    device_poll_interval: Duration = Duration(5)
    """How often a CLI may poll ``/auth/device/token`` for its token at first; one that polls sooner is told
    ``slow_down`` and must wait 5 s longer from then on (RFC 8628 §3.5). 1 to 60 seconds."""
    last_seen_grain: Duration = Duration(60)
    """A session's last use is written to the database at most this often."""
    sealing_key: str = ""
    """Base64 of 32 random bytes: the key that encrypts (AES-256-GCM) what a session keeps of its upstream:
    the ID token, sent back as ``id_token_hint`` when the user signs out, and with ``refresh`` the refresh
    token. Empty: nothing is kept and sign-out sends no hint. Generate one with ``openssl rand -base64 32``."""
    refresh: bool = False
    """Sliding renewal: a browser session in use is renewed before it ends for as long as its upstream
    still vouches for the user. The session keeps the upstream's refresh token (sealed: needs
    ``sealing_key``); every ``refresh_interval`` the next check of the session has it redeemed in the
    background, once across all replicas, re-reading roles and groups; the session then lives
    ``lifetime`` from that moment, and it ends when the upstream refuses. Off: sessions end at their
    absolute lifetime, as always. Upstreams without refresh tokens (vouch, GitHub OAuth apps) are not
    renewed."""
    refresh_interval: Duration = Duration(3600)
    """With ``refresh``: how long after its sign-in or last renewal a session in use is refreshed again
    (how soon the upstream's word on roles, groups and disabled users reaches the gateway). Must be
    shorter than ``lifetime``."""
    sealing_key_previous: str = ""
    """While rotating ``sealing_key``: the key it replaces. Values sealed with it still open, new ones use
    ``sealing_key``; empty it once the sessions begun before the rotation have ended (``session.lifetime``)."""


@dataclass(frozen=True)
class CacheSettings:
    """The in-process session cache on the check path."""

    ttl: Duration = Duration(5)
    """How long a known session is answered without asking the database."""
    max_entries: int = 100_000
    """Most sessions cached per process."""
    negative_ttl: Duration = Duration(2)
    """How long an unknown or revoked token is remembered as bad."""
    negative_max_entries: int = 100_000
    """Most bad tokens remembered per process."""
    degraded_ttl: Duration = Duration(0.5)
    """While the revocation feed is down, cached entries live at most this long, so a revocation made
    elsewhere still takes effect within a second."""
    stale_if_error: Duration = Duration(300)
    """While the database is unreachable, a session seen within this long keeps working from the cache
    (nobody can revoke it while the database is down); 0 turns it off."""


@dataclass(frozen=True)
class DatabaseSettings:
    """Connection pool and timeouts."""

    pool_min: int = 1
    """Connections the pool keeps open per process."""
    pool_max: int = 10
    """Most connections the pool opens per process."""
    connect_timeout: Duration = Duration(5)
    """How long opening a database connection may take."""
    query_timeout: Duration = Duration(2)
    """How long one database query may take."""
    sqlite_poll_interval: Duration = Duration(0.1)
    """SQLite only: how often each process polls for revocations made by others."""
    prepared_statements: bool = True
    """PostgreSQL: plan the session lookup once per connection; turn off behind PgBouncer in transaction
    pooling, where a connection is not yours between queries."""
    lookup_concurrency: int = 2
    """PostgreSQL: session lookups in flight at once per process, each on a connection of its own; more
    queue and are answered together (raise it for a remote database with a long round trip)."""
    feed_url: str = ""
    """PostgreSQL: the revocation feed's own connection (LISTEN/NOTIFY and the revocation log), when
    database_url goes through PgBouncer in transaction pooling, which drops notifications: point this
    straight at PostgreSQL (or at a session-pooled PgBouncer database). Empty: database_url."""


@dataclass(frozen=True)
class HasuraSettings:
    """The Hasura auth webhook."""

    default_role: str = "user"
    """Role given when the client asks for none (and to users without roles)."""
    anonymous_role: str = ""
    """Role for callers with no credentials at all; empty: deny them (401)."""
    session_variables: Mapping[str, str] = field(
        default_factory=lambda: FrozenDict({"X-Hasura-Email": "email"}))
    """Extra ``X-Hasura-*`` session variables from user fields (id, email, name, username, upstream,
    subject, roles, groups)."""
    max_body_bytes: int = 64 * 1024
    """Largest POST-mode webhook body accepted."""


@dataclass(frozen=True)
class CheckSettings:
    """The proxy check endpoint."""

    redirect_browsers: bool = False
    """Answer browsers without a session with a 302 to ``/login`` (Traefik, Caddy) instead of 401 (nginx);
    a check URL can also ask with ``?mode=redirect``."""
    jwt_upstreams: tuple[str, ...] = ()
    """OIDC upstreams whose JWT access tokens are accepted as ``Authorization: Bearer`` (signature, iss,
    aud, exp checked); the user is enrolled as at a sign-in."""


@dataclass(frozen=True)
class LoginSettings:
    """The login dance: attempts, redirect targets, abuse limits."""

    attempt_ttl: Duration = Duration(600)
    """How long a started sign-in may take (the attempt is single use, kept server-side)."""
    cookie_name: str = "gw_login"
    """Prefix of the short-lived cookie binding a sign-in attempt to the browser."""
    redirect_hosts: tuple[str, ...] = ()
    """Where ``/login`` and ``/logout`` may send the browser back to besides the gateway itself: exact
    hosts (``app.example.com:8443``) or ``.example.com`` for a domain and its subdomains."""
    default_redirect: str = "/"
    """Where to go when ``rd`` is missing or not allowed: a local path or an allowed absolute URL."""
    rate_limit: int = 30
    """Requests per minute per client address on ``/login`` and ``/callback`` (per replica)."""
    lockout_threshold: int = 5
    """Failed callbacks from one address within ``lockout_window`` that lock it out (on all replicas)."""
    lockout_window: Duration = Duration(900)
    """The window in which failed callbacks are counted."""
    lockout_duration: Duration = Duration(900)
    """How long a locked-out address stays locked out."""


@dataclass(frozen=True)
class EnrolmentSettings:
    """Who may become a user at first login (empty lists: anyone the upstream admits)."""

    emails: tuple[str, ...] = ()
    """Verified emails admitted (compared case-insensitively); a match in any of the three lists admits."""
    domains: tuple[str, ...] = ()
    """Domains whose verified emails are admitted (exact match after the last ``@``)."""
    groups: tuple[str, ...] = ()
    """Upstream groups admitted, verified email or not (GitHub: ``org`` or ``org/team``)."""


@dataclass(frozen=True)
class AccessSettings:
    """Who may pass where: ordered rules, first match wins, else ``default``."""

    default: str = "allow"
    """What happens when no rule matches: ``allow`` or ``deny``."""
    rules: RuleTables = RuleTables(())
    """Ordered ``[[access.rules]]`` tables, each an ``action`` and any of hosts, paths, methods, networks,
    groups, emails, domains and mfa; a rule matches when all it states hold."""


@dataclass(frozen=True)
class RolesSettings:
    """Gateway roles from upstream groups, refreshed at every login."""

    map: RoleMap = field(default_factory=lambda: RoleMap(FrozenDict({})))
    """``[roles.map]``: an upstream group -> the gateway roles (a name or a list) it gives."""
    passthrough_groups: bool = True
    """Also keep the upstream group names themselves as roles."""


@dataclass(frozen=True)
class ServingSettings:
    """What the serving machinery (process start, supervisor, fast lane) reads: top-level settings of the
    process, gathered by :attr:`Settings.serving` (their keys stay top-level, ``listen``, ``workers``...)."""

    listen: str
    workers: int
    access_log: bool
    fast_lane: bool
    keepalive_timeout: Duration
    shutdown_timeout: Duration
    shutdown_delay: Duration
    gc_full_interval: Duration
    max_header_bytes: int

    @property
    def listen_host_port(self) -> tuple[str, int]:
        """``listen`` split into host and port (validated by :func:`process_problems`)."""
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)


@dataclass(frozen=True)
class Settings:
    """Everything the gateway needs to run; built by :func:`load_settings`."""

    listen: str = "127.0.0.1:4180"
    """Address to listen on, HOST:PORT (in a container: ``0.0.0.0:4180``)."""
    public_url: str = "http://127.0.0.1:4180"
    """The gateway's own external URL: sign-in redirects and callbacks point here."""
    database_url: str = "sqlite:///gateway.db"
    """``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``postgresql://user:password@host:5432/db``."""
    migrate_on_start: bool = True
    """Apply schema migrations at start-up (else run ``gateway migrate`` first)."""
    trusted_proxies: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    """Peers (IP addresses or CIDR ranges) allowed to describe the original request (X-Forwarded-*,
    X-Original-*, X-Real-IP)."""
    log_format: str = "auto"
    """``auto`` (console on a terminal, JSON otherwise), ``json`` or ``console``."""
    log_level: str = "info"
    """``debug``, ``info``, ``warning`` or ``error``."""
    access_log: bool = False
    """One log line per request from aiohttp (the check path logs denials itself either way)."""
    fast_lane: bool = True
    """Answer the check endpoints on the lean built-in HTTP/1.1 front-end; anything else goes to aiohttp on
    the same port (with ``access_log`` on, aiohttp serves everything)."""
    workers: int = 1
    """Processes sharing the port (SO_REUSEPORT), each with its own cache and revocation listener."""
    keepalive_timeout: Duration = Duration(75)
    """How long an idle keep-alive connection stays open; keep it above the proxy's (nginx: 60s)."""
    shutdown_timeout: Duration = Duration(10)
    """On SIGTERM, how long in-flight requests get to finish."""
    shutdown_delay: Duration = Duration(0)
    """On SIGTERM, how long to keep accepting after readiness turns off, so load balancers stop first."""
    gc_full_interval: Duration = Duration(300)
    """Run full garbage collections on this timer instead of CPython's heuristic; 0: CPython's policy."""
    max_header_bytes: int = 16384
    """Largest request header line accepted; a larger one gets 400 before any handler runs."""
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
    """``[upstreams.<name>]`` tables, one per identity provider users may sign in with."""

    @property
    def serving(self) -> ServingSettings:
        """The settings the serving machinery reads."""
        return ServingSettings(
            listen=self.listen, workers=self.workers, access_log=self.access_log, fast_lane=self.fast_lane,
            keepalive_timeout=self.keepalive_timeout, shutdown_timeout=self.shutdown_timeout,
            shutdown_delay=self.shutdown_delay, gc_full_interval=self.gc_full_interval,
            max_header_bytes=self.max_header_bytes)

    @property
    def listen_host_port(self) -> tuple[str, int]:
        """``listen`` split into host and port (validated by :func:`process_problems`)."""
        return self.serving.listen_host_port

    @property
    def public_host(self) -> str:
        """``public_url``'s host[:port], lower-cased (validated by :func:`process_problems`)."""
        return urlsplit(self.public_url).netloc.rpartition("@")[2].lower()

    @property
    def redirect_hosts(self) -> tuple[str, ...]:
        """Hosts a login may return to: the gateway's own plus ``login.redirect_hosts``."""
        return (self.public_host, *self.login.redirect_hosts)

    @property
    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """``trusted_proxies`` parsed (validated by :func:`process_problems`)."""
        return tuple(ipaddress.ip_network(n, strict=False) for n in self.trusted_proxies)


SECRET_SETTINGS = frozenset({"database_url", "database.feed_url", "session.sealing_key",
                             "session.sealing_key_previous"})
"""Settings whose values must never be printed."""


class SettingsError(Exception):
    """Raised by :func:`load_or_raise` when the settings have problems; ``problems`` lists them all."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def process_problems(s: Settings) -> list[str]:
    """Problems with the top-level settings: where the process listens, its public URL, the proxies it
    trusts, its workers and limits.

    They belong to the serving machinery, which sits above everything but the entry point (nothing may
    import it), so they are checked here, next to the properties that parse them.
    """
    problems: list[str] = []
    _host, sep, port = s.listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        problems.append(f"listen: expected HOST:PORT, got {s.listen!r}")

    public = urlsplit(s.public_url)
    if public.scheme not in {"http", "https"} or not public.hostname:
        problems.append(f"public_url: expected an absolute http(s) URL, got {s.public_url!r}")
    elif public.query or public.fragment:
        problems.append("public_url: must not carry a query or fragment")

    for net in s.trusted_proxies:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            problems.append(f"trusted_proxies: {net!r} is not an IP address or CIDR range")

    if s.workers < 1:
        problems.append("workers: must be at least 1")
    if 0 < s.gc_full_interval < 1:
        problems.append("gc_full_interval: must be 0 (CPython's own policy) or at least 1s")
    if s.max_header_bytes < 1024:
        problems.append("max_header_bytes: must be at least 1024")
    return problems
