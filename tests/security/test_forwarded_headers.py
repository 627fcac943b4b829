"""Class 4: headers that describe the original request, from trusted and untrusted peers, and through the proxies.

The gateways trust only 127.0.0.1 here; a client bound to 127.0.0.2 is an untrusted peer.

- **Trusted peer** (a proxy): it describes a denied request in one header family (nginx's ``X-Original-*``,
  Traefik's and Caddy's ``X-Forwarded-*``, Envoy's path) and the client's forgeries ride along (the other
  family, a second copy of the same header, underscore and letter-case variants). The check must refuse
  (401 or 403), never allow. Names are case-insensitive, so a real header in odd case still counts; a name
  with underscores is another header and must change nothing.
- **Untrusted peer**: its forwarded headers are ignored, so the answer is the one without them; Envoy's path
  still counts (it is the check's own path); a browser-mode redirect never carries a URL it made up.
- **Through nginx, Caddy and HAProxy**: the client sends the forgeries itself, on a denied path; the app must not
  receive it.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from tests.deploy.stack import COOKIE
from tests.security.corpus import Case, Tally, attempt, params, served_by_app
from tests.security.rawhttp import request
from tests.security.stacks import APP_HOST, TRUSTED_PEER, UNTRUSTED_PEER, SecurityStack

KLASS = "4-forwarded"
Headers = list[tuple[str, str]]
DENIED = "/forbidden/x"
PUBLIC = "/public/x"

# How a proxy describes the denied original request: (family id, check path, headers).
FAMILIES: dict[str, tuple[str, Headers]] = {
    "nginx": ("/auth/check", [("X-Original-URL", f"http://{APP_HOST}{DENIED}"), ("X-Original-URI", DENIED),
                              ("X-Original-Method", "GET"), ("X-Forwarded-Host", APP_HOST)]),
    "nginx-uri-only": ("/auth/check", [("X-Original-URI", DENIED), ("X-Original-Method", "GET")]),
    "ingress": ("/auth/check", [("X-Original-URL", f"http://{APP_HOST}{DENIED}"), ("X-Original-Method", "GET")]),
    "traefik": ("/auth/check", [("X-Forwarded-Proto", "http"), ("X-Forwarded-Host", APP_HOST),
                                ("X-Forwarded-Uri", DENIED), ("X-Forwarded-Method", "GET")]),
    "envoy": ("/auth/check" + DENIED, []),
}

# Client forgeries passed through by the proxy: (id, headers, where: "before" or "after" the real ones).
FORGERIES: list[tuple[str, Headers]] = [
    ("other-family-uri", [("X-Forwarded-Uri", PUBLIC)]),
    ("other-family-url", [("X-Original-URL", f"http://{APP_HOST}{PUBLIC}")]),
    ("other-family-original-uri", [("X-Original-URI", PUBLIC)]),
    ("both-families", [("X-Original-URI", PUBLIC), ("X-Forwarded-Uri", PUBLIC)]),
    ("forwarded-host", [("X-Forwarded-Host", "public.example.com")]),
    ("forwarded-prefix", [("X-Forwarded-Prefix", "/public")]),
    ("rfc7239-forwarded", [("Forwarded", f"host=public.example.com;proto=http;for=1.2.3.4;path={PUBLIC}")]),
    ("x-rewrite-url", [("X-Rewrite-URL", PUBLIC)]),
    ("x-original-path", [("X-Original-Path", PUBLIC)]),
    ("underscore-uri", [("X_Original_URI", PUBLIC)]),
    ("underscore-forwarded-uri", [("X_Forwarded_Uri", PUBLIC)]),
    ("underscore-url", [("X_Original_URL", f"http://{APP_HOST}{PUBLIC}")]),
    ("lower-case-uri", [("x-original-uri", PUBLIC)]),
    ("lower-case-forwarded-uri", [("x-forwarded-uri", PUBLIC)]),
    ("upper-case-url", [("X-ORIGINAL-URL", f"http://{APP_HOST}{PUBLIC}")]),
    ("mixed-case-forwarded-uri", [("x-FORWARDED-uRi", PUBLIC)]),
    ("empty-uri", [("X-Original-URI", "")]),
    ("empty-forwarded-uri", [("X-Forwarded-Uri", "")]),
    ("method-options", [("X-Original-Method", "OPTIONS"), ("X-Forwarded-Method", "OPTIONS")]),
    ("forwarded-for", [("X-Forwarded-For", "10.0.0.1"), ("X-Real-IP", "10.0.0.1")]),
    ("url-with-userinfo", [("X-Original-URL", f"http://{APP_HOST}@public.example.com{PUBLIC}")]),
    ("url-with-fragment", [("X-Original-URL", f"http://{APP_HOST}{PUBLIC}#{DENIED}")]),
    ("uri-absolute", [("X-Forwarded-Uri", f"http://{APP_HOST}{PUBLIC}")]),
    ("uri-with-query", [("X-Forwarded-Uri", f"{PUBLIC}?{DENIED}")]),
]


CORE_FORGERIES = {"other-family-uri", "both-families", "underscore-uri", "lower-case-uri", "url-with-fragment",
                  "other-family-original-uri"}


def trusted_cases() -> list[Case]:
    out = []
    for front in ("fastlane", "aiohttp"):
        for family in FAMILIES:
            out.append(Case(f"trusted-{front}-{family}-alone", front == "fastlane", (front, family, "", [], "after")))
            for forgery_id, forged in FORGERIES:
                for where in ("before", "after"):
                    core = front == "fastlane" and family in ("nginx", "traefik") and where == "after" \
                        and forgery_id in CORE_FORGERIES
                    out.append(Case(f"trusted-{front}-{family}-{forgery_id}-{where}", core,
                                    (front, family, forgery_id, forged, where)))
            # the real header of the family in another letter case
            _, real = FAMILIES[family]
            for case_id, rename in (("lower", str.lower), ("upper", str.upper)):
                renamed = [(rename(name), value) for name, value in real]
                if renamed != real:
                    out.append(Case(f"trusted-{front}-{family}-real-in-{case_id}-case", front == "fastlane",
                                    (front, family, f"real-{case_id}", renamed, "replace")))
    return out


@pytest.mark.parametrize("case", params(trusted_cases()))
def test_a_trusted_proxy_describing_a_denied_request_is_never_allowed(stack: SecurityStack, tally: Tally,
                                                                       case: Case) -> None:
    front, family, _, forged, where = case.data
    path, real = FAMILIES[family]
    described = forged if where == "replace" else [*forged, *real] if where == "before" else [*real, *forged]
    headers = [("Cookie", f"{COOKIE}={stack.tokens.valid}"), *described]
    port = stack.gateways[front].port
    data = request("GET", path, headers)
    verdict, sent, _ = attempt(stack, KLASS, case.id, port, data, secrets=stack.tokens.all(), source=TRUSTED_PEER)
    for response in sent.responses:
        if 200 <= response.status < 300:
            verdict.allows.append(f"the check allowed a request its trusted proxy described as {DENIED}")
        elif response.status not in (401, 403):
            verdict.problems.append(f"a check must answer 200, 401 or 403, not {response.status}")
    tally.conclude(verdict)


# A trusted peer sending only a header the gateway must not read: the answer must be the one without it.
IGNORED: list[tuple[str, Headers]] = [
    ("underscore-uri", [("X_Original_URI", DENIED)]),
    ("underscore-forwarded-uri", [("X_Forwarded_Uri", DENIED)]),
    ("underscore-url", [("X_Original_URL", f"http://{APP_HOST}{DENIED}")]),
    ("dash-lookalike", [("X-Original-URI-", DENIED)]),
    ("dot-lookalike", [("X.Original.URI", DENIED)]),
    ("rfc7239-forwarded", [("Forwarded", f"path={DENIED}")]),
]


def baseline(stack: SecurityStack, front: str, source: str, token: str, path: str = "/auth/check") -> int:
    reply = attempt(stack, KLASS, "baseline", stack.gateways[front].port,
                    request("GET", path, [("Cookie", f"{COOKIE}={token}")]), source=source)[1]
    assert reply.first is not None, reply.short()
    return reply.first.status


@pytest.mark.parametrize("case", params(Case(f"{peer}-{front}-ignores-{iid}", front == "fastlane",
                                             (front, peer, headers))
                                        for front in ("fastlane", "aiohttp") for peer in ("trusted", "untrusted")
                                        for iid, headers in IGNORED))
def test_headers_that_are_not_forwarded_headers_change_nothing(stack: SecurityStack, tally: Tally,
                                                              case: Case) -> None:
    front, peer, headers = case.data
    source = TRUSTED_PEER if peer == "trusted" else UNTRUSTED_PEER
    expected = baseline(stack, front, source, stack.tokens.valid)
    data = request("GET", "/auth/check", [("Cookie", f"{COOKIE}={stack.tokens.valid}"), *headers])
    verdict, sent, _ = attempt(stack, KLASS, case.id, stack.gateways[front].port, data,
                               secrets=stack.tokens.all(), source=source)
    if sent.first is not None and sent.first.status != expected:
        verdict.problems.append(f"answered {sent.first.status}, without the header {expected}: it was read")
    tally.conclude(verdict)


# ---- untrusted peers --------------------------------------------------------------------------------------

UNTRUSTED_SPOOFS: list[tuple[str, Headers]] = [
    ("original-url-public", [("X-Original-URL", f"http://{APP_HOST}{PUBLIC}")]),
    ("original-uri-public", [("X-Original-URI", PUBLIC)]),
    ("forwarded-uri-public", [("X-Forwarded-Uri", PUBLIC), ("X-Forwarded-Host", APP_HOST)]),
    ("both-families", [("X-Original-URI", PUBLIC), ("X-Forwarded-Uri", PUBLIC)]),
    ("duplicate-original-uri", [("X-Original-URI", PUBLIC), ("X-Original-URI", "/")]),
    ("forwarded-for-trusted", [("X-Forwarded-For", TRUSTED_PEER), ("X-Real-IP", TRUSTED_PEER)]),
    ("original-method", [("X-Original-Method", "OPTIONS"), ("X-Forwarded-Method", "OPTIONS")]),
]


@pytest.mark.parametrize("case", params(Case(f"untrusted-{front}-envoy-path-{sid}", front == "fastlane",
                                             (front, headers))
                                        for front in ("fastlane", "aiohttp")
                                        for sid, headers in [("plain", []), *UNTRUSTED_SPOOFS]))
def test_an_untrusted_peer_cannot_talk_its_way_past_the_envoy_path(stack: SecurityStack, tally: Tally,
                                                                     case: Case) -> None:
    """The path after /auth/check/ is the check's own; forwarded headers from an untrusted peer cannot override it."""
    front, headers = case.data
    data = request("GET", "/auth/check" + DENIED, [("Cookie", f"{COOKIE}={stack.tokens.valid}"), *headers])
    verdict, sent, _ = attempt(stack, KLASS, case.id, stack.gateways[front].port, data,
                               secrets=stack.tokens.all(), source=UNTRUSTED_PEER)
    for response in sent.responses:
        if 200 <= response.status < 300:
            verdict.allows.append(f"the check allowed {DENIED} for an untrusted peer's forwarded headers")
    tally.conclude(verdict)


