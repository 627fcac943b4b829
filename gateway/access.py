"""Who may enrol, who may pass where, and which roles they hold: every decision about a user, in one place.

- Enrolment (first and every login): allowed emails, email domains, upstream groups. A user who fails
  never gets a row or a token. With nothing configured, anyone the upstream admits may enrol.
- Access rules: ordered, first match wins, each ``allow`` or ``deny``; a rule matches when every
  condition it states holds (a list means any of its items). Conditions: ``hosts``, ``paths`` (prefix
  on a segment boundary, or a glob with ``*``/``**``/``?``), ``methods``, ``networks`` (client CIDR),
  ``groups`` (the user's roles or upstream groups), ``emails``, ``domains``, ``mfa``. No match: the
  configured default. Rules only ever see the normalised path, never the query string.
- Roles: upstream groups mapped to gateway roles by a table, refreshed at every login; the role a request
  acts as (Hasura's ``X-Hasura-Role``) is chosen here too.
- The :class:`Policy` seam the check core consults after a session is found valid: the configured rules
  (:class:`AccessPolicy`), or :class:`AllowAll` / :class:`DenyAll`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.facts import RequestFacts, ip_in_networks
from gateway.models import ActiveSession, User
from upstreams.base import unknown_key_problem

_RULE_KEYS = frozenset({"action", "hosts", "paths", "methods", "networks", "groups", "emails", "domains", "mfa",
                        "name"})
_LIST_KEYS = ("hosts", "paths", "methods", "networks", "groups", "emails", "domains")


def normalise_email(email: str) -> str:
    """Trimmed and lower-cased: how emails are compared everywhere."""
    return email.strip().lower()


def email_domain(email: str) -> str:
    """The exact domain after the *last* ``@`` (``a@evil.com@corp.com`` is not a corp.com address)."""
    email = normalise_email(email)
    local, at, domain = email.rpartition("@")
    if not at or not local or "@" in local:
        return ""
    return domain.rstrip(".")


def split_host_port(host: str) -> tuple[str, str]:
    """``"App.Example.com:8443"`` -> ``("app.example.com", "8443")``; IPv6 literals keep their brackets."""
    host = host.strip().lower()
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and (not name.startswith("[") or name.endswith("]")) and ":" not in name.strip("[]"):
        return name.rstrip("."), port
    if sep and port.isdigit() and name.startswith("[") and name.endswith("]"):
        return name, port
    return host.rstrip("."), ""


def host_matches(host: str, patterns: Sequence[str]) -> bool:
    """Case-insensitive exact host, or ``.example.com`` for example.com and its subdomains (label boundary).

    A pattern without a port ignores the request's port; one with a port must match it exactly.
    """
    name, port = split_host_port(host)
    for pattern in patterns:
        want_name, want_port = split_host_port(pattern)
        if want_port and want_port != port:
            continue
        if want_name.startswith("."):
            if name == want_name[1:] or name.endswith(want_name):
                return True
        elif name == want_name:
            return True
    return False


def _glob_to_regex(glob: str) -> re.Pattern[str]:
    parts: list[str] = []
    i = 0
    while i < len(glob):
        if glob.startswith("/**", i) and (i + 3 == len(glob) or glob[i + 3] == "/"):
            # "**" is zero or more whole segments: /admin/** covers /admin itself, and /a/**/b covers /a/b.
            parts.append("(?:/.*)?")
            i += 3
        elif glob.startswith("**", i):
            parts.append(".*")
            i += 2
        elif glob[i] == "*":
            parts.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            parts.append("[^/]")
            i += 1
        else:
            parts.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(parts))


@dataclass(frozen=True)
class PathPattern:
    """A path prefix (segment boundary) or a glob, matched against a normalised path."""

    text: str
    regex: re.Pattern[str] | None

    @classmethod
    def parse(cls, text: str) -> PathPattern:
        """Build from config text; globs contain ``*`` or ``?``."""
        return cls(text, _glob_to_regex(text) if any(c in text for c in "*?") else None)

    def matches(self, path: str) -> bool:
        """True when ``path`` (already normalised, no query) matches."""
        if self.regex is not None:
            return self.regex.fullmatch(path) is not None
        prefix = self.text
        if prefix.endswith("/"):
            return path.startswith(prefix) or path == prefix.rstrip("/")
        return path == prefix or path.startswith(prefix + "/")


@dataclass(frozen=True)
class AccessRule:
    """One parsed ``[[access.rules]]`` table."""

    allow: bool
    name: str = ""
    hosts: tuple[str, ...] = ()
    paths: tuple[PathPattern, ...] = ()
    methods: frozenset[str] = frozenset()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    groups: frozenset[str] = frozenset()
    emails: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()
    mfa: bool | None = None

    @property
    def needs_request(self) -> bool:
        """True when the rule looks at the original request (so it cannot match without one)."""
        return bool(self.hosts or self.paths or self.methods or self.networks)

    def matches(self, active: ActiveSession, facts: RequestFacts | None) -> bool:
        """True when every condition the rule states holds for this session and request."""
        user = active.user
        if self.needs_request:
            if facts is None:
                return False
            if self.hosts and not host_matches(facts.host, self.hosts):
                return False
            if self.paths and not (facts.path and any(p.matches(facts.path) for p in self.paths)):
                return False
            if self.methods and facts.method.upper() not in self.methods:
                return False
            if self.networks and not ip_in_networks(facts.client_ip, self.networks):
                return False
        if self.groups and not self.groups.intersection(g.casefold() for g in (*user.roles, *user.groups)):
            return False
        email = normalise_email(user.email)
        if self.emails and email not in self.emails:
            return False
        if self.domains and email_domain(email) not in self.domains:
            return False
        return self.mfa is None or active.session.mfa == self.mfa


def _strings(table: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = table.get(key, ())
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def access_problems(default: str, rules: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every problem with ``[access]``: its ``default`` and each of its ``rules`` (empty when sound)."""
    problems: list[str] = []
    if default not in {"allow", "deny"}:
        problems.append(f"access.default: expected allow or deny, got {default!r}")
    return problems + rule_problems(rules)


