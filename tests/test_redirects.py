"""Redirect targets: every attack in security.md "Redirect targets", its relatives, and check-config problems."""

from __future__ import annotations

import itertools
from urllib.parse import urljoin, urlsplit

import pytest

from gateway.redirects import (
    MAX_TARGET_LENGTH,
    RedirectPolicy,
    is_safe_redirect_target,
    policy_problems,
    safe_redirect_target,
)

DEFAULT = "/home"
HOSTS = (
    ".example.com",
    "partner.example.org",
    "plain.example.net",
    "api.example.net:8443",
    "127.0.0.1",
    "[::1]",
    "bücher.example",
)
HTTPS_ONLY = RedirectPolicy(HOSTS, DEFAULT)
DEV = RedirectPolicy(HOSTS, DEFAULT, allow_http=True)
NO_IP = RedirectPolicy((".example.com",), DEFAULT, allow_http=True)
REJECT = object()
"""Expected result meaning "falls back to the default target"."""


def case(raw: str | None, expected: str | object, id: str, policy: RedirectPolicy = HTTPS_ONLY) -> object:
    """One table row; ``expected`` is the canonical target, or REJECT."""
    return pytest.param(raw, policy, expected, id=id)


CASES = [
    # Missing, empty, oversized.
    case(None, REJECT, "none"),
    case("", REJECT, "empty"),
    case(" ", REJECT, "space"),
    case("\t", REJECT, "tab-only"),
    case(" /ok", REJECT, "leading-space"),
    case("/ok ", REJECT, "trailing-space"),
    case("/" + "a" * (MAX_TARGET_LENGTH - 1), "/" + "a" * (MAX_TARGET_LENGTH - 1), "max-length-ok"),
    case("/" + "a" * MAX_TARGET_LENGTH, REJECT, "overlong"),
    case("https://app.example.com/" + "a" * MAX_TARGET_LENGTH, REJECT, "overlong-absolute"),
    # Plain local paths.
    case("/", "/", "root"),
    case("/ok/path?x=1#frag", "/ok/path?x=1#frag", "path-query-fragment"),
    case("/ok?next=//evil.com", "/ok?next=//evil.com", "protocol-relative-in-query-is-inert"),
    case("/ok?next=https://evil.com", "/ok?next=https://evil.com", "url-in-query-of-local-path"),
    case("/a@evil.com", "/a@evil.com", "at-sign-in-path"),
    case("/caf%C3%A9", "/caf%C3%A9", "encoded-utf8-path"),
    case("/café", "/caf%C3%A9", "non-ascii-path-encoded"),
    case('/a"<b>', "/a%22%3Cb%3E", "unsafe-ascii-encoded"),
    case("/100%25", "/100%25", "encoded-percent"),
    case("/100%", REJECT, "bare-percent"),
    case("/%zz", REJECT, "bad-percent-escape"),
    case("/%ff", REJECT, "encoded-invalid-utf8"),
    case("foo/bar", REJECT, "relative-no-leading-slash"),
    case("evil.com", REJECT, "bare-host"),
    case("evilexample.com", REJECT, "bare-lookalike-host"),
    case(".", REJECT, "dot"),
    # Protocol-relative and backslash forms.
    case("//evil.com", REJECT, "protocol-relative"),
    case("///evil.com", REJECT, "triple-slash"),
    case("////evil.com", REJECT, "quadruple-slash"),
    case("/\\evil.com", REJECT, "slash-backslash"),
    case("\\\\evil.com", REJECT, "double-backslash"),
    case("\\/evil.com", REJECT, "backslash-slash"),
    case("/\\/evil.com", REJECT, "slash-backslash-slash"),
    case("/ok\\path", REJECT, "backslash-later-in-path"),
    # Whitespace and control characters, raw or encoded.
    case("/%09/evil.com", REJECT, "encoded-tab"),
    case("/%0a/evil.com", REJECT, "encoded-lf"),
    case("/%0d/evil.com", REJECT, "encoded-cr"),
    case("/%0A/evil.com", REJECT, "encoded-lf-upper"),
    case("/%00/evil.com", REJECT, "encoded-nul"),
    case("/%20/evil.com", REJECT, "encoded-space"),
    case("/\t/evil.com", REJECT, "raw-tab"),
    case("/\n/evil.com", REJECT, "raw-lf"),
    case("/\r\nSet-Cookie: x=1", REJECT, "header-injection"),
    case("/\x00", REJECT, "raw-nul"),
    case("/\x7f", REJECT, "raw-del"),
    case("/\u2028/evil.com", REJECT, "unicode-line-separator"),
    case("/\u200b/evil.com", REJECT, "zero-width-space"),
    case("/%e2%80%a8/evil.com", REJECT, "encoded-unicode-line-separator"),
    case("/%2f%2fevil.com", REJECT, "encoded-double-slash"),
    case("/%2F/evil.com", REJECT, "encoded-slash-then-slash"),
    case("/%5cevil.com", REJECT, "encoded-backslash"),
    case("/%5C%5Cevil.com", REJECT, "encoded-double-backslash"),
    case("/%252f%252fevil.com", REJECT, "double-encoded-slashes"),
    case("/%25252f%25252fevil.com", REJECT, "triple-encoded-slashes"),
    case("/%250a/evil.com", REJECT, "double-encoded-lf"),
    # Dot segments before a slash.
    case("/./\\evil.com", REJECT, "dot-backslash"),
    case("/../\\evil.com", REJECT, "dotdot-backslash"),
    case("/.//evil.com", REJECT, "dot-double-slash"),
    case("/..//evil.com", REJECT, "dotdot-double-slash"),
    case("/%2e//evil.com", REJECT, "encoded-dot-double-slash"),
    case("/%2e%2e//evil.com", REJECT, "encoded-dotdot-double-slash"),
    case("/.%2f%2fevil.com", REJECT, "dot-encoded-slashes"),
    case("/a/../b", REJECT, "dotdot-inside-path"),
    case("/a/.", REJECT, "trailing-dot-segment"),
    case("/a.b/c..d/", "/a.b/c..d/", "dots-inside-names-are-fine"),
    # Allowed absolute URLs and their canonical forms.
    case("https://app.example.com/ok", "https://app.example.com/ok", "allowed-sub-domain"),
    case("https://example.com/", "https://example.com/", "suffix-matches-bare-domain"),
    case("https://a.b.example.com/", "https://a.b.example.com/", "suffix-matches-deep-sub-domain"),
    case("https://app.example.com", "https://app.example.com", "no-path"),
    case("https://app.example.com?x=1", "https://app.example.com?x=1", "query-without-path"),
    case("https://EXAMPLE.com/x", "https://example.com/x", "upper-case-host-canonicalised"),
    case("HTTPS://app.example.com/ok", "https://app.example.com/ok", "upper-case-scheme"),
    case("HtTpS://App.Example.COM/Ok", "https://app.example.com/Ok", "mixed-case-path-kept"),
    case("https://app.example.com./", "https://app.example.com/", "trailing-dot-stripped"),
    case("https://app.example.com../", REJECT, "two-trailing-dots"),
    case("https://app..example.com/", REJECT, "empty-label"),
    case("https://ok.example.com/?next=https://evil.com", "https://ok.example.com/?next=https://evil.com", "nested"),
    case("https://ok.example.com/#@evil.com", "https://ok.example.com/#@evil.com", "at-in-fragment"),
    case("https://ok.example.com/a@evil.com", "https://ok.example.com/a@evil.com", "at-in-path"),
    case("https://partner.example.org/cb", "https://partner.example.org/cb", "exact-host"),
    case("https://sub.partner.example.org/", REJECT, "exact-host-does-not-cover-sub-domains"),
    case("https://bücher.example/", "https://xn--bcher-kva.example/", "idn-host-punycoded"),
    case("https://XN--BCHER-KVA.example/", "https://xn--bcher-kva.example/", "punycode-host-case-folded"),
    case("https://app.example.com/é", "https://app.example.com/%C3%A9", "non-ascii-absolute-path-encoded"),
    case("https://app.example.com/%0a", "https://app.example.com/%0a", "encoded-lf-in-path-is-inert"),
    case("https://app.example.com/%zz", REJECT, "bad-percent-in-absolute-path"),
    # Lookalike hosts.
    case("https://evilexample.com/", REJECT, "suffix-needs-label-boundary"),
    case("https://example.com.evil.com/", REJECT, "allowed-name-as-prefix"),
    case("https://example.com@evil.com/", REJECT, "userinfo-host"),
    case("https://app.example.com@evil.com/", REJECT, "userinfo-allowed-name"),
    case("https://evil.com@app.example.com/", REJECT, "any-userinfo-rejected"),
    case("https://:@example.com\\@evil.com", REJECT, "empty-userinfo-backslash"),
    case("https://app.example.com;@evil.com/", REJECT, "semicolon-userinfo"),
    case("https://app.example.com\\.evil.com/", REJECT, "backslash-in-host"),
    case("https://app.example.com%2f.evil.com/", REJECT, "encoded-slash-in-host"),
    case("https://app%2eexample.com/", REJECT, "encoded-dot-in-host"),
    case("https://app.example.com%09/", REJECT, "encoded-tab-in-authority"),
    case("https://app.exa\tmple.com/", REJECT, "raw-tab-in-host"),
    case("https://ex\u0430mple.com/", REJECT, "cyrillic-a-lookalike"),
    case("https://app.ex\u0430mple.com/", REJECT, "cyrillic-a-in-parent"),
    case("https://evil\u3002com/", REJECT, "ideographic-full-stop-is-a-dot"),
    case("https://app.example\uff0ecom/", "https://app.example.com/", "fullwidth-dot-mapped-like-browsers"),
    case("https://evil.com\uff20app.example.com/", REJECT, "fullwidth-at-sign"),
    case("https://ex\u00adample.com/", REJECT, "soft-hyphen"),
    case("https://app_x.example.com/", REJECT, "underscore-label"),
    case("https://-app.example.com/", REJECT, "leading-hyphen-label"),
    # Schemes.
    case("javascript:alert(1)", REJECT, "javascript"),
    case("JaVaScRiPt:alert(1)", REJECT, "javascript-mixed-case"),
    case("java\tscript:alert(1)", REJECT, "javascript-with-tab"),
    case("data:text/html,<script>alert(1)</script>", REJECT, "data"),
    case("vbscript:msgbox(1)", REJECT, "vbscript"),
    case("ftp://app.example.com/", REJECT, "ftp"),
    case("file:///etc/passwd", REJECT, "file"),
    case("https:app.example.com", REJECT, "https-without-slashes"),
    case("https:/app.example.com", REJECT, "https-one-slash"),
    case("https:///app.example.com", REJECT, "https-three-slashes"),
    case("https:\\\\app.example.com", REJECT, "https-backslashes"),
    case("https:/\\evil.com", REJECT, "https-slash-backslash"),
    case("https://", REJECT, "https-no-host"),
    case("app.example.com:443/x", REJECT, "host-port-without-scheme"),
    # Plain http.
    case("http://evil.com/", REJECT, "http-unlisted-host"),
    case("http://evil.com/", REJECT, "http-unlisted-host-dev", DEV),
    case("http://app.example.com/", REJECT, "http-allowed-host-https-only"),
    case("http://app.example.com/", "http://app.example.com/", "http-allowed-host-dev", DEV),
    case("HTTP://APP.example.com/", "http://app.example.com/", "http-upper-case-dev", DEV),
    # Numeric and IPv6 hosts.
    case("http://2130706433/", REJECT, "decimal-integer-host", DEV),
    case("http://2130706433", REJECT, "decimal-integer-host-no-path", DEV),
    case("http://0x7f.1/", REJECT, "hex-host", DEV),
    case("http://0x7f000001/", REJECT, "hex-integer-host", DEV),
    case("http://0177.0.0.1/", REJECT, "octal-host", DEV),
    case("http://127.1/", REJECT, "short-ipv4", DEV),
    case("http://127.0.0.1./", "http://127.0.0.1/", "listed-ipv4-trailing-dot", DEV),
    case("https://127.0.0.1/x", "https://127.0.0.1/x", "listed-ipv4"),
    case("https://127.0.0.2/", REJECT, "unlisted-ipv4"),
    case("https://\uff11\uff12\uff17.0.0.1/", "https://127.0.0.1/", "fullwidth-digits-map-to-listed-ip"),
    case("https://evil.123/", REJECT, "numeric-last-label", DEV),
    case("https://123.example.com/", "https://123.example.com/", "numeric-first-label-is-a-name"),
    case("http:[::1]", REJECT, "ipv6-without-slashes", DEV),
    case("http://[::1]/", "http://[::1]/", "listed-ipv6", DEV),
    case("http://[0:0::1]/", "http://[::1]/", "listed-ipv6-canonicalised", DEV),
    case("http://[::1]/", REJECT, "ipv6-not-listed", NO_IP),
    case("http://127.0.0.1/", REJECT, "ipv4-not-listed", NO_IP),
    case("http://[::1%25eth0]/", REJECT, "ipv6-zone", DEV),
    case("http://[::1/", REJECT, "ipv6-unclosed", DEV),
    case("http://[::1]x/", REJECT, "ipv6-trailing-garbage", DEV),
    case("http://[evil.com]/", REJECT, "brackets-around-name", DEV),
    # Ports: no port in the entry means the scheme's default port only; "host:port" means that port only.
    case("https://plain.example.net:443/x", "https://plain.example.net/x", "explicit-default-port-dropped"),
    case("https://plain.example.net:8443/", REJECT, "non-default-port-not-listed"),
    case("https://app.example.com:8443/", REJECT, "suffix-entry-default-port-only"),
    case("https://api.example.net:8443/x", "https://api.example.net:8443/x", "listed-port"),
    case("https://api.example.net/x", REJECT, "listed-port-only"),
    case("https://api.example.net:443/x", REJECT, "listed-port-only-explicit-443"),
    case("https://api.example.net:08443/", REJECT, "port-leading-zero"),
    case("https://plain.example.net:/", REJECT, "empty-port"),
    case("https://plain.example.net:99999/", REJECT, "port-out-of-range"),
    case("https://plain.example.net:0/", REJECT, "port-zero"),
    case("https://plain.example.net:44x3/", REJECT, "port-not-numeric"),
    case("http://plain.example.net:80/", "http://plain.example.net/", "http-default-port-dropped", DEV),
    case("http://plain.example.net:443/", REJECT, "http-on-443-not-default", DEV),
]


