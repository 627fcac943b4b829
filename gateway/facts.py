"""What the check core knows about the original request: method, URL, normalised path, client address.

Forwarded headers (``X-Original-*``, ``X-Forwarded-*``, ``X-Real-IP``) are honoured only when the TCP peer
is a trusted proxy; from anyone else they are ignored because a client can send them. Everything here
works on plain header mappings, independent of the web framework.
"""

from __future__ import annotations

import ipaddress
import posixpath
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import SplitResult, unquote, urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_FORWARDED_URL_HEADERS = ("X-Original-URL", "X-Forwarded-Uri", "X-Original-URI", "X-Forwarded-Host")
MAX_URL_LENGTH = 8192


class MalformedOriginalRequest(ValueError):
    """A trusted proxy described the original request in a way that cannot be parsed: deny it."""


class RequestFacts(NamedTuple):
    """The original request as the proxy saw it. Empty strings mean "not known".

    ``path`` is percent-decoded with dot segments removed (what rules match on); ``url`` is the original
    absolute URL as sent (what a login redirect returns to), empty when the proxy did not tell us.
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


def normalise_path(raw_path: str) -> str:
    """Percent-decode once and remove dot segments; raise MalformedOriginalRequest on bad bytes.

    ``/public/../admin`` and ``/%2e%2e/admin`` both become ``/admin``; the query is never part of it.
    """
    if not raw_path.startswith("/"):
        raw_path = "/" + raw_path
    try:
        decoded = unquote(raw_path, encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise MalformedOriginalRequest("original path is not UTF-8") from exc
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
        raise MalformedOriginalRequest("original path has control characters")
    normalised = posixpath.normpath(decoded)
    if normalised.startswith("//"):
        normalised = "/" + normalised.lstrip("/")
    if decoded.endswith("/") and normalised != "/":
        normalised += "/"
    return normalised


def _parse_absolute(url: str) -> SplitResult:
    if len(url) > MAX_URL_LENGTH or any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise MalformedOriginalRequest("original URL too long or has control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise MalformedOriginalRequest("original URL cannot be parsed") from exc
    if parts.scheme.lower() not in {"http", "https"} or not parts.hostname:
        raise MalformedOriginalRequest("original URL is not an absolute http(s) URL")
    return parts


def _wants_html(headers: Mapping[str, str]) -> bool:
    if headers.get("X-Requested-With", "").lower() == "xmlhttprequest":
        return False
    return "text/html" in headers.get("Accept", "")


def client_address(headers: Mapping[str, str], peer: str, proxies: TrustedProxies) -> str:
    """The client's address: from X-Forwarded-For / X-Real-IP when ``peer`` is a trusted proxy, else ``peer``."""
    if not peer or not proxies.is_trusted(peer):
        return peer
    forwarded_for = headers.get("X-Forwarded-For")
    if forwarded_for:
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        # Walk from the nearest hop: the first address that is not one of our proxies is the client.
        for hop in reversed(hops):
            if not proxies.is_trusted(hop):
                return hop
        if hops:
            return hops[0]
    return headers.get("X-Real-IP", "").strip() or peer


def request_facts(headers: Mapping[str, str], *, peer: str, method: str, own_path: str,
                  proxies: TrustedProxies) -> RequestFacts:
    """Build the facts for one check request.

    ``headers`` must look names up case-insensitively (aiohttp's CIMultiDict does); ``own_path`` is the
    part of the check request's own path after the check prefix (Envoy puts the original path there).
    Raises MalformedOriginalRequest when a trusted proxy sent an unparseable original URL.
    """
    wants_html = _wants_html(headers)
    trusted = bool(peer) and proxies.is_trusted(peer)
    if not trusted:
        path = normalise_path(own_path.split("?", 1)[0]) if own_path else ""
        return RequestFacts(method, "", "", path, "", peer, wants_html)

    method = headers.get("X-Original-Method") or headers.get("X-Forwarded-Method") or method
    client_ip = client_address(headers, peer, proxies)
    original_url = headers.get("X-Original-URL")
    if (original_url or "X-Original-URI" in headers) and "X-Forwarded-Uri" in headers:
        # nginx sets X-Original-*, Traefik and Caddy X-Forwarded-*; each passes the other family through
        # from the client untouched. Both at once means one was forged: refuse rather than pick.
        raise MalformedOriginalRequest("both X-Original-* and X-Forwarded-Uri describe the request")
    if original_url:
        parts = _parse_absolute(original_url)
        host = parts.netloc.rpartition("@")[2].lower()
        return RequestFacts(method.upper(), parts.scheme.lower(), host, normalise_path(parts.path or "/"),
                            original_url, client_ip, wants_html)

    uri = headers.get("X-Forwarded-Uri") or headers.get("X-Original-URI") or own_path
    scheme = (headers.get("X-Forwarded-Proto") or "").split(",")[0].strip().lower() or "http"
    host = (headers.get("X-Forwarded-Host") or headers.get("Host") or "").split(",")[0].strip().lower()
    if not uri:
        return RequestFacts(method.upper(), scheme, host, "", "", client_ip, wants_html)
    if not uri.startswith("/") or scheme not in {"http", "https"}:
        raise MalformedOriginalRequest("original URI must be an absolute path over http(s)")
    path = uri.split("?", 1)[0].split("#", 1)[0]
    url = ""
    if host:
        url = f"{scheme}://{host}{uri}"
        _parse_absolute(url)
    return RequestFacts(method.upper(), scheme, host, normalise_path(path), url, client_ip, wants_html)


def has_forwarded_headers(headers: Mapping[str, str]) -> bool:
    """True when the request carries any header describing an original URL (cheap pre-check)."""
    return any(name in headers for name in _FORWARDED_URL_HEADERS)
