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
    # RFC 3986 5.2.4: a final dot segment leaves the directory, with its slash.
    ("/admin/x/..", "/admin/"),
    ("/admin/.", "/admin/"),
    ("/admin/%2e", "/admin/"),
    ("/admin/%2E", "/admin/"),
    ("/admin/x/%2e%2e", "/admin/"),
    ("/admin/x/.%2e", "/admin/"),
    ("/admin/..", "/"),
    ("/admin/", "/admin/"),
    ("/%61dmin/x", "/admin/x"),
    ("/admin;jsessionid=1/x", "/admin/x"),
    ("/admin%2fx", "/admin/x"),
    ("/admin%2f%2fx", "/admin/x"),
    ("/a/b?", "/a/b?"),
    ("/;/forbidden;x/", "/forbidden/"),
    ("/api/;x/%66orbidden", "/api/forbidden"),
], ids=["root", "dotdot", "encoded-dotdot", "nested-encoded", "encoded-hash", "dots-slashes", "double-slash",
        "double-encoded", "above-root", "no-slash", "utf8", "final-dotdot", "final-dot", "final-encoded-dot",
        "final-encoded-dot-upper", "final-encoded-dotdot", "final-mixed-dotdot", "dotdot-to-root", "trailing-slash",
        "encoded-unreserved", "path-parameter", "encoded-slash", "encoded-double-slash", "question-mark-kept",
        "parameter-only-segment", "parameter-only-segment-then-escape"])