@pytest.mark.parametrize(("raw", "policy", "expected"), CASES)
def test_safe_redirect_target(raw: str | None, policy: RedirectPolicy, expected: object) -> None:
    result = safe_redirect_target(raw, policy)
    if expected is REJECT:
        assert result == DEFAULT
        assert not is_safe_redirect_target(raw, policy)
    else:
        assert result == expected
        assert is_safe_redirect_target(raw, policy)
        # Canonical output is a fixed point: checking it again gives it back unchanged.
        assert safe_redirect_target(result, policy) == result


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 60


def _resolved_host_is_allowed(target: str) -> bool:
    """An independent parser's view: where does the target lead from a page on the gateway?"""
    resolved = urlsplit(urljoin("https://gateway.internal/login", target))
    host = resolved.hostname or ""
    if target.startswith("/"):
        return host == "gateway.internal"
    return host == "example.com" or host.endswith(".example.com")


# Small building blocks of known tricks, combined every which way: nothing accepted may lead off-site.
_PIECES = ("/", "\\", "%2f", "%5c", ".", "..", "%2e", "%09", "@", ":", "https:", "//", "evil.com", "example.com")


@pytest.mark.parametrize("length", [1, 2, 3])
def test_combinations_never_leave_allowed_hosts(length: int) -> None:
    policy = RedirectPolicy((".example.com",), DEFAULT)
    for pieces in itertools.product(_PIECES, repeat=length):
        for raw in ("".join(pieces), "/" + "".join(pieces), "https://" + "".join(pieces)):
            result = safe_redirect_target(raw, policy)
            if result != DEFAULT:
                assert _resolved_host_is_allowed(result), (raw, result)
                assert not result.startswith("//"), (raw, result)