@pytest.mark.parametrize("case", params(Case(f"untrusted-{front}-{sid}-{cred}", front == "fastlane",
                                             (front, headers, cred))
                                        for front in ("fastlane", "aiohttp")
                                        for sid, headers in UNTRUSTED_SPOOFS for cred in ("session", "none")))
def test_an_untrusted_peers_forwarded_headers_are_ignored(stack: SecurityStack, tally: Tally, case: Case) -> None:
    front, headers, cred = case.data
    credential = [("Cookie", f"{COOKIE}={stack.tokens.valid}")] if cred == "session" else []
    expected = 200 if cred == "session" else 401
    data = request("GET", "/auth/check", [*credential, *headers])
    verdict, sent, _ = attempt(stack, KLASS, case.id, stack.gateways[front].port, data,
                               secrets=stack.tokens.all(), source=UNTRUSTED_PEER)
    if sent.first is not None:
        if cred == "none" and 200 <= sent.first.status < 300:
            verdict.allows.append("a check without a credential was allowed")
        if sent.first.status != expected:
            verdict.problems.append(f"answered {sent.first.status}; without the forwarded headers it is {expected}")
        if sent.first.header("X-Auth-Request-Login"):
            verdict.problems.append("the 401 names a sign-in URL built from an untrusted peer's headers")
    tally.conclude(verdict)


