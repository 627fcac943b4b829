"""Class 7: Hasura webhook calls in GET and POST mode that are too big, too deep, of the wrong shape, or ambiguous.

Hasura's contract (shared/docs/contracts.md): 200 with string session variables allows, 401 is the only deny.
So a well-formed call without a usable credential must be exactly 401; a body Hasura would never send (not
JSON, wrong types, nested too deeply, over the size limit, chunked framing) may be any 4xx; nothing is ever
a 5xx, a hang, or an allow. Bodies go to both front-ends, with Content-Length and chunked framing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.deploy.stack import COOKIE
from tests.security.corpus import Case, Tally, attempt, params
from tests.security.rawhttp import request
from tests.security.stacks import SecurityStack, Tokens

KLASS = "7-webhook"
LIMIT = 64 * 1024
"""``hasura.max_body_bytes`` (default)."""

Body = Callable[[Tokens], bytes]


def doc(headers: Any, request_field: Any = None, **extra: Any) -> bytes:
    return json.dumps({"headers": headers, "request": request_field, **extra}).encode()


def nested(depth: int, kind: str) -> str:
    return ("[" * depth + "]" * depth) if kind == "array" else ('{"a":' * depth + "1" + "}" * depth)


def deep(depth: int, kind: str) -> bytes:
    """A body whose ``request`` nests ``depth`` levels (over the gateway's 32)."""
    return b'{"headers": {}, "request": {"x": ' + nested(depth, kind).encode() + b"}}"


def padded(t: Tokens, size: int) -> bytes:
    head = doc({"Cookie": f"{COOKIE}={t.valid}"}, {"query": ""})
    pad = size - len(head)
    return doc({"Cookie": f"{COOKIE}={t.valid}"}, {"query": "x" * pad})


GRAPHQL = {"query": "{ me { id } }", "variables": {}, "operationName": None}

# (id, body builder, expectation): allow / deny (exactly 401) / malformed (any 4xx) / either (no 5xx).
POST_BODIES: list[tuple[str, Body, str]] = [
    ("cookie-valid", lambda t: doc({"Cookie": f"{COOKIE}={t.valid}"}, GRAPHQL), "allow"),
    ("cookie-valid-lower-name", lambda t: doc({"cookie": f"{COOKIE}={t.valid}"}, [GRAPHQL, GRAPHQL]), "allow"),
    ("bearer-valid", lambda t: doc({"Authorization": f"Bearer {t.valid}"}), "allow"),
    ("no-headers", lambda t: doc({}), "deny"),
    ("headers-null", lambda t: doc(None), "deny"),
    ("cookie-revoked", lambda t: doc({"Cookie": f"{COOKIE}={t.revoked}"}), "deny"),
    ("cookie-expired", lambda t: doc({"Cookie": f"{COOKIE}={t.expired}"}), "deny"),
    ("token-inside-other-cookie", lambda t: doc({"Cookie": f"other={COOKIE}={t.valid}"}), "deny"),
    ("token-as-header-name", lambda t: doc({f"{COOKIE}": t.valid}), "deny"),
    ("token-under-x-header", lambda t: doc({"X-Gw-Session": t.valid, "X-Hasura-Session": t.valid}), "deny"),
    ("token-in-request", lambda t: doc({}, {"query": "", "variables": {"Cookie": f"{COOKIE}={t.valid}"}}), "deny"),
    ("token-at-top-level", lambda t: doc({}, None, Cookie=f"{COOKIE}={t.valid}"), "deny"),
    ("bearer-revoked-cookie-valid", lambda t: doc({"Authorization": f"Bearer {t.revoked}",
                                                   "Cookie": f"{COOKIE}={t.valid}"}), "deny"),
    ("bearer-junk-cookie-valid", lambda t: doc({"Authorization": "Bearer junk", "Cookie": f"{COOKIE}={t.valid}"}),
     "deny"),
    ("authorization-two-users", lambda t: doc({"Authorization": f"Bearer {t.valid}",
                                               "authorization": f"Bearer {t.other}"}), "deny"),
    ("authorization-valid-and-revoked", lambda t: doc({"Authorization": f"Bearer {t.valid}",
                                                       "AUTHORIZATION": f"Bearer {t.revoked}"}), "deny"),
    ("role-not-held", lambda t: doc({"Cookie": f"{COOKIE}={t.valid}", "X-Hasura-Role": "admin"}), "deny"),
    ("role-twice", lambda t: doc({"Cookie": f"{COOKIE}={t.valid}", "X-Hasura-Role": "user",
                                  "x-hasura-role": "admin"}), "deny"),
    ("role-admin-secret", lambda t: doc({"X-Hasura-Admin-Secret": "guess", "X-Hasura-Role": "admin"}), "deny"),
    ("cookie-two-cases-two-users", lambda t: doc({"Cookie": f"{COOKIE}={t.other}", "cookie": f"{COOKIE}={t.valid}"}),
     "either"),
    ("cookie-valid-and-revoked-cases", lambda t: doc({"Cookie": f"{COOKIE}={t.valid}",
                                                      "cookie": f"{COOKIE}={t.revoked}"}), "either"),
    ("duplicate-json-keys", lambda t: (b'{"headers": {"Cookie": "' + f"{COOKIE}={t.valid}".encode()
                                       + b'"}, "headers": {}}'), "either"),
    ("duplicate-json-keys-reversed", lambda t: (b'{"headers": {}, "headers": {"Cookie": "'
                                                + f"{COOKIE}={t.valid}".encode() + b'"}}'), "either"),
    # wrong types
    ("body-array", lambda t: b"[]", "malformed"),
    ("body-string", lambda t: b'"x"', "malformed"),
    ("body-number", lambda t: b"1", "malformed"),
    ("body-null", lambda t: b"null", "malformed"),
    ("body-true", lambda t: b"true", "malformed"),
    ("headers-list", lambda t: doc([["Cookie", f"{COOKIE}={t.valid}"]]), "malformed"),
    ("headers-string", lambda t: doc(f"Cookie: {COOKIE}={t.valid}"), "malformed"),
    ("headers-number", lambda t: doc(1), "malformed"),
    ("cookie-number", lambda t: doc({"Cookie": 1}), "malformed"),
    ("cookie-null", lambda t: doc({"Cookie": None}), "malformed"),
    ("cookie-list", lambda t: doc({"Cookie": [f"{COOKIE}={t.valid}"]}), "malformed"),
    ("cookie-object", lambda t: doc({"Cookie": {COOKIE: t.valid}}), "malformed"),
    ("cookie-bool", lambda t: doc({"Cookie": True}), "malformed"),
    ("request-string", lambda t: doc({"Cookie": f"{COOKIE}={t.valid}"}, "query"), "malformed"),
    ("request-number", lambda t: doc({"Cookie": f"{COOKIE}={t.valid}"}, 5), "malformed"),
    # not JSON
    ("empty", lambda t: b"", "malformed"),
    ("invalid-json", lambda t: b"{", "malformed"),
    ("trailing-garbage", lambda t: doc({"Cookie": f"{COOKIE}={t.valid}"}) + b"x", "malformed"),
    ("two-documents", lambda t: doc({}) + doc({"Cookie": f"{COOKIE}={t.valid}"}), "malformed"),
    ("non-utf8", lambda t: b'{"headers": {"Cookie": "\xff\xfe"}}', "malformed"),
    ("utf16", lambda t: doc({"Cookie": f"{COOKIE}={t.valid}"}).decode().encode("utf-16"), "either"),
    ("bom", lambda t: b"\xef\xbb\xbf" + doc({"Cookie": f"{COOKIE}={t.valid}"}), "either"),
    ("nan", lambda t: b'{"headers": {}, "request": NaN}', "malformed"),
    ("infinity", lambda t: b'{"headers": {}, "request": {"x": Infinity}}', "either"),
    ("huge-number", lambda t: b'{"headers": {}, "request": {"x": 1' + b"0" * 5000 + b"}}", "either"),
    ("lone-surrogate", lambda t: b'{"headers": {"Cookie": "\\ud800"}}', "either"),
    ("nul-in-name", lambda t: doc({"Cookie\u0000": f"{COOKIE}={t.valid}"}), "deny"),
    ("many-headers", lambda t: doc({f"X-{i}": "v" for i in range(2000)}), "either"),
    # too deep
    *[(f"deep-{kind}-{depth}", (lambda d, k: lambda t: deep(d, k))(depth, kind), "malformed")
      for kind in ("array", "object") for depth in (33, 100, 1000, 10000, 30000)],
    ("deep-in-headers", lambda t: b'{"headers": {"Cookie": ' + nested(5000, "array").encode() + b"}}", "malformed"),
    ("deep-unclosed", lambda t: b'{"headers": {}, "request": ' + b"[" * 60000, "malformed"),
    # too big
    ("over-limit-by-one", lambda t: padded(t, LIMIT + 1), "malformed"),
    ("over-limit-1m", lambda t: padded(t, 1024 * 1024), "malformed"),
    ("at-limit", lambda t: padded(t, LIMIT), "either"),
]


def post_cases() -> list[Case]:
    return [Case(f"post-{front}-{framing}-{bid}", front == "fastlane" and framing == "length",
                 (front, framing, build, expectation))
            for front in ("fastlane", "aiohttp") for framing in ("length", "chunked")
            for bid, build, expectation in POST_BODIES]


def chunked(body: bytes, size: int = 4096) -> bytes:
    pieces = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


@pytest.mark.parametrize("case", params(post_cases()))
def test_post_mode_bodies(stack: SecurityStack, tally: Tally, case: Case) -> None:
    front, framing, build, expectation = case.data
    if framing == "chunked":  # Hasura sends Content-Length: refusing chunked bodies (any 4xx) is fine
        expectation = {"allow": "either", "deny": "malformed"}.get(expectation, expectation)
    body = build(stack.tokens)
    headers = [("Content-Type", "application/json"), ("Accept", "application/json")]
    if framing == "length":
        data = request("POST", "/auth/webhook", headers, body)
    else:
        data = request("POST", "/auth/webhook", [*headers, ("Transfer-Encoding", "chunked")]) + chunked(body)
    verdict, sent, _ = attempt(stack, KLASS, case.id, stack.gateways[front].port, data, secrets=stack.tokens.all())
    judge(verdict.allows, verdict.problems, sent.first, expectation)
    tally.conclude(verdict)


def judge(allows: list[str], problems: list[str], response: Any, expectation: str) -> None:
    """The webhook's contract for one answer (None: the connection closed without one)."""
    if response is None:
        if expectation == "allow":
            problems.append("no answer to a valid call")
        return
    status = response.status
    if 200 <= status < 300:
        if expectation in ("deny", "malformed"):
            allows.append(f"the webhook allowed ({response.text[:100]!r})")
            return
        try:
            variables = response.json()
        except ValueError:
            problems.append("a 200 without a JSON body")
            return
        if not isinstance(variables, dict) or "X-Hasura-Role" not in variables or \
                not all(isinstance(v, str) for v in variables.values()):
            problems.append(f"a 200 body Hasura cannot use: {variables!r}")
    elif expectation == "allow":
        problems.append(f"a valid call was refused ({status})")
    elif expectation == "deny" and status != 401:
        problems.append(f"Hasura's only deny is 401, not {status}")
    elif expectation == "malformed" and not 400 <= status < 500:
        problems.append(f"a malformed body is a 4xx, not {status}")


# ---- GET mode: the client's headers on the request itself -----------------------------------------------

GetHeaders = Callable[[Tokens], list[tuple[str, str]]]
# (id, headers, whether a POST-mode body carrying the valid cookie rides along, expectation)
GET_CALLS: list[tuple[str, GetHeaders, bool, str]] = [
    ("cookie-valid", lambda t: [("Cookie", f"{COOKIE}={t.valid}")], False, "allow"),
    ("role-held", lambda t: [("Cookie", f"{COOKIE}={t.valid}"), ("X-Hasura-Role", "user")], False, "allow"),
    ("role-not-held", lambda t: [("Cookie", f"{COOKIE}={t.valid}"), ("X-Hasura-Role", "admin")], False, "deny"),
    ("role-twice-same", lambda t: [("Cookie", f"{COOKIE}={t.valid}"), ("X-Hasura-Role", "user"),
                                   ("X-Hasura-Role", "user")], False, "deny"),
    ("role-twice-cases", lambda t: [("Cookie", f"{COOKIE}={t.valid}"), ("X-Hasura-Role", "user"),
                                    ("x-hasura-role", "admin")], False, "deny"),
    ("role-list", lambda t: [("Cookie", f"{COOKIE}={t.valid}"), ("X-Hasura-Role", "user,admin")], False, "deny"),
    ("role-upper", lambda t: [("Cookie", f"{COOKIE}={t.valid}"), ("X-Hasura-Role", "ADMIN")], False, "deny"),
    ("role-with-spaces", lambda t: [("Cookie", f"{COOKIE}={t.valid}"), ("X-Hasura-Role", " user ")], False, "either"),
    ("role-empty", lambda t: [("Cookie", f"{COOKIE}={t.valid}"), ("X-Hasura-Role", "")], False, "either"),
    ("allowed-roles-header", lambda t: [("Cookie", f"{COOKIE}={t.valid}"), ("X-Hasura-Allowed-Roles", "admin"),
                                        ("X-Hasura-Role", "admin")], False, "deny"),
    ("admin-secret-no-session", lambda t: [("X-Hasura-Admin-Secret", "guess"), ("X-Hasura-Role", "admin")], False,
     "deny"),
    ("user-id-spoof", lambda t: [("X-Hasura-User-Id", "1")], False, "deny"),
    ("credential-only-in-body", lambda t: [("Content-Type", "application/json")], True, "deny"),
    ("revoked", lambda t: [("Cookie", f"{COOKIE}={t.revoked}")], False, "deny"),
]


def get_cases() -> list[Case]:
    return [Case(f"get-{front}-{cid}", front == "fastlane", (front, build, with_body, expectation))
            for front in ("fastlane", "aiohttp") for cid, build, with_body, expectation in GET_CALLS]


@pytest.mark.parametrize("case", params(get_cases()))
def test_get_mode_calls(stack: SecurityStack, tally: Tally, case: Case) -> None:
    front, build, with_body, expectation = case.data
    # a POST-mode body on a GET: GET mode reads the request's headers only
    body = doc({"Cookie": f"{COOKIE}={stack.tokens.valid}"}) if with_body else None
    data = request("GET", "/auth/webhook", [("Accept", "application/json"), *build(stack.tokens)], body)
    verdict, sent, _ = attempt(stack, KLASS, case.id, stack.gateways[front].port, data, secrets=stack.tokens.all())
    judge(verdict.allows, verdict.problems, sent.first, expectation)
    tally.conclude(verdict)


@pytest.mark.parametrize("case", params(Case(f"post-{front}-http-cookie-empty-body-headers", True, front)
                                        for front in ("fastlane", "aiohttp")))
def test_post_mode_reads_only_the_body(stack: SecurityStack, tally: Tally, case: Case) -> None:
    """A session cookie on the POST itself (Hasura's own connection) is not the client's: 401."""
    data = request("POST", "/auth/webhook", [("Cookie", f"{COOKIE}={stack.tokens.valid}"),
                                             ("Authorization", f"Bearer {stack.tokens.valid}"),
                                             ("Content-Type", "application/json")], doc({}))
    verdict, sent, _ = attempt(stack, KLASS, case.id, stack.gateways[case.data].port, data,
                               secrets=stack.tokens.all())
    judge(verdict.allows, verdict.problems, sent.first, "deny")
    tally.conclude(verdict)
