"""Class 2: a signed-in user dresses a denied path up so the proxy, the gateway and the app read it differently.

Dot segments (plain, percent-encoded, overlong UTF-8), encoded and doubled slashes, backslashes,
``;parameters``, NUL and ``#`` escapes, letter case, query strings that look like paths, each wrapped around
``/forbidden`` and ``/api/forbidden`` and sent through nginx, Caddy and HAProxy. The oracle looks at the path the app
actually received and routes it the ways apps do (:func:`tests.security.corpus.app_routes`: decoded once,
slashes merged, dot segments removed, ``;parameters`` dropped); if any of those lies under a denied prefix,
the request must not have reached the app.

Letter case is significant: nginx matches locations case-sensitively, and so do the access rules, so
``/FORBIDDEN/x`` is another resource and may be served.
"""

from __future__ import annotations

import itertools

import pytest

from tests.deploy.stack import COOKIE
from tests.security.corpus import Case, Tally, attempt, denied_route, params, served_by_app
from tests.security.rawhttp import request
from tests.security.stacks import SecurityStack

KLASS = "2-path"
FRONTS = ("nginx", "caddy", "haproxy")
BASES = {"f": "/forbidden", "af": "/api/forbidden"}

# Literal tricks; {b} is the denied base ("/forbidden"), {n} the base without its leading slash.
TRICKS: list[tuple[str, str]] = [
    ("trailing-dotdot", "{b}/x/.."),
    ("trailing-dot", "{b}/."),
    ("trailing-encoded-dot", "{b}/%2e"),
    ("trailing-encoded-dotdot", "{b}/x/%2e%2e"),
    ("trailing-mixed-dotdot", "{b}/x/.%2E"),
    ("bare", "{b}"),
    ("bare-slash", "{b}/"),
    ("upper-case", "{B}/x"),
    ("double-slash", "/{b}/x"),
    ("triple-slash", "//{b}/x"),
    ("inner-double-slash", "{b}//x"),
    ("dot-prefix", "/.{b}/"),
    ("encoded-leading-slash", "/%2f{n}/x"),
    ("encoded-slash-inside", "{b}%2fx"),
    ("encoded-slash-upper", "{b}%2Fx"),
    ("semicolon", "{b};x"),
    ("semicolon-then-path", "{b};x/y"),
    ("semicolon-empty", "{b};/x"),
    ("semicolon-jsessionid", "{b};jsessionid=1/x"),
    ("nul", "{b}%00"),
    ("nul-then-path", "{b}%00/x"),
    ("encoded-hash", "{b}%23/x"),
    ("encoded-question", "{b}%3f/x"),
    ("parent-of-public", "/public/..{b}/x"),
    ("encoded-dotdot-root", "/%2e%2e{b}"),
    ("dotdot-root", "/..{b}"),
    ("overlong-dotdot", "/public/%c0%ae%c0%ae{b}/x"),
    ("overlong-slash", "/public/..%c0%af{n}/x"),
    ("invalid-utf8", "{b}%ff/x"),
    ("invalid-utf8-lead", "{b}/%c3"),
    ("backslash", "{b}\\x"),
    ("backslash-leading", "/\\{n}/x"),
    ("backslash-dotdot", "/public\\..\\{n}\\x"),
    ("encoded-backslash-dotdot", "/public/..%5c{n}/x"),
    ("query-confusion", "/ok?x={b}/"),
    ("query-confusion-dotdot", "/ok?/../..{b}/x"),
    ("encoded-query-dotdot", "/ok%3f/..{b}/x"),
    ("semicolon-dotdot", "/public/..;{b}/x"),
    ("semicolon-dotdot-slash", "/public/..;/{n}/x"),
    ("dotdot-semicolon-after", "{b}/x/..;"),
    ("tab-encoded", "{b}%09"),
    ("space-encoded", "{b}%20/x"),
    ("unreserved-escapes", "{be}/x"),
    ("double-encoded-dotdot", "/public/%252e%252e{b}/x"),
    ("fullwidth-dots", "/public/%ef%bc%8e%ef%bc%8e{b}/x"),
    ("long-tail", "{b}/" + "a" * 4000),
]

# Generated: /public <slash> <dotdot> <slash> base <slash> x, over every spelling of each part.
SLASHES = {"s": "/", "e2f": "%2f", "E2F": "%2F", "ss": "//", "bs": "\\", "e5c": "%5c"}
DOTS = {"d": ".", "e": "%2e", "E": "%2E", "o": "%c0%ae"}

