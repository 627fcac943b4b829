"""Redirect target validation: the ``rd`` parameter becomes an allowed absolute URL or a local path, never more.

The checks are deliberately stricter than a browser's URL parser: anything the browser might read differently
from how we read it (backslashes, tabs, missing or extra slashes, userinfo, encoded authority bytes, numeric
hosts in exotic notations, dot segments in a local path) is rejected rather than interpreted. An accepted
target is re-serialised from the parts we checked (lower-case scheme and host, IDNA host, no default port,
non-ASCII and unsafe ASCII in the path percent-encoded), so the ``Location`` header carries exactly what was
validated.

Allow-list entries (``RedirectPolicy.allowed_hosts``):

- ``app.example.com``: that host only, on the scheme's default port (443 for https, 80 for http).
- ``app.example.com:8443``: that host on port 8443 only.
- ``.example.com``: ``example.com`` itself and every sub-domain (``a.example.com``, ``a.b.example.com``), matched
  at a label boundary, so ``evilexample.com`` does not match. Ports follow the same rule as exact entries.
- ``127.0.0.1`` / ``[::1]``: IP literals match only exactly (never as suffixes) and only when the URL uses the
  same canonical notation (dotted quad; bracketed IPv6). ``2130706433``, ``0x7f.1``, ``127.1`` never match.

Hosts compare case-insensitively after IDNA (UTS #46, as browsers do) with one trailing dot removed.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import quote, unquote

import idna  # a dependency of yarl (hence of aiohttp); it implements UTS #46 mapping the way browsers do

MAX_TARGET_LENGTH = 2048
"""Longer targets fall back to the default: no legitimate return URL needs more."""

_DEFAULT_PORTS = MappingProxyType({"http": 80, "https": 443})
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PORT_RE = re.compile(r"[1-9][0-9]{0,4}")
_BAD_PERCENT_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_RE = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")  # dotted quad without leading zeros: the canonical form
# WHATWG URL: a host whose last label is a decimal or 0x-hex number is parsed as an IPv4 address.
_NUMERIC_LABEL_RE = re.compile(r"[0-9]+|0x[0-9a-f]*")
# ASCII that is legal in a browser URL but not in an RFC 3986 URI; encoded so the header is a clean URI.
_ENCODE_IN_PATH = frozenset('"<>`{}|^')
# Decoding a local path repeatedly (a server behind us may decode again) must settle within this many rounds.
_MAX_DECODE_ROUNDS = 4


@dataclass(frozen=True, slots=True)
class _HostRule:
    """One parsed allow-list entry: a canonical host, whether sub-domains match, and the one allowed port."""

    host: str
    suffix: bool
    port: int | None  # None: the scheme's default port

    def allows(self, host: str, is_ip: bool, scheme: str, port: int | None) -> bool:
        wanted = self.port if self.port is not None else _DEFAULT_PORTS[scheme]
        effective = port if port is not None else _DEFAULT_PORTS[scheme]
        if wanted != effective:
            return False
        if self.suffix:
            return not is_ip and (host == self.host or host.endswith("." + self.host))
        return host == self.host


@dataclass(frozen=True, slots=True)
class RedirectPolicy:
    """Where redirects may go.

    ``allowed_hosts`` entries are described in the module docstring; an entry :func:`policy_problems` reports
    (malformed, or a suffix covering a whole top-level domain) never matches. ``default_target`` is returned
    verbatim whenever a target is refused. Plain-http targets need ``allow_http`` (development); local paths
    and https targets are always considered.
    """

    allowed_hosts: tuple[str, ...]
    default_target: str
    allow_http: bool = False
    _rules: tuple[_HostRule, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rules = tuple(rule for rule in map(_parse_entry, self.allowed_hosts) if isinstance(rule, _HostRule))
        object.__setattr__(self, "_rules", rules)


def safe_redirect_target(raw: str | None, policy: RedirectPolicy) -> str:
    """Return a target safe to put in a Location header: an allowed absolute http(s) URL or a local path.

    Anything else (missing, empty, too long, malformed, another scheme, a host not on the allow-list, any form
    a browser could read differently) yields ``policy.default_target``. An accepted target comes back in
    canonical form, which is ``raw`` itself when ``raw`` is already canonical. Never raises.
    """
    target = _canonical_target(raw, policy)
    return policy.default_target if target is None else target


def is_safe_redirect_target(raw: str | None, policy: RedirectPolicy) -> bool:
    """True when :func:`safe_redirect_target` would accept ``raw`` rather than fall back to the default."""
    return _canonical_target(raw, policy) is not None


def policy_problems(allowed_hosts: Sequence[str], default_target: str, *, allow_http: bool = False) -> list[str]:
    """Every problem with a redirect configuration, for ``check-config``; an empty list means it is sound.

    Reports malformed allow-list entries (schemes, paths, userinfo, wildcards, bad ports, non-canonical IP
    literals, suffixes covering a whole top-level domain or an IP) and a default target that the policy itself
    would refuse or rewrite. Messages start with the setting they concern (``redirect_hosts``,
    ``default_redirect``) so a caller can prefix its section name. Pass the same hosts and ``allow_http`` the
    runtime :class:`RedirectPolicy` gets, or the default target may be judged against the wrong list.
    """
    problems: list[str] = []
    for entry in allowed_hosts:
        parsed = _parse_entry(entry)
        if isinstance(parsed, str):
            problems.append(f"redirect_hosts: {entry!r}: {parsed}")
    if not default_target:
        problems.append("default_redirect: is empty")
    else:
        policy = RedirectPolicy(tuple(allowed_hosts), default_target, allow_http)
        canonical = _canonical_target(default_target, policy)
        if canonical is None:
            problems.append(
                f"default_redirect: {default_target!r} is not itself allowed: use a local path such as '/'"
                " or an absolute URL on an allowed host"
            )
        elif canonical != default_target:
            problems.append(f"default_redirect: {default_target!r} should be written as {canonical!r}")
    return problems


def _canonical_target(raw: str | None, policy: RedirectPolicy) -> str | None:
    """The canonical form of an acceptable target, or None."""
    if not raw or len(raw) > MAX_TARGET_LENGTH or "\\" in raw or _has_unsafe_char(raw):
        return None
    target = _canonical_local_path(raw) if raw.startswith("/") else _canonical_absolute_url(raw, policy)
    if target is None or len(target) > MAX_TARGET_LENGTH:
        return None
    return target


def _canonical_local_path(raw: str) -> str | None:
    """``raw`` (starting with "/") re-encoded, if it and every percent-decoding of it stay a plain local path."""
    if _BAD_PERCENT_RE.search(raw):
        return None
    form = raw
    for _ in range(_MAX_DECODE_ROUNDS):
        if not _is_plain_local_path(form):
            return None
        try:
            decoded = unquote(form, errors="strict")
        except UnicodeDecodeError:
            return None
        if decoded == form:
            return _encode_unsafe_ascii(raw)
        form = decoded
    return None  # still decoding after several rounds: layered encoding has no honest use here


def _is_plain_local_path(form: str) -> bool:
    """True for "/" or "/x..." where x is not a slash, with no backslash, control, space, or dot segment."""
    if not form.startswith("/") or form.startswith("//") or "\\" in form or _has_unsafe_char(form):
        return False
    # Dot segments are how "/./\evil.com" and "/.//evil.com" become "//evil.com" once resolved; a return
    # target never needs them (browsers resolve them before sending a URL), so refuse rather than normalise.
    path = re.split(r"[?#]", form, maxsplit=1)[0]
    return not any(segment in (".", "..") for segment in path.split("/"))


def _canonical_absolute_url(raw: str, policy: RedirectPolicy) -> str | None:
    """``scheme://host[:port][rest]`` rebuilt from checked parts, if the scheme and host are allowed."""
    match = _SCHEME_RE.match(raw)
    if match is None:
        return None  # a relative reference such as "evil.com" or "foo/bar"
    scheme = match.group(1).lower()
    if scheme not in _DEFAULT_PORTS or (scheme == "http" and not policy.allow_http):
        return None
    after_scheme = raw[match.end() :]
    # Browsers accept "https:evil.com", "https:/evil.com" and "https:///evil.com" as hosts; we demand exactly "//".
    if not after_scheme.startswith("//"):
        return None
    after_slashes = after_scheme[2:]
    authority = re.split(r"[/?#]", after_slashes, maxsplit=1)[0]
    rest = after_slashes[len(authority) :]
    # No userinfo at all, and no percent-encoding in the authority (browsers decode it before parsing the host).
    if not authority or "@" in authority or "%" in authority:
        return None
    split = _split_host_port(authority)
    if split is None:
        return None
    host_text, port = split
    host = _canonical_host(host_text)
    if host is None:
        return None
    is_ip = _is_ip_literal(host)
    if not any(rule.allows(host, is_ip, scheme, port) for rule in policy._rules):
        return None
    if _BAD_PERCENT_RE.search(rest):
        return None
    port_text = "" if port is None or port == _DEFAULT_PORTS[scheme] else f":{port}"
    return f"{scheme}://{host}{port_text}{_encode_unsafe_ascii(rest)}"


