"""Class 5: where the session token may come from, and every way of smuggling one in that must not count.

Each variant is a set of request headers built from the corpus's tokens (a valid browser session, another
user's valid API token, a revoked and an expired token) with what it must get:

- ``deny``: no usable credential (a token inside another cookie's value, a look-alike cookie name, junk
  around the token, a revoked or expired token, a bearer header that is not exactly one well-formed token,
  a bad bearer next to a good cookie...): 401, and through a proxy the app receives nothing;
- ``allow``: a control that must pass (else the refusals prove nothing);
- ``either``: lenient forms a server may accept or refuse (scheme letter case, extra spaces, a quoted
  cookie value, sizes over a limit): never a 5xx, a hang or a leak.

Every variant goes to both gateway front-ends' /auth/check and /auth/webhook (GET mode), and through nginx
and Caddy to the app's /api/.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.deploy.stack import COOKIE
from tests.security.corpus import Case, Tally, attempt, params, served_by_app
from tests.security.rawhttp import request
from tests.security.stacks import SecurityStack, Tokens

KLASS = "5-credentials"
Headers = list[tuple[str, str]]
Variant = tuple[str, Callable[[Tokens], Headers], str]


def cookie(value: str) -> Headers:
    return [("Cookie", value)]


def bearer(value: str) -> Headers:
    return [("Authorization", value)]


def many_cookies(count: int, then: str) -> str:
    return "; ".join([f"c{i}=v{i}" for i in range(count)] + [then])


VARIANTS: list[Variant] = [
    # controls
    ("cookie-valid", lambda t: cookie(f"{COOKIE}={t.valid}"), "allow"),
    ("cookie-valid-among-others", lambda t: cookie(f"theme=dark; {COOKIE}={t.valid}; lang=en"), "allow"),
    ("bearer-valid", lambda t: bearer(f"Bearer {t.valid}"), "allow"),
    ("bearer-other-user", lambda t: bearer(f"Bearer {t.other}"), "allow"),
    # the token where it does not belong
    ("token-inside-other-cookie", lambda t: cookie(f"other={COOKIE}={t.valid}"), "deny"),
    ("token-inside-quoted-cookie", lambda t: cookie(f'other="{COOKIE}={t.valid}"'), "deny"),
    ("token-after-comma", lambda t: cookie(f"other=a,{COOKIE}={t.valid}"), "deny"),
    ("token-in-cookie-attribute", lambda t: cookie(f"other=a; Path=/; {COOKIE}x={t.valid}"), "deny"),
    ("cookie-name-suffix", lambda t: cookie(f"{COOKIE}_x={t.valid}"), "deny"),
    ("cookie-name-prefix", lambda t: cookie(f"x{COOKIE}={t.valid}"), "deny"),
    ("cookie-name-dash", lambda t: cookie(f"gw-session={t.valid}"), "deny"),
    ("cookie-name-upper", lambda t: cookie(f"{COOKIE.upper()}={t.valid}"), "deny"),
    ("cookie-name-encoded", lambda t: cookie(f"gw%5Fsession={t.valid}"), "deny"),
    ("cookie-host-prefix", lambda t: cookie(f"__Host-{COOKIE}={t.valid}"), "deny"),
    ("token-as-cookie-name", lambda t: cookie(f"{t.valid}=1"), "deny"),
    ("token-in-cookie2", lambda t: [("Cookie2", f"{COOKIE}={t.valid}")], "deny"),
    ("token-in-set-cookie", lambda t: [("Set-Cookie", f"{COOKIE}={t.valid}")], "deny"),
    ("token-in-x-header", lambda t: [("X-Gw-Session", t.valid), ("X-Auth-Token", t.valid)], "deny"),
    ("token-in-proxy-authorization", lambda t: [("Proxy-Authorization", f"Bearer {t.valid}")], "deny"),
    ("token-in-underscore-cookie-header", lambda t: [("X_Cookie", f"{COOKIE}={t.valid}")], "deny"),
    # junk around the token
    ("cookie-trailing-junk", lambda t: cookie(f"{COOKIE}={t.valid}x"), "deny"),
    ("cookie-trailing-dot", lambda t: cookie(f"{COOKIE}={t.valid}."), "deny"),
    ("cookie-leading-junk", lambda t: cookie(f"{COOKIE}=x{t.valid}"), "deny"),
    ("cookie-truncated", lambda t: cookie(f"{COOKIE}={t.valid[:-1]}"), "deny"),
    ("cookie-doubled", lambda t: cookie(f"{COOKIE}={t.valid}{t.valid}"), "deny"),
    ("cookie-encoded-nul", lambda t: cookie(f"{COOKIE}={t.valid}%00"), "deny"),
    ("cookie-space-then-junk", lambda t: cookie(f"{COOKIE}={t.valid} x"), "deny"),
    ("cookie-comma-then-junk", lambda t: cookie(f"{COOKIE}={t.valid},x"), "deny"),
    ("cookie-percent-encoded-token", lambda t: cookie(f"{COOKIE}={t.valid.replace('_', '%5F')}"), "deny"),
    ("cookie-non-utf8-after", lambda t: cookie(f"{COOKIE}={t.valid}\udcff"), "deny"),
    ("cookie-upper-prefix", lambda t: cookie(f"{COOKIE}=GWT_{t.valid[4:]}"), "deny"),
    # dead tokens
    ("cookie-revoked", lambda t: cookie(f"{COOKIE}={t.revoked}"), "deny"),
    ("cookie-expired", lambda t: cookie(f"{COOKIE}={t.expired}"), "deny"),
    ("bearer-revoked", lambda t: bearer(f"Bearer {t.revoked}"), "deny"),
    ("bearer-expired", lambda t: bearer(f"Bearer {t.expired}"), "deny"),
    # the bearer header
    ("bearer-empty", lambda t: bearer("Bearer"), "deny"),
    ("bearer-space", lambda t: bearer("Bearer "), "deny"),
    ("bearer-trailing-junk", lambda t: bearer(f"Bearer {t.valid}x"), "deny"),
    ("bearer-second-word", lambda t: bearer(f"Bearer {t.valid} junk"), "deny"),
    ("bearer-two-tokens", lambda t: bearer(f"Bearer {t.valid}, Bearer {t.other}"), "deny"),
    ("bearer-no-scheme", lambda t: bearer(t.valid), "deny"),
    ("bearer-other-scheme", lambda t: bearer(f"Token {t.valid}"), "deny"),
    ("bearer-scheme-glued", lambda t: bearer(f"Bearer{t.valid}"), "deny"),
    ("bearer-quoted", lambda t: bearer(f'Bearer "{t.valid}"'), "deny"),
    ("two-authorization-different-users", lambda t: [*bearer(f"Bearer {t.valid}"), *bearer(f"Bearer {t.other}")],
     "deny"),
    ("two-authorization-junk-first", lambda t: [*bearer("Bearer junk"), *bearer(f"Bearer {t.valid}")], "deny"),
    ("two-authorization-junk-last", lambda t: [*bearer(f"Bearer {t.valid}"), *bearer("Bearer junk")], "deny"),
    ("two-authorization-revoked-first", lambda t: [*bearer(f"Bearer {t.revoked}"), *bearer(f"Bearer {t.valid}")],
     "deny"),
    ("bad-bearer-good-cookie", lambda t: [*bearer("Bearer junk"), *cookie(f"{COOKIE}={t.valid}")], "deny"),
    ("revoked-bearer-good-cookie", lambda t: [*bearer(f"Bearer {t.revoked}"), *cookie(f"{COOKIE}={t.valid}")],
     "deny"),
    ("empty-bearer-good-cookie", lambda t: [*bearer("Bearer "), *cookie(f"{COOKIE}={t.valid}")], "deny"),
    # lenient forms: accepting or refusing both fine
    ("bearer-lower-case", lambda t: bearer(f"bearer {t.valid}"), "either"),
    ("bearer-upper-case", lambda t: bearer(f"BEARER {t.valid}"), "either"),
    ("bearer-two-spaces", lambda t: bearer(f"Bearer  {t.valid}"), "either"),
    ("bearer-tab", lambda t: bearer(f"Bearer\t{t.valid}"), "either"),
    ("bearer-leading-space", lambda t: bearer(f" Bearer {t.valid}"), "either"),
    ("bearer-trailing-space", lambda t: bearer(f"Bearer {t.valid} "), "either"),
    ("two-authorization-same", lambda t: [*bearer(f"Bearer {t.valid}"), *bearer(f"Bearer {t.valid}")], "either"),
    ("basic-and-cookie", lambda t: [*bearer("Basic dXNlcjpwYXNz"), *cookie(f"{COOKIE}={t.valid}")], "either"),
    ("cookie-quoted", lambda t: cookie(f'{COOKIE}="{t.valid}"'), "either"),
    ("cookie-trailing-semicolon", lambda t: cookie(f"{COOKIE}={t.valid};"), "either"),
    ("cookie-spaces-around-equals", lambda t: cookie(f"{COOKIE} = {t.valid}"), "either"),
    ("cookie-revoked-then-valid", lambda t: cookie(f"{COOKIE}={t.revoked}; {COOKIE}={t.valid}"), "either"),
    ("cookie-valid-then-revoked", lambda t: cookie(f"{COOKIE}={t.valid}; {COOKIE}={t.revoked}"), "either"),
    ("cookie-junk-then-valid", lambda t: cookie(f"{COOKIE}=junk; {COOKIE}={t.valid}"), "either"),
    ("cookie-two-users", lambda t: cookie(f"{COOKIE}={t.valid}; {COOKIE}={t.other}"), "either"),
    ("two-cookie-headers", lambda t: [*cookie("a=b"), *cookie(f"{COOKIE}={t.valid}")], "either"),
    ("two-cookie-headers-two-users", lambda t: [*cookie(f"{COOKIE}={t.other}"), *cookie(f"{COOKIE}={t.valid}")],
     "either"),
    ("cookie-header-lower-case", lambda t: [("cookie", f"{COOKIE}={t.valid}")], "either"),
    # sizes
    ("cookie-8k-of-others", lambda t: cookie(many_cookies(700, f"{COOKIE}={t.valid}")), "either"),
    ("cookie-200-pairs", lambda t: cookie(many_cookies(200, f"{COOKIE}={t.valid}")), "either"),
    ("cookie-64k", lambda t: cookie("big=" + "a" * 65536 + f"; {COOKIE}={t.valid}"), "either"),
    ("cookie-100-headers", lambda t: [*cookie("a=b") * 100, *cookie(f"{COOKIE}={t.valid}")], "either"),
    ("bearer-8k", lambda t: bearer("Bearer " + "A" * 8192), "deny"),
    ("cookie-huge-token", lambda t: cookie(f"{COOKIE}=gwt_" + "A" * 10000), "deny"),
]

TARGETS = {
    "fastlane-check": ("fastlane", "/auth/check"),
    "aiohttp-check": ("aiohttp", "/auth/check"),
    "fastlane-webhook": ("fastlane", "/auth/webhook"),
    "aiohttp-webhook": ("aiohttp", "/auth/webhook"),
    "nginx-api": ("nginx", "/api/items"),
    "caddy-api": ("caddy", "/api/items"),
    "haproxy-api": ("haproxy", "/api/items"),
}
CORE_TARGETS = ("fastlane-check",)


def cases() -> list[Case]:
    return [Case(f"{target}-{vid}", target in CORE_TARGETS, (target, build, expectation))
            for target in TARGETS for vid, build, expectation in VARIANTS]


@pytest.mark.parametrize("case", params(cases()))
def test_only_a_real_credential_in_its_place_counts(stack: SecurityStack, tally: Tally, case: Case) -> None:
    target, build, expectation = case.data
    front, path = TARGETS[target]
    proxied = front in ("nginx", "caddy", "haproxy")
    port = stack.port_of(front) if proxied else stack.gateways[front].port
    data = request("GET", path, [("Accept", "application/json"), *build(stack.tokens)])
    verdict, sent, received = attempt(stack, KLASS, case.id, port, data, secrets=stack.tokens.all())
    response = sent.first
    if response is None:
        tally.conclude(verdict)  # a close: judged on hang and leaks only
        return
    passed = bool(received) if proxied else 200 <= response.status < 300
    if expectation == "deny":
        if passed:
            verdict.allows.append("a request without a usable credential was let through")
        elif not proxied and response.status != 401:
            verdict.problems.append(f"a missing or bad credential is a 401, not {response.status}")
    elif expectation == "allow" and not passed:
        verdict.problems.append(f"a valid credential was refused ({response.status})")
    if proxied and 200 <= response.status < 300 and not served_by_app(response):
        verdict.problems.append(f"{front} answered {response.status} itself")
    tally.conclude(verdict)