# Paths that must be served (the session is good): otherwise the refusals above prove nothing.
CONTROLS: list[tuple[str, str]] = [
    ("public", "/public/x"),
    ("prefix-lookalike", "/forbiddenx"),
    ("suffix", "/x/forbidden"),
    ("query-mentions-denied", "/ok?x=/forbidden/"),
    ("api", "/api/items"),
]


PROXY_CORE = {"trailing-dotdot", "double-slash", "encoded-slash-inside", "semicolon", "parent-of-public",
              "semicolon-dotdot", "semicolon-dotdot-slash", "encoded-dotdot-root", "backslash-dotdot", "nul"}
"""The tricks that also run through Caddy and HAProxy in the normal run (every trick does in the full run)."""


def spell(template: str, base: str) -> str:
    """``template`` with ``{b}`` the base, ``{B}`` it in upper case, ``{n}`` it without its leading slash and
    ``{be}`` it with "forbidden" spelled in percent-escapes of unreserved characters."""
    return template.format(b=base, B=base.upper(), n=base[1:],
                           be=base.replace("forbidden", "%66%6f%72%62%69%64%64%65%6e"))


def generated() -> list[tuple[str, str]]:
    out = []
    for (sid, slash), (did1, dot1), (did2, dot2) in itertools.product(SLASHES.items(), DOTS.items(), DOTS.items()):
        out.append((f"gen-{sid}-{did1}{did2}", f"/public{slash}{dot1}{dot2}{slash}{{n}}{slash}x"))
    for (sid, slash), (did, dot) in itertools.product(SLASHES.items(), DOTS.items()):
        out.append((f"gen-tail-{sid}-{did}", f"{{b}}{slash}x{slash}{dot}{dot}"))
        out.append((f"gen-self-{sid}-{did}", f"{{b}}{slash}{dot}"))
    return out


def cases() -> list[Case]:
    out = []
    for front in FRONTS:
        for (trick_id, template), is_core in [*((t, True) for t in TRICKS), *((t, False) for t in generated())]:
            for base_id, base in BASES.items():
                path = spell(template, base)
                for method in ("GET", "POST"):
                    core = is_core and base_id == "f" and method == "GET" and \
                        (front == "nginx" or trick_id in PROXY_CORE)
                    case_id = f"{front}-{trick_id}-{base_id}" + ("-post" if method == "POST" else "")
                    out.append(Case(case_id, core, (front, path, method)))
    return out


@pytest.mark.parametrize("case", params(cases()))
def test_a_dressed_up_denied_path_never_reaches_the_app(stack: SecurityStack, tally: Tally, case: Case) -> None:
    front, path, method = case.data
    port = stack.port_of(front)
    body = b'{"x": 1}' if method == "POST" else None
    headers = [("Cookie", f"{COOKIE}={stack.tokens.valid}"), ("Accept", "application/json")]
    if body is not None:
        headers.append(("Content-Type", "application/json"))
    data = request(method, path, headers, body, host="127.0.0.1")
    verdict, sent, _ = attempt(stack, KLASS, case.id, port, data, secrets=stack.tokens.all())
    if denied_route(path.partition("?")[0]) is not None:
        for response in sent.responses:
            if 200 <= response.status < 300 and not served_by_app(response):
                verdict.problems.append(f"{front} answered {response.status} itself for a denied path")
    tally.conclude(verdict)


@pytest.mark.parametrize("case", params(Case(f"control-{front}-{cid}", True, (front, path))
                                        for front in FRONTS for cid, path in CONTROLS))
def test_control_allowed_paths_reach_the_app(stack: SecurityStack, tally: Tally, case: Case) -> None:
    front, path = case.data
    port = stack.port_of(front)
    data = request("GET", path, [("Cookie", f"{COOKIE}={stack.tokens.valid}"), ("Accept", "application/json")])
    verdict, sent, received = attempt(stack, KLASS, case.id, port, data, secrets=stack.tokens.all())
    expected = path.partition("?")[0]
    if not (sent.first and served_by_app(sent.first) and [r["raw_path"] for r in received] == [expected]):
        verdict.problems.append(f"{path!r} was not served to the app as {expected!r}")
    tally.conclude(verdict)