def _split_host_port(authority: str) -> tuple[str, int | None] | None:
    """Split ``host[:port]`` or ``[v6][:port]``; a port must be 1-65535 without leading zeros or be absent."""
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            return None
        host, tail = authority[: close + 1], authority[close + 1 :]
        if tail and not tail.startswith(":"):
            return None
        port_text = tail[1:] if tail else None
    else:
        host, colon, port_text_or_empty = authority.partition(":")
        port_text = port_text_or_empty if colon else None
    if port_text is None:
        return host, None
    if not _PORT_RE.fullmatch(port_text) or int(port_text) > 65535:
        return None
    return host, int(port_text)


def _canonical_host(text: str) -> str | None:
    """Lower-case ASCII (IDNA) host without trailing dot, canonical IPv4, or ``[compressed IPv6]``; else None."""
    if text.startswith("["):
        inner = text[1:-1] if text.endswith("]") else ""
        if not inner or not re.fullmatch(r"[0-9A-Fa-f:.]+", inner):
            return None
        try:
            return f"[{ipaddress.IPv6Address(inner).compressed}]"
        except ValueError:
            return None
    if text.isascii():
        host = text.lower()
    else:
        try:
            host = idna.encode(text, uts46=True).decode("ascii")
        except UnicodeError:
            return None
    if host.endswith("."):
        host = host[:-1]
    if not host or len(host) > 253:
        return None
    labels = host.split(".")
    if _NUMERIC_LABEL_RE.fullmatch(labels[-1]):
        # The browser reads this as an IPv4 address, in one of many notations; only the canonical one passes.
        return host if _IPV4_RE.fullmatch(host) else None
    if not all(_LABEL_RE.fullmatch(label) for label in labels):
        return None
    return host