def test_default_target_returned_verbatim() -> None:
    policy = RedirectPolicy((), "https://app.example.com/welcome")
    assert safe_redirect_target("//evil.com", policy) == "https://app.example.com/welcome"
    assert safe_redirect_target("/ok", policy) == "/ok"
    assert safe_redirect_target("https://app.example.com/", policy) == "https://app.example.com/welcome"


def test_policy_is_hashable_and_compares_by_configuration() -> None:
    assert RedirectPolicy(HOSTS, DEFAULT) == HTTPS_ONLY
    assert hash(RedirectPolicy(HOSTS, DEFAULT)) == hash(HTTPS_ONLY)
    assert RedirectPolicy(HOSTS, DEFAULT) != DEV


# --- policy_problems ---------------------------------------------------------------------------------------


def test_sound_policy_has_no_problems() -> None:
    assert policy_problems(HOSTS, "/") == []
    assert policy_problems((), "/") == []
    assert policy_problems(HOSTS, "https://app.example.com/welcome") == []
    assert policy_problems(HOSTS, "http://app.example.com/", allow_http=True) == []
    assert policy_problems(("example.com.", "Bücher.Example", "[0:0::1]:8080"), "/") == []


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param(" app.example.com", "whitespace", id="leading-space"),
        pytest.param("app.example.com\n", "whitespace", id="newline"),
        pytest.param("https://app.example.com", "not a URL", id="url"),
        pytest.param("https:app.example.com", "not a URL", id="scheme-no-slashes"),
        pytest.param("*.example.com", "wildcards", id="wildcard"),
        pytest.param("app.example.com/path", "path", id="path"),
        pytest.param("user@app.example.com", "userinfo", id="userinfo"),
        pytest.param("app.example.com:", "port", id="empty-port"),
        pytest.param("app.example.com:0", "port", id="port-zero"),
        pytest.param("app.example.com:70000", "port", id="port-too-big"),
        pytest.param("app.example.com:https", "port", id="port-name"),
        pytest.param("app..example.com", "not a valid host", id="empty-label"),
        pytest.param("app_x.example.com", "not a valid host", id="underscore"),
        pytest.param("2130706433", "canonical IP", id="decimal-integer-ip"),
        pytest.param("0x7f.1", "canonical IP", id="hex-ip"),
        pytest.param("::1", "in brackets", id="ipv6-without-brackets"),
        pytest.param(".127.0.0.1", "IP address cannot be a suffix", id="ip-suffix"),
        pytest.param(".com", "top-level domain", id="tld-suffix"),
        pytest.param(".", "not a valid host", id="dot-only"),
    ],
)
def test_malformed_entries_are_reported(entry: str, fragment: str) -> None:
    problems = policy_problems((entry,), "/")
    assert len(problems) == 1
    assert repr(entry) in problems[0]
    assert fragment in problems[0]