def test_normalise_path(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected


@pytest.mark.parametrize("raw", [
    "/%ff", "/a%00b", "/a%0d%0ab", "/a\x7fb", "/a b", "/a#b", "/a%zz", "/a%2", "/a%",
    "/a//../b", "/a/..%2fb", "/a/%2e%2e%2fb", "/a/..;/b", "/a/..%5cb", "/a/..\\b", "/a/.;x/b", "/a/;x/../b",
], ids=["not-utf8", "nul", "crlf", "del", "space", "fragment", "bad-escape", "short-escape", "bare-percent",
        "empty-segment-then-dotdot", "encoded-slash-dotdot", "encoded-dotdot-slash", "tomcat-dotdot",
        "encoded-backslash-dotdot", "backslash-dotdot", "dot-with-parameter", "parameter-segment-then-dotdot"])
def test_normalise_path_refuses_ambiguous_or_bad_paths(raw: str) -> None:
    with pytest.raises(MalformedOriginalRequest):
        normalise_path(raw)


def facts(headers: dict[str, str], peer: str = "127.0.0.1", own_path: str = "") -> RequestFacts:
    return request_facts(CIMultiDict(headers), peer=peer, method="GET", own_path=own_path, proxies=PROXIES)


def test_original_url_from_trusted_proxy() -> None:
    f = facts({"X-Original-URL": "https://App.Example.com/api/private?x=/public", "X-Original-Method": "post"})
    assert (f.method, f.scheme, f.host, f.path) == ("POST", "https", "app.example.com", "/api/private")
    assert f.url == "https://app.example.com/api/private?x=/public"


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
    assert facts({"X-Forwarded-For": xff, "X-Original-URI": "/", "Host": "app.example.com"}).client_ip == expected


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


@pytest.mark.parametrize("headers", [
    # nginx picks the site from the part of Host before ":"; whatever follows must not be guessed at.
    {"X-Original-URL": "http://app.example.com:80#/admin/secret", "X-Original-URI": "/admin/secret"},
    {"X-Original-URL": "http://app.example.com:80?/admin/secret", "X-Original-URI": "/admin/secret"},
    {"X-Original-URL": "http://app.example.com:@other/admin/secret"},
    {"X-Original-URL": "http://app.example.com:80@public.example.com/admin/secret"},
    {"X-Original-URL": "http://user:pw@app.example.com/admin/secret"},
    {"X-Original-URL": "http://app.example.com:/x"},
    {"X-Original-URL": "http:///x"},
    {"X-Original-URL": "http://app.example.com,evil.example/x"},
    {"X-Original-URL": "http://[::1/x"},
    {"X-Original-URL": "http://[zz::1]/x"},
    {"X-Original-URL": "http://app.example.com:0/x"},
    {"X-Original-URL": "http://app.example.com/x#frag"},
    {"X-Original-URL": "http://app.example.com/caf\u00e9"},
    # Sources that describe one request must agree.
    {"X-Original-URL": "http://app.example.com/public", "X-Original-URI": "/admin/secret"},
    {"X-Original-URL": "http://public.example.com/admin", "X-Forwarded-Host": "app.example.com"},
    {"X-Original-Method": "GET", "X-Forwarded-Method": "DELETE", "X-Original-URI": "/x"},
    {"X-Original-Method": "GE T", "X-Original-URI": "/x"},
    {"X-Forwarded-Proto": "https, http", "X-Forwarded-Uri": "/x", "X-Forwarded-Host": "app.example.com"},
    {"X-Forwarded-Uri": "/x", "X-Forwarded-Host": "app.example.com, evil.example"},
    {"X-Forwarded-Uri": "/x", "X-Forwarded-Host": "app.example.com:80#"},
    {"X-Forwarded-Uri": "/x", "Host": "app.example.com:80@evil.example"},
    {"X-Original-URI": "/x", "X-HTTP-Method-Override": "DELETE"},
    {"X-Original-URI": "/x", "X-Original-Method": "POST", "X-HTTP-Method": "PUT"},
    {"X-Forwarded-Uri": "/x", "X-Forwarded-Method": "POST", "X-Method-Override": "PATCH"},
], ids=["port-then-hash", "port-then-query", "empty-port-userinfo", "port-userinfo-host", "userinfo",
        "empty-port", "empty-host", "comma-host", "broken-ipv6", "bad-ipv6", "port-zero", "fragment", "non-ascii",
        "url-and-uri-disagree", "url-and-forwarded-host-disagree", "methods-disagree", "method-not-token",
        "schemes-disagree", "two-forwarded-hosts", "forwarded-host-port-then-hash", "host-userinfo",
        "method-override", "http-method", "method-override-traefik"])
def test_ambiguous_original_requests_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(MalformedOriginalRequest):
        facts(headers)


@pytest.mark.parametrize("name", ["X-Original-URL", "X-Original-URI", "X-Forwarded-Uri", "X-Forwarded-Host",
                                  "X-Original-Method", "Host"])
def test_two_headers_of_one_name_are_refused(name: str) -> None:
    values = {"X-Original-URL": "http://app.example.com/x", "Host": "app.example.com"}.get(name, "/x")
    headers = CIMultiDict([(name, values), (name, values)])
    if name in ("X-Forwarded-Host", "Host"):
        headers.add("X-Forwarded-Uri", "/x")
    with pytest.raises(MalformedOriginalRequest):
        request_facts(headers, peer="127.0.0.1", method="GET", own_path="", proxies=PROXIES)


@pytest.mark.parametrize(("headers", "host", "url"), [
    ({"X-Original-URL": "http://App.Example.COM.:80/a", "X-Original-URI": "/a", "X-Forwarded-Host": "app.example.com"},
     "app.example.com", "http://app.example.com/a"),
    ({"X-Original-URL": "https://app.example.com:443/a"}, "app.example.com", "https://app.example.com/a"),
    ({"X-Original-URL": "http://app.example.com:8080/a?b"}, "app.example.com:8080", "http://app.example.com:8080/a?b"),
    ({"X-Original-URL": "http://[::1]:8080/a"}, "[::1]:8080", "http://[::1]:8080/a"),
    ({"X-Forwarded-Uri": "/a", "X-Forwarded-Host": "App.example.com:443", "X-Forwarded-Proto": "https, https"},
     "app.example.com", "https://app.example.com/a"),
], ids=["nginx-default-port", "https-default-port", "other-port", "ipv6", "traefik-repeated-proto"])
def test_canonical_authority(headers: dict[str, str], host: str, url: str) -> None:
    f = facts(headers)
    assert (f.host, f.url) == (host, url)


def test_envoy_path_must_agree_with_forwarded_headers() -> None:
    assert facts({"Host": "app.example.com"}, own_path="/a?b").path == "/a"
    with pytest.raises(MalformedOriginalRequest):
        facts({"Host": "app.example.com", "X-Forwarded-Uri": "/public"}, own_path="/admin")


def test_several_forwarded_for_headers_are_one_list() -> None:
    headers = CIMultiDict([("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "198.51.100.7, 10.0.0.5"),
                           ("X-Original-URI", "/"), ("Host", "app.example.com")])
    assert request_facts(headers, peer="127.0.0.1", method="GET", own_path="", proxies=PROXIES).client_ip \
        == "198.51.100.7"


def test_a_method_override_naming_the_same_method_is_fine() -> None:
    f = facts({"X-Original-URI": "/x", "X-Original-Method": "POST", "X-HTTP-Method-Override": "post",
               "Host": "app.example.com"})
    assert f.method == "POST"


@pytest.mark.parametrize("headers", [
    {"X-Original-URI": "/admin"},
    {"X-Forwarded-Uri": "/admin", "X-Forwarded-Proto": "https"},
    {"X-Original-URI": "/admin", "Host": ""},
    {"X-Forwarded-Uri": "/admin", "X-Forwarded-Host": "", "Host": "app.example.com"},
    {"X-Forwarded-Host": " ", "Host": "app.example.com"},
], ids=["no-host", "forwarded-uri-no-host", "empty-host", "empty-forwarded-host", "blank-forwarded-host"])
def test_a_request_described_without_its_host_is_refused(headers: dict[str, str]) -> None:
    """A rule scoped to hosts cannot judge a request whose host is unknown: refuse it rather than let it pass."""
    with pytest.raises(MalformedOriginalRequest):
        facts(headers)


def test_envoy_path_needs_the_host_too() -> None:
    with pytest.raises(MalformedOriginalRequest):
        facts({}, own_path="/admin")
    assert facts({"Host": "app.example.com"}, own_path="/admin").host == "app.example.com"