def rule_problems(tables: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every problem with ``[[access.rules]]`` (empty when all parse)."""
    problems: list[str] = []
    for index, table in enumerate(tables, 1):
        where = f"access.rules[{index}]"
        if table.get("action") not in {"allow", "deny"}:
            problems.append(f"{where}.action: expected allow or deny, got {table.get('action')!r}")
        problems.extend(unknown_key_problem(f"{where}.{key}", key, _RULE_KEYS)
                        for key in sorted(set(table) - _RULE_KEYS))
        for key in _LIST_KEYS:
            value = table.get(key, ())
            if not isinstance(value, str) and not (isinstance(value, list | tuple)
                                                   and all(isinstance(v, str) for v in value)):
                problems.append(f"{where}.{key}: expected a list of strings")
        for net in _strings(table, "networks") if isinstance(table.get("networks", ()), list | tuple | str) else ():
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                problems.append(f"{where}.networks: {net!r} is not a CIDR range")
        for path in _strings(table, "paths") if isinstance(table.get("paths", ()), list | tuple | str) else ():
            if not path.startswith("/"):
                problems.append(f"{where}.paths: {path!r} must start with /")
        if "mfa" in table and not isinstance(table["mfa"], bool):
            problems.append(f"{where}.mfa: expected true or false")
    return problems


def parse_rules(tables: Sequence[Mapping[str, Any]]) -> tuple[AccessRule, ...]:
    """Parse validated rule tables (see :func:`rule_problems`)."""
    rules: list[AccessRule] = []
    for table in tables:
        mfa = table.get("mfa")
        rules.append(AccessRule(
            allow=table["action"] == "allow",
            name=str(table.get("name", "")),
            hosts=tuple(h.lower() for h in _strings(table, "hosts")),
            paths=tuple(PathPattern.parse(p) for p in _strings(table, "paths")),
            methods=frozenset(m.upper() for m in _strings(table, "methods")),
            networks=tuple(ipaddress.ip_network(n, strict=False) for n in _strings(table, "networks")),
            groups=frozenset(g.casefold() for g in _strings(table, "groups")),
            emails=frozenset(normalise_email(e) for e in _strings(table, "emails")),
            domains=frozenset(d.strip().lower() for d in _strings(table, "domains")),
            mfa=mfa if isinstance(mfa, bool) else None,
        ))
    return tuple(rules)


class Policy(Protocol):
    """Decides whether a valid session may make this request. Must be fast and must not block."""

    def allows(self, active: ActiveSession, facts: RequestFacts | None) -> bool:
        """True to admit. ``facts`` is None when the caller described no original request."""


class AllowAll:
    """Admit every valid session (the default until access rules are configured)."""

    def allows(self, active: ActiveSession, facts: RequestFacts | None) -> bool:
        """Always True."""
        return True


class DenyAll:
    """Refuse every session: for maintenance windows and for testing the 403 path."""

    def allows(self, active: ActiveSession, facts: RequestFacts | None) -> bool:
        """Always False."""
        return False


class AccessPolicy:
    """The configured rules as a :class:`Policy`."""

    def __init__(self, rules: Sequence[AccessRule], default_allow: bool) -> None:
        self._rules = tuple(rules)
        self._default = default_allow

    def allows(self, active: ActiveSession, facts: RequestFacts | None) -> bool:
        """First matching rule decides; none matches: the default."""
        for rule in self._rules:
            if rule.matches(active, facts):
                return rule.allow
        return self._default


@dataclass(frozen=True)
class EnrolmentPolicy:
    """Who may enrol; ``None`` from :meth:`refusal` means admitted."""

    emails: frozenset[str]
    domains: frozenset[str]
    groups: frozenset[str]

    @classmethod
    def from_lists(cls, emails: Sequence[str], domains: Sequence[str], groups: Sequence[str]) -> EnrolmentPolicy:
        """Build from config lists (emails and domains compared case-insensitively)."""
        return cls(frozenset(normalise_email(e) for e in emails), frozenset(d.strip().lower() for d in domains),
                   frozenset(g.casefold() for g in groups))

    def refusal(self, email: str, email_verified: bool, groups: Sequence[str]) -> str | None:
        """None when this identity may enrol, else the reason (safe to show)."""
        if not (self.emails or self.domains or self.groups):
            return None
        if email_verified and email:
            normal = normalise_email(email)
            if normal in self.emails or email_domain(normal) in self.domains:
                return None
        if self.groups.intersection(g.casefold() for g in groups):
            return None
        if (self.emails or self.domains) and not email_verified:
            return "your account has no verified email address that this site accepts"
        return "your account is not on this site's list of allowed users"


def enrolment_problems(emails: Sequence[str], domains: Sequence[str]) -> list[str]:
    """Problems with ``[enrolment]`` lists: each email an address, each domain a bare domain name."""
    problems: list[str] = []
    for domain in domains:
        if "@" in domain or not re.fullmatch(r"[A-Za-z0-9.-]+\.[A-Za-z]{2,}", domain.strip()):
            problems.append(f"enrolment.domains: {domain!r} is not a domain (write example.com)")
    for email in emails:
        if email.count("@") != 1:
            problems.append(f"enrolment.emails: {email!r} is not an email address")
    return problems


_ROLE_NAME = re.compile(r"[^\s,\x00-\x1f\x7f]+")


def is_role_name(name: str) -> bool:
    """True for a usable role name: not empty, no whitespace, commas or control characters.

    Roles reach apps comma-separated (``X-Auth-Request-Groups``), so a group an upstream names
    ``"staff,admin"`` would read as two roles there, one of them ``admin``.
    """
    return _ROLE_NAME.fullmatch(name) is not None


def map_roles(groups: Sequence[str], table: Mapping[str, Sequence[str]], passthrough: bool) -> tuple[str, ...]:
    """Gateway roles for upstream ``groups``: mapped through ``table`` (group names compared without case,
    as GitHub's are), plus the groups themselves when ``passthrough`` and they are valid role names
    (:func:`is_role_name`); order kept, duplicates dropped."""
    folded = {group.casefold(): roles for group, roles in table.items()}
    roles: dict[str, None] = {}
    for group in groups:
        for role in folded.get(group.casefold(), ()):
            roles[role] = None
        if passthrough and is_role_name(group):
            roles[group] = None
    return tuple(roles)


def effective_roles(user: User, default_role: str) -> tuple[str, ...]:
    """The roles a user may act as: their own, or the configured default when they have none."""
    return user.roles or (default_role,)


def choose_role(user: User, requested: str | None, default_role: str) -> str | None:
    """The role for this request, or None when the requested role is not one the user holds.

    With no request, the configured default role wins if the user holds it, else their first role.
    """
    roles = effective_roles(user, default_role)
    if requested is not None:
        requested = requested.strip()
        return requested if requested in roles else None
    return default_role if default_role in roles else roles[0]