def test_malformed_entries_never_match() -> None:
    policy = RedirectPolicy(("https://app.example.com", "*.example.com", ".com"), DEFAULT)
    assert safe_redirect_target("https://app.example.com/", policy) == DEFAULT
    assert safe_redirect_target("https://example.com/", policy) == DEFAULT
    assert safe_redirect_target("https://evil.com/", policy) == DEFAULT


def test_every_problem_reported_at_once() -> None:
    problems = policy_problems(("*.example.com", "good.example.com", "https://x.example.com"), "//evil.com")
    assert len(problems) == 3
    assert "'*.example.com'" in problems[0]
    assert "'https://x.example.com'" in problems[1]
    assert "'//evil.com'" in problems[2]


@pytest.mark.parametrize(
    ("default", "allow_http", "fragment"),
    [
        pytest.param("", False, "empty", id="empty"),
        pytest.param("//evil.com", False, "not itself allowed", id="protocol-relative"),
        pytest.param("https://evil.com/", False, "not itself allowed", id="unlisted-host"),
        pytest.param("http://app.example.com/", False, "not itself allowed", id="http-without-allow-http"),
        pytest.param("home", False, "not itself allowed", id="relative"),
        pytest.param("https://APP.example.com/", False, "should be written as 'https://app.example.com/'", id="case"),
        pytest.param("/caf\u00e9", False, "should be written as '/caf%C3%A9'", id="non-ascii"),
    ],
)
def test_default_target_problems(default: str, allow_http: bool, fragment: str) -> None:
    problems = policy_problems((".example.com",), default, allow_http=allow_http)
    assert len(problems) == 1
    assert fragment in problems[0]
