"""The original request as a trusted proxy describes it: path normalisation, trust, client address."""

from __future__ import annotations

import ipaddress

import pytest
from multidict import CIMultiDict

from gateway.facts import MalformedOriginalRequest, RequestFacts, TrustedProxies, normalise_path, request_facts

PROXIES = TrustedProxies([ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.0.0.0/8")])


@pytest.mark.parametrize(("raw", "expected"), [
    ("/", "/"),
    ("/public/../admin", "/admin"),
    ("/%2e%2e/admin", "/admin"),
    ("/public/%2e%2e/admin", "/admin"),
    ("/admin%23/x", "/admin#/x"),
    ("/a/./b//c/", "/a/b/c/"),
    ("//admin", "/admin"),
    ("/%252e%252e/admin", "/%2e%2e/admin"),
    ("/../../etc", "/etc"),
    ("relative", "/relative"),
    ("/caf%C3%A9", "/café"),
], ids=["root", "dotdot", "encoded-dotdot", "nested-encoded", "encoded-hash", "dots-slashes", "double-slash",
        "double-encoded", "above-root", "no-slash", "utf8"])
def test_normalise_path(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected


@pytest.mark.parametrize("raw", ["/%ff", "/a%00b", "/a%0d%0ab", "/a\x7fb"])
def test_normalise_path_rejects_bad_bytes(raw: str) -> None:
    with pytest.raises(MalformedOriginalRequest):
        normalise_path(raw)


def facts(headers: dict[str, str], peer: str = "127.0.0.1", own_path: str = "") -> RequestFacts:
    return request_facts(CIMultiDict(headers), peer=peer, method="GET", own_path=own_path, proxies=PROXIES)


def test_original_url_from_trusted_proxy() -> None:
    f = facts({"X-Original-URL": "https://App.Example.com/api/private?x=/public", "X-Original-Method": "post"})
    assert (f.method, f.scheme, f.host, f.path) == ("POST", "https", "app.example.com", "/api/private")
    assert f.url == "https://App.Example.com/api/private?x=/public"


def test_traefik_style_forwarded_headers() -> None:
    f = facts({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "app.example.com", "X-Forwarded-Uri": "/a/../b?q=1",
               "X-Forwarded-Method": "DELETE"})
    assert (f.method, f.host, f.path, f.url) == ("DELETE", "app.example.com", "/b",
                                                 "https://app.example.com/a/../b?q=1")


def test_untrusted_peer_headers_are_ignored() -> None:
    f = facts({"X-Original-URL": "https://evil.example/", "X-Forwarded-For": "1.2.3.4"}, peer="203.0.113.9",
              own_path="/x")
    assert (f.host, f.url, f.client_ip, f.path) == ("", "", "203.0.113.9", "/x")


def test_underscore_header_is_not_the_forwarded_header() -> None:
    f = facts({"X_Forwarded_Uri": "/admin", "Host": "app.example.com"}, own_path="")
    assert f.path == ""


@pytest.mark.parametrize(("xff", "expected"), [
    ("198.51.100.7", "198.51.100.7"),
    ("198.51.100.7, 10.0.0.5", "198.51.100.7"),
    ("6.6.6.6, 198.51.100.7, 10.0.0.5", "198.51.100.7"),
    ("10.0.0.9, 10.0.0.5", "10.0.0.9"),
], ids=["one", "through-proxy", "spoofed-left", "all-internal"])
def test_client_ip_is_the_nearest_untrusted_hop(xff: str, expected: str) -> None:
    assert facts({"X-Forwarded-For": xff, "X-Original-URI": "/"}).client_ip == expected


def test_ipv4_mapped_peer_is_trusted() -> None:
    assert PROXIES.is_trusted("::ffff:127.0.0.1")
    assert not PROXIES.is_trusted("::ffff:8.8.8.8")
    assert not PROXIES.is_trusted("garbage")


@pytest.mark.parametrize("headers", [
    {"X-Original-URL": "https://app.example.com/a", "X-Forwarded-Uri": "/b"},
    {"X-Original-URI": "/a", "X-Forwarded-Uri": "/b", "Host": "app.example.com"},
], ids=["url-and-forwarded-uri", "uri-and-forwarded-uri"])
def test_both_header_families_at_once_are_refused(headers: dict[str, str]) -> None:
    """nginx passes a client's X-Forwarded-Uri through, Caddy/Traefik a client's X-Original-*: one is forged."""
    with pytest.raises(MalformedOriginalRequest):
        facts(headers)