def _is_ip_literal(host: str) -> bool:
    return host.startswith("[") or _IPV4_RE.fullmatch(host) is not None


def _parse_entry(entry: str) -> _HostRule | str:
    """Parse one allow-list entry into a rule, or explain why it is malformed."""
    if not entry or entry != entry.strip() or _has_unsafe_char(entry):
        return "empty or contains whitespace or control characters"
    if "://" in entry or entry.lower().startswith(("http:", "https:")):
        return "write a host name, not a URL"
    if "*" in entry:
        return "wildcards are not supported; write '.example.com' to allow example.com and its sub-domains"
    if any(char in entry for char in "/\\?#@%"):
        return "a host may not contain a path, query, userinfo or percent-encoding"
    suffix = entry.startswith(".")
    if not entry.startswith("[") and entry.count(":") > 1:
        return "write an IPv6 address in brackets, e.g. '[::1]'"
    split = _split_host_port(entry[1:] if suffix else entry)
    if split is None:
        return "malformed port (expected host:1-65535)"
    host_text, port = split
    host = _canonical_host(host_text)
    if host is None:
        return "not a valid host name or canonical IP address (IPv4 as a.b.c.d, IPv6 in brackets)"
    if suffix and _is_ip_literal(host):
        return "an IP address cannot be a suffix"
    if suffix and "." not in host:
        return f"the suffix '.{host}' would allow a whole top-level domain; list exact hosts instead"
    return _HostRule(host=host, suffix=suffix, port=port)


def _has_unsafe_char(text: str) -> bool:
    """True if ``text`` has ASCII controls or space, or any Unicode control, format, separator or unassigned char."""
    for char in text:
        if char <= " " or char == "\x7f":
            return True
        if not char.isascii() and unicodedata.category(char)[0] in "CZ":
            return True
    return False


def _encode_unsafe_ascii(text: str) -> str:
    """Percent-encode non-ASCII (as UTF-8) and the ASCII a URI may not carry raw; everything else is kept."""
    if text.isascii() and not any(char in _ENCODE_IN_PATH for char in text):
        return text
    return "".join(quote(char, safe="") if not char.isascii() or char in _ENCODE_IN_PATH else char for char in text)
