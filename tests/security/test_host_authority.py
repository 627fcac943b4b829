"""Class 1: a signed-in user plays with the authority (Host, absolute-form targets) to reach a denied path.

Every case asks nginx (deploy/nginx/protect-app.conf), Caddy (deploy/caddy/Caddyfile) or HAProxy
(deploy/haproxy/haproxy.cfg) for a path the
access rules deny, with a valid session cookie and an authority the proxy and the gateway could read
differently: a Host with ``#``, ``?``, ``@``, userinfo, a path, odd ports, several Host headers, an
absolute-form request line naming another host. The app must never receive a denied path; the client gets
a refusal (4xx, or nginx's redirect to sign-in) or a closed connection, never a 5xx, within 2 s.
"""

from __future__ import annotations

import pytest

from tests.deploy.stack import COOKIE
from tests.security.corpus import Case, Tally, attempt, params, served_by_app
from tests.security.rawhttp import request
from tests.security.stacks import APP_HOST, SecurityStack

KLASS = "1-host"

# (id, Host value) -- the value is sent as is; None sends no Host header at all.
HOSTS: list[tuple[str, str | None]] = [
    ("hash-after-port", f"{APP_HOST}:80#"),
    ("query-after-port", f"{APP_HOST}:80?"),
    ("empty-port-userinfo", f"{APP_HOST}:@other.example"),
    ("port-then-userinfo", f"{APP_HOST}:80@public.example.com"),
    ("userinfo", f"user@{APP_HOST}"),
    ("userinfo-password", f"user:pw@{APP_HOST}"),
    ("userinfo-empty", f"@{APP_HOST}"),
    ("hash-then-userinfo", f"{APP_HOST}:80#@evil.example"),
    ("hash-no-port", f"{APP_HOST}#.evil.example"),
    ("query-no-port", f"{APP_HOST}?x=1"),
    ("path-in-host", f"{APP_HOST}/public"),
    ("dotdot-path-in-host", f"{APP_HOST}/public/.."),
    ("port-then-path", f"{APP_HOST}:80/public"),
    ("empty-port", f"{APP_HOST}:"),
    ("port-zero", f"{APP_HOST}:0"),
    ("port-out-of-range", f"{APP_HOST}:99999"),
    ("port-not-digits", f"{APP_HOST}:8o"),
    ("two-ports", f"{APP_HOST}:80:80"),
    ("upper-case", APP_HOST.upper()),
    ("trailing-dot", f"{APP_HOST}."),
    ("trailing-dot-port", f"{APP_HOST}.:80"),
    ("ipv6-literal", "[::1]"),
    ("ipv6-literal-port", "[::1]:80"),
    ("ipv6-unclosed", "[::1"),
    ("ipv4", "127.0.0.1"),
    ("trailing-space", f"{APP_HOST} "),
    ("comma-list", f"{APP_HOST}, evil.example"),
    ("tab-inside", f"{APP_HOST}\tx"),
    ("percent-encoded-slash", f"{APP_HOST}%2f.."),
    ("percent-encoded-hash", f"{APP_HOST}%23"),
    ("backslash", f"{APP_HOST}\\@evil.example"),
    ("other-host", "evil.example"),
    ("empty", ""),
    ("missing", None),
]

PATHS = [("forbidden-x", "/forbidden/x"), ("api-forbidden-x", "/api/forbidden/x"), ("forbidden", "/forbidden")]
FRONTS = ("nginx", "caddy", "haproxy")

# Request shapes: how the authority is presented.
SHAPES = ("host", "absolute-form", "absolute-form-tricky", "duplicate-host", "host-then-tricky", "lower-name")


PROXY_CORE = {"hash-after-port", "port-then-userinfo", "userinfo", "other-host", "missing", "upper-case"}
"""The host tricks that also run through Caddy and HAProxy in the normal run (every trick does in the full
run)."""


def build(shape: str, host: str | None, path: str, token: str, method: str) -> bytes | None:
    """The request bytes for one shape, or None when the shape makes no sense for this host."""
    cookie = ("Cookie", f"{COOKIE}={token}")
    accept = ("Accept", "application/json")
    if shape == "host":
        return request(method, path, [cookie, accept], host=host)
    if host is None:
        return None
    if shape == "absolute-form":  # the request line names the app, Host names the trick
        return request(method, f"http://{APP_HOST}{path}", [cookie, accept], host=host)
    if shape == "absolute-form-tricky":  # the request line carries the trick, Host is plain
        if any(c in host for c in " \t"):
            return None
        return request(method, f"http://{host}{path}", [cookie, accept], host=APP_HOST)
    if shape == "duplicate-host":
        return request(method, path, [("Host", host), cookie, accept], host=APP_HOST)
    if shape == "host-then-tricky":
        return request(method, path, [("Host", APP_HOST), cookie, accept], host=host)
    if shape == "lower-name":
        return request(method, path, [("host", host), cookie, accept], host=None)
    raise AssertionError(shape)


def cases() -> list[Case]:
    out: list[Case] = []
    for front in FRONTS:
        for shape in SHAPES:
            for host_id, host in HOSTS:
                for path_id, path in PATHS:
                    for method in ("GET", "HEAD"):
                        if (host is None or method == "HEAD") and shape != "host":
                            continue
                        if build(shape, host, path, "token", method) is None:
                            continue
                        core = shape == "host" and path_id == "forbidden-x" and method == "GET" and \
                            (front == "nginx" or host_id in PROXY_CORE)
                        case_id = f"{front}-{shape}-{host_id}-{path_id}" + ("-head" if method == "HEAD" else "")
                        out.append(Case(case_id, core, (front, shape, host, path, method)))
    return out


@pytest.mark.parametrize("case", params(cases()))
def test_a_trick_authority_never_reaches_a_denied_path(stack: SecurityStack, tally: Tally, case: Case) -> None:
    front, shape, host, path, method = case.data
    port = stack.port_of(front)
    data = build(shape, host, path, stack.tokens.valid, method)
    assert data is not None
    verdict, sent, _ = attempt(stack, KLASS, case.id, port, data, secrets=stack.tokens.all(),
                               head_only=method == "HEAD")
    for response in sent.responses:
        if 200 <= response.status < 300 and not served_by_app(response) and response.body:
            verdict.problems.append(f"{front} answered {response.status} with a body for a denied path")
    tally.conclude(verdict)


CONTROLS = [Case(f"control-{front}-{host_id}", True, (front, host)) for front in FRONTS
            for host_id, host in (("plain", APP_HOST), ("with-port", f"{APP_HOST}:80"))]


@pytest.mark.parametrize("case", params(CONTROLS))
def test_control_the_same_session_reaches_an_allowed_path(stack: SecurityStack, tally: Tally, case: Case) -> None:
    """Without these the refusals above could be a broken session rather than a refusal."""
    front, host = case.data
    port = stack.port_of(front)
    data = request("GET", "/dashboard", [("Cookie", f"{COOKIE}={stack.tokens.valid}")], host=host)
    verdict, sent, received = attempt(stack, KLASS, case.id, port, data, secrets=stack.tokens.all())
    if not (sent.first and served_by_app(sent.first) and sent.first.status == 200 and received):
        verdict.problems.append("the allowed path did not reach the app")
    tally.conclude(verdict)
