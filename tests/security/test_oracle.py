"""The corpus's own oracles, tested on their own: a lenient oracle would make every case pass.

No processes here: how an app routes a received path, where a browser goes for a ``Location``, and the
response parser of the raw client. These are not corpus cases (they are not counted in the summary).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.security.corpus import LogWatch, app_routes, denied_route, leaks_in_response, remove_dot_segments
from tests.security.rawhttp import Response, _Incomplete, _parse_one
from tests.security.test_redirect_targets import Destination, allowed, destination


@pytest.mark.parametrize(("raw", "denied"), [
    ("/forbidden/x", True),
    ("/forbidden", True),
    ("/forbidden/", True),
    ("/api/forbidden/x", True),
    ("/public/../forbidden/x", True),
    ("/public/%2e%2e/forbidden/x", True),
    ("/forbidden%2fx", True),
    ("/%2fforbidden/x", True),
    ("//forbidden/x", True),
    ("/a//../forbidden/x", True),
    ("/public/..;/forbidden/x", True),
    ("/;/forbidden;x/", True),
    ("/forbidden;x", True),
    ("/%66orbidden/x", True),
    ("http://app.example.com/forbidden/x", True),
    ("/FORBIDDEN/x", False),
    ("/forbiddenx", False),
    ("/x/forbidden", False),
    ("/forbidden%23/x", False),
    ("/ok", False),
    ("/api/items", False),
])
def test_app_routes(raw: str, denied: bool) -> None:
    assert (denied_route(raw) is not None) == denied, app_routes(raw)


@pytest.mark.parametrize(("path", "expected"), [
    ("/a/b/../c", "/a/c"), ("/a/x/..", "/a/"), ("/a/.", "/a/"), ("/../a", "/a"), ("/a/./b", "/a/b"), ("/", "/"),
])
def test_remove_dot_segments(path: str, expected: str) -> None:
    assert remove_dot_segments(path) == expected


BASE = "http://127.0.0.1:8000/login"
SITES = ["http://127.0.0.1:8000"]
HOSTS = ["app.example.com", ".corp.example.com", "127.0.0.1:9000"]


@pytest.mark.parametrize("location", [
    "//evil.com", "/\\evil.com", "\\\\evil.com", "/\t/evil.com", " //evil.com", "https:evil.com",
    "https:///evil.com", "http://app.example.com@evil.com/", "http://evil.com\\@app.example.com/",
    "http://evilcorp.example.com/", "http://app.example.com.evil.com/", "javascript:alert(1)",
    "JAVASCRIPT:alert(1)", "java\tscript:alert(1)", "data:text/html,x", "http://app.example.com:8080/",
    "http://2130706433/", "http://0x7f.1/", "http://app.example.com\u3002evil.com/", "http://[::1]/",
])
def test_locations_off_the_allow_list(location: str) -> None:
    assert not allowed(destination(location, BASE), SITES, HOSTS), destination(location, BASE)


@pytest.mark.parametrize("location", [
    "/", "/dashboard?x=//evil.com", "http:/evil.com", "http:evil.com", "http://APP.example.com/x",
    "http://app.example.com./", "http://a.b.corp.example.com/", "http://corp.example.com/",
    "http://127.0.0.1:9000/x", "http://127.0.0.1:8000/x", "//127.0.0.1:8000/x",
])
def test_locations_on_the_allow_list(location: str) -> None:
    assert allowed(destination(location, BASE), SITES, HOSTS), destination(location, BASE)


def test_numeric_hosts_are_read_as_a_browser_reads_them() -> None:
    for location in ("http://2130706433/", "http://0x7f.1/", "http://0177.0.0.1/", "http://127.1/"):
        assert destination(location, BASE) == Destination("http", "127.0.0.1", 80)


def test_the_raw_parser_needs_the_whole_body() -> None:
    with pytest.raises(_Incomplete):
        _parse_one(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc", False)
    response, used = _parse_one(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nX", False)
    assert (response.status, response.body, used) == (200, b"abc", 60)  # everything before the "X"


def test_the_log_watch_sees_only_what_was_logged_during_the_case(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    log.write_text('{"event": "old", "token": "gwt_before"}\n')
    watch = LogWatch([log, tmp_path / "not-yet-written.log"])
    with log.open("a") as out:
        out.write('{"event": "check denied", "cookie": "gwt_during"}\n')
    assert watch.leaks(["gwt_before", "gwt_during", "gwt_never"]) == ["secret gwt_duri… in the gateway log"]


def test_leaks_in_a_response_skip_only_set_cookie() -> None:
    response = Response(302, [("Location", "/x?t=gwt_location"), ("Set-Cookie", "gw_session=gwt_cookie")], b"gwt_body")
    assert len(leaks_in_response(response, ["gwt_location", "gwt_cookie", "gwt_body"])) == 2