BROWSER_SPOOFS: list[tuple[str, Headers]] = [
    ("evil-host", [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil.example"), ("X-Forwarded-Uri", "/x")]),
    ("evil-url", [("X-Original-URL", "https://evil.example/x")]),
    ("userinfo-host", [("X-Forwarded-Host", f"{APP_HOST}@evil.example"), ("X-Forwarded-Uri", "/x")]),
    ("protocol-relative-uri", [("X-Forwarded-Uri", "//evil.example/x")]),
    ("hash-host", [("X-Forwarded-Host", f"{APP_HOST}:80#@evil.example"), ("X-Forwarded-Uri", "/x")]),
]


@pytest.mark.parametrize("case", params(Case(f"{peer}-{front}-browser-redirect-{sid}", front == "fastlane",
                                             (front, peer, headers))
                                        for front in ("fastlane", "aiohttp") for peer in ("trusted", "untrusted")
                                        for sid, headers in BROWSER_SPOOFS))
def test_a_browser_mode_redirect_never_points_at_a_forged_host(stack: SecurityStack, tally: Tally,
                                                               case: Case) -> None:
    """The 302 goes to the gateway's own sign-in page, and an untrusted peer's headers never make it into rd.
    (A trusted proxy may name any host in rd: /login validates it, which class 6 tests.)"""
    front, peer, headers = case.data
    source = TRUSTED_PEER if peer == "trusted" else UNTRUSTED_PEER
    data = request("GET", "/auth/check?mode=redirect", [("Accept", "text/html"), *headers])
    verdict, sent, _ = attempt(stack, KLASS, case.id, stack.gateways[front].port, data,
                               secrets=stack.tokens.all(), source=source)
    for response in sent.responses:
        if 200 <= response.status < 300:
            verdict.allows.append("a check without a credential was allowed")
        location = response.header("Location") or ""
        if not location:
            continue
        parts = urlsplit(location)
        if parts.netloc != urlsplit(stack.nginx.url).netloc or parts.path != "/login":
            verdict.allows.append(f"the redirect leaves the sign-in page: {location!r}")
        rd = parse_qs(parts.query).get("rd", [""])[0]
        if peer == "untrusted" and rd:
            verdict.problems.append(f"rd taken from an untrusted peer's headers: {rd!r}")
    tally.conclude(verdict)


# ---- the same forgeries through nginx, Caddy and HAProxy, on a denied path -------------------------------

def proxied_cases() -> list[Case]:
    forgeries = [*FORGERIES, ("envoy-style-path-header", [("X-Envoy-Original-Path", PUBLIC)]),
                 ("duplicate-uri", [("X-Original-URI", PUBLIC), ("X-Original-URI", PUBLIC)]),
                 ("duplicate-forwarded-uri", [("X-Forwarded-Uri", PUBLIC), ("X-Forwarded-Uri", PUBLIC)])]
    return [Case(f"{front}-client-sends-{fid}-{pid}", front == "nginx" and pid == "f", (front, forged, path))
            for front in ("nginx", "caddy", "haproxy") for fid, forged in forgeries
            for pid, path in (("f", DENIED), ("af", "/api" + DENIED))]


@pytest.mark.parametrize("case", params(proxied_cases()))
def test_forged_headers_through_a_proxy_never_open_a_denied_path(stack: SecurityStack, tally: Tally,
                                                                 case: Case) -> None:
    front, forged, path = case.data
    port = stack.port_of(front)
    data = request("GET", path, [("Cookie", f"{COOKIE}={stack.tokens.valid}"), ("Accept", "application/json"),
                                 *forged])
    verdict, sent, _ = attempt(stack, KLASS, case.id, port, data, secrets=stack.tokens.all())
    for response in sent.responses:
        if 200 <= response.status < 300 and not served_by_app(response):
            verdict.problems.append(f"{front} answered {response.status} itself for a denied path")
    tally.conclude(verdict)
