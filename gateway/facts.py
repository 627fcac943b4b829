"""What the check core knows about the original request: method, URL, normalised path, client address.

Forwarded headers (``X-Original-*``, ``X-Forwarded-*``, ``X-Real-IP``) are honoured only when the TCP peer
is a trusted proxy; from anyone else they are ignored because a client can send them. Even from a trusted
proxy they are believed only when they are unambiguous: one value per header, an authority that is
exactly ``host[:port]``, and every source that describes the same fact agreeing with the others.
Anything else is MalformedOriginalRequest, which the check answers with 401: facts are never repaired,
because the proxy and the app may repair them differently. Everything here works on plain header
mappings, independent of the web framework.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import unquote

from multidict import MultiMapping

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_FORWARDED_URL_HEADERS = ("X-Original-URL", "X-Forwarded-Uri", "X-Original-URI", "X-Forwarded-Host")
MAX_URL_LENGTH = 8192


class MalformedOriginalRequest(ValueError):
    """A trusted proxy described the original request in a way that is unparseable or ambiguous: deny it."""


class RequestFacts(NamedTuple):
    """The original request as the proxy saw it. Empty strings mean "not known".

    ``host`` is the canonical authority (lower case, no trailing dot, the port only when it is not the
    scheme's default); ``path`` is what rules match on (see :func:`normalise_path`); ``url`` is the
    original absolute URL with that canonical authority (what a login redirect returns to), empty when
    the proxy did not tell us.
    """

    method: str
    scheme: str
    host: str
    path: str
    url: str
    client_ip: str
    wants_html: bool


class TrustedProxies:
    """Decides whether a peer address may speak for the client; remembers recent answers."""

    def __init__(self, networks: Sequence[Network]) -> None:
        self._networks = tuple(networks)
        self.is_trusted = lru_cache(maxsize=1024)(self._is_trusted)

    def _is_trusted(self, address: str) -> bool:
        return ip_in_networks(address, self._networks)


def ip_in_networks(address: str, networks: Sequence[Network]) -> bool:
    """True when ``address`` (IPv4, IPv6, IPv4-mapped IPv6; a zone suffix ignored) is in any network."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


# ---- paths -----------------------------------------------------------------------------------------------

_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_PLAIN_PATH = re.compile(r"[A-Za-z0-9/._~!$&'()*+,=:@-]*")
"""Characters that need no decoding and hide no parameter, fragment or backslash (RFC 3986 pchar, less
``%`` and ``;``)."""
_UNSAFE_IN_PATH = re.compile(r"[\x00-\x20\x7f#]")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _decode_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 for an absolute path: ``/a/b/../c`` -> ``/a/c``, ``/a/x/..`` -> ``/a/``.

    A final ``.`` or ``..`` leaves a trailing slash (the directory itself), and ``..`` above the root
    stays at the root, exactly as the RFC (and so nginx, and any conforming app) resolves them.
    """
    segments = path.split("/")[1:]
    out: list[str] = []
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment in (".", ".."):
            if segment == ".." and out:
                out.pop()
            if index == last:
                out.append("")
            continue
        out.append(segment)
    return "/" + "/".join(out)


def _merge_slashes(path: str) -> str:
    while "//" in path:
        path = path.replace("//", "/")
    return path


def _drop_parameters(path: str) -> str:
    return "/".join(segment.partition(";")[0] for segment in path.split("/"))


def _has_dot_segment(path: str) -> bool:
    return any(segment in (".", "..") for segment in path.replace("\\", "/").split("/"))


def normalise_path(raw_path: str) -> str:
    """The path access rules match on, or MalformedOriginalRequest when apps could read it differently.

    Steps: percent-escapes of unreserved characters (letters, digits, ``-._~``, so ``%2e`` too) are
    decoded; empty segments are merged (``//admin`` is ``/admin``, as nginx and most frameworks route
    it); dot segments are removed as RFC 3986 5.2.4 says, the trailing slash kept (``/admin/x/..`` is
    ``/admin/``); ``;parameters`` are dropped from each segment (Tomcat, Jetty and Spring route
    ``/admin;x/y`` as ``/admin/y``); the rest is percent-decoded once as UTF-8.

    Refused rather than repaired, because two common servers would resolve it to different resources:
    a malformed escape, bytes that are not UTF-8, control characters or spaces, a raw ``#``; empty
    segments before a dot segment (``/a//../b`` is ``/a/b`` to the RFC but ``/b`` after merging slashes);
    dot segments that appear only after dropping parameters or decoding (``/a/..;/b``, ``/a/..%2fb``,
    ``/a/..%5cb``, ``/a/..\\b``); and parameters whose dropping before or after resolving dot segments
    gives different paths (``/a/;x/../b``). The query is never part of the path.
    """
    if not raw_path.startswith("/"):
        raw_path = "/" + raw_path
    if _PLAIN_PATH.fullmatch(raw_path) and "//" not in raw_path and "/." not in raw_path:
        return raw_path  # nothing to decode, merge or resolve: the common case, kept cheap
    if _UNSAFE_IN_PATH.search(raw_path):
        raise MalformedOriginalRequest("original path has a fragment, spaces or control characters")
    decoded = raw_path
    if "%" in raw_path:
        if raw_path.count("%") != len(_ESCAPE.findall(raw_path)):
            raise MalformedOriginalRequest("original path has a malformed percent-escape")
        decoded = _ESCAPE.sub(_decode_unreserved, raw_path)
    path = remove_dot_segments(_merge_slashes(decoded))
    if "//" in decoded and _merge_slashes(remove_dot_segments(decoded)) != path:
        raise MalformedOriginalRequest("original path has empty segments before a dot segment")
    if ";" in decoded:
        # Servlet containers drop parameters before resolving dot segments, the RFC after: both must agree.
        path = _merge_slashes(_drop_parameters(path))
        if _has_dot_segment(path) or path != remove_dot_segments(_merge_slashes(_drop_parameters(decoded))):
            raise MalformedOriginalRequest("original path reads differently with its ;parameters dropped")
    if "%" in path:
        try:
            path = unquote(path, encoding="utf-8", errors="strict")
        except UnicodeDecodeError as exc:
            raise MalformedOriginalRequest("original path is not UTF-8") from exc
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
            raise MalformedOriginalRequest("original path has control characters")
        if _has_dot_segment(path):
            raise MalformedOriginalRequest("original path hides a dot segment behind an encoded slash")
        path = _merge_slashes(path)
    elif "\\" in path and _has_dot_segment(path):
        raise MalformedOriginalRequest("original path hides a dot segment behind a backslash")
    return path


# ---- authorities, URLs and single-valued headers ---------------------------------------------------------

_AUTHORITY = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?)(?::([0-9]{1,5}))?")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)", re.DOTALL)
_METHOD = re.compile(r"[A-Za-z]{1,20}")
_METHOD_OVERRIDES = ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override")


def parse_authority(authority: str, scheme: str) -> tuple[str, str]:
    """``(host name, canonical authority)`` for exactly ``host[:port]``; MalformedOriginalRequest otherwise.

    The name is lower-cased without a trailing dot (an IPv6 literal keeps its brackets); the canonical
    authority adds the port unless it is the scheme's default. Userinfo, an empty host, a port out of
    range and every other character (``#``, ``?``, ``@``, ``,``, ``/``, spaces) are refused, never
    repaired: proxies pick the site from the part before ``:``, so nothing after it may be guessed at.
    """
    match = _AUTHORITY.fullmatch(authority)
    if match is None:
        raise MalformedOriginalRequest("original host is not exactly host[:port]")
    host, port = match.group(1).lower(), match.group(2)
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError as exc:
            raise MalformedOriginalRequest("original host is not a valid IPv6 literal") from exc
    host = host.rstrip(".")
    if not host:
        raise MalformedOriginalRequest("original host is empty")
    if port is None:
        return host, host
    number = int(port)
    if not 0 < number < 65536:
        raise MalformedOriginalRequest("original port is out of range")
    if number == _DEFAULT_PORTS.get(scheme):
        return host, host
    return host, f"{host}:{number}"


def _one(headers: MultiMapping[str], name: str) -> str | None:
    """The single value of ``name``, stripped; None when absent. Several headers of one name are refused."""
    values = headers.getall(name, ())
    if not values:
        return None
    if len(values) > 1:
        raise MalformedOriginalRequest(f"several {name} headers")
    return values[0].strip()


def _agreed(name_a: str, value_a: str | None, name_b: str, value_b: str | None) -> str | None:
    if value_a is not None and value_b is not None and value_a != value_b:
        raise MalformedOriginalRequest(f"{name_a} and {name_b} disagree")
    return value_a if value_a is not None else value_b


def _request_target(target: str) -> str:
    """A request target as proxies pass it on: ``/path[?query]``, printable ASCII, no fragment."""
    if not target.startswith("/") or len(target) > MAX_URL_LENGTH or not target.isascii() or "#" in target \
            or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in target):
        raise MalformedOriginalRequest("original URI must be /path[?query] in printable ASCII")
    return target


def _scheme(text: str) -> str:
    """One scheme, or the same scheme repeated in a comma list (proxy chains append); http(s) only."""
    values = {part.strip().lower() for part in text.split(",")}
    if len(values) != 1:
        raise MalformedOriginalRequest("X-Forwarded-Proto names several schemes")
    scheme = values.pop()
    if scheme not in _DEFAULT_PORTS:
        raise MalformedOriginalRequest("original scheme is not http or https")
    return scheme


def _wants_html(headers: MultiMapping[str]) -> bool:
    if headers.get("X-Requested-With", "").lower() == "xmlhttprequest":
        return False
    return "text/html" in headers.get("Accept", "")


def client_address(headers: MultiMapping[str], peer: str, proxies: TrustedProxies) -> str:
    """The client's address: from X-Forwarded-For / X-Real-IP when ``peer`` is a trusted proxy, else ``peer``.

    Several ``X-Forwarded-For`` headers are one list (RFC 9110 5.3), read from the nearest hop.
    """
    if not peer or not proxies.is_trusted(peer):
        return peer
    forwarded_for = ",".join(headers.getall("X-Forwarded-For", ()))
    if forwarded_for:
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        # Walk from the nearest hop: the first address that is not one of our proxies is the client.
        for hop in reversed(hops):
            if not proxies.is_trusted(hop):
                return hop
        if hops:
            return hops[0]
    return headers.get("X-Real-IP", "").strip() or peer


def request_facts(headers: MultiMapping[str], *, peer: str, method: str, own_path: str,
                  proxies: TrustedProxies) -> RequestFacts:
    """Build the facts for one check request.

    ``headers`` must look names up case-insensitively (aiohttp's CIMultiDict does); ``own_path`` is the
    part of the check request's own path after the check prefix (Envoy puts the original path there).
    From a trusted proxy the sources are: ``X-Original-URL`` (nginx, ingress-nginx), whose authority must
    name the same host as ``X-Forwarded-Host`` and whose path and query must equal ``X-Original-URI``
    when those are sent too; or ``X-Forwarded-Proto`` / ``X-Forwarded-Host`` (else ``Host``) /
    ``X-Forwarded-Uri`` or ``X-Original-URI`` (Traefik, Caddy); or ``Host`` and ``own_path`` (Envoy).
    The nginx and the Traefik/Caddy families at once, two values of one header, an authority that is not
    exactly ``host[:port]``, an ``own_path`` that another source contradicts, or a method-override
    header (``X-HTTP-Method-Override`` and kin) naming another method raise MalformedOriginalRequest.
    """
    wants_html = _wants_html(headers)
    trusted = bool(peer) and proxies.is_trusted(peer)
    if not trusted:
        path = normalise_path(_request_target(own_path).split("?", 1)[0]) if own_path else ""
        return RequestFacts(method, "", "", path, "", peer, wants_html)

    named_method = _agreed("X-Original-Method", _one(headers, "X-Original-Method"),
                           "X-Forwarded-Method", _one(headers, "X-Forwarded-Method"))
    if named_method is not None:
        if not _METHOD.fullmatch(named_method):
            raise MalformedOriginalRequest("original method is not a token")
        method = named_method
    for override in _METHOD_OVERRIDES:
        named = headers.get(override)
        if named is not None and named.strip().upper() != method.upper():
            # Frameworks that honour it run the named method, while rules would judge the sent one.
            raise MalformedOriginalRequest(f"{override} names another method than the request")
    client_ip = client_address(headers, peer, proxies)
    original_url = _one(headers, "X-Original-URL")
    original_uri = _one(headers, "X-Original-URI")
    forwarded_uri = _one(headers, "X-Forwarded-Uri")
    forwarded_host = _one(headers, "X-Forwarded-Host")
    if (original_url is not None or original_uri is not None) and forwarded_uri is not None:
        # nginx sets X-Original-*, Traefik and Caddy X-Forwarded-*; each passes the other family through
        # from the client untouched. Both at once means one was forged: refuse rather than pick.
        raise MalformedOriginalRequest("both X-Original-* and X-Forwarded-Uri describe the request")

    if original_url is not None:
        if len(original_url) > MAX_URL_LENGTH:
            raise MalformedOriginalRequest("original URL is too long")
        match = _URL.fullmatch(original_url)
        if match is None:
            raise MalformedOriginalRequest("original URL is not an absolute URL")
        scheme = _scheme(match.group(1))
        host_name, authority = parse_authority(match.group(2), scheme)
        target = _request_target(match.group(3) or "/")
        _agreed("X-Original-URL's path", target, "X-Original-URI", original_uri)
        if forwarded_host is not None and parse_authority(forwarded_host, scheme)[0] != host_name:
            raise MalformedOriginalRequest("X-Original-URL and X-Forwarded-Host name different hosts")
    else:
        scheme = _scheme(_one(headers, "X-Forwarded-Proto") or "http")
        uri = _agreed("X-Forwarded-Uri", forwarded_uri, "X-Original-URI", original_uri)
        host_text = forwarded_host if forwarded_host is not None else _one(headers, "Host")
        if uri is None and not own_path:
            host = parse_authority(host_text, scheme)[1] if host_text is not None else ""
            return RequestFacts(method.upper(), scheme, host, "", "", client_ip, wants_html)
        target = _request_target(uri if uri is not None else own_path)
        if host_text is None:
            # A request described without its host would pass every rule scoped to hosts by.
            raise MalformedOriginalRequest("the original request's host is missing")
        authority = parse_authority(host_text, scheme)[1]
    if own_path and own_path != target:
        raise MalformedOriginalRequest("the check path and the forwarded headers describe different requests")
    path = normalise_path(target.split("?", 1)[0])
    url = f"{scheme}://{authority}{target}" if authority else ""
    return RequestFacts(method.upper(), scheme, authority, path, url, client_ip, wants_html)


def has_forwarded_headers(headers: MultiMapping[str]) -> bool:
    """True when the request carries any header describing an original URL (cheap pre-check)."""
    return any(name in headers for name in _FORWARDED_URL_HEADERS)
