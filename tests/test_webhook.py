"""The Hasura auth webhook against contracts.md: GET and POST mode, roles, anonymous, expiry, bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.access import DenyAll
from gateway.app import CHECKER
from gateway.hasura import encode_variables
from gateway.sessions import start_session
from gateway.tokens import mint_token
from tests.harness import FRONT_ENDS, Gateway, GatewayFactory


@pytest.fixture(params=FRONT_ENDS)
def frontend(request: pytest.FixtureRequest) -> str:
    """Every test here runs through the fast lane and through aiohttp alone."""
    return str(request.param)


COOKIE = "gw_session"


def assert_all_strings(body: dict[str, Any]) -> None:
    assert all(isinstance(v, str) for v in body.values()), body


async def webhook_get(gw: Gateway, **headers: str) -> tuple[int, Any]:
    resp = await gw.client.get("/auth/webhook", headers=headers)
    return resp.status, await resp.json()


async def webhook_post(gw: Gateway, payload: Any) -> tuple[int, Any]:
    resp = await gw.client.post("/auth/webhook", json=payload)
    return resp.status, await resp.json()


@pytest.mark.parametrize("value", ["", "plain", 'q"uote \\ back/slash', "tab\t nl\n nul\x00 del\x7f",
                                   "é ü \u2028 \ufeff", "\U0001f600", "</script>"])
def test_session_variables_encode_exactly_as_json_dumps(value: str) -> None:
    body = {"X-Hasura-User-Id": "1", "X-Hasura-Role": value, f"X-Hasura-{value}": "x"}
    assert encode_variables(body) == json.dumps(body).encode()
    assert json.loads(encode_variables(body)) == body
    assert encode_variables({}) == b"{}"


async def test_get_mode_cookie_allows_with_string_session_variables(gw: Gateway) -> None:
    token = await gw.token("ada@example.com")
    status, body = await webhook_get(gw, Cookie=f"theme=dark; {COOKIE}={token}")
    assert status == 200
    assert_all_strings(body)
    assert body["X-Hasura-Role"] == "user"
    assert body["X-Hasura-User-Id"] == str(gw.users["ada@example.com"].id)
    assert body["Cache-Control"].startswith("max-age=")


async def test_get_mode_bearer_allows(gw: Gateway) -> None:
    token = await gw.token("api@example.com", kind="api")
    status, body = await webhook_get(gw, Authorization=f"Bearer {token}")
    assert status == 200
    assert body["X-Hasura-User-Id"] == str(gw.users["api@example.com"].id)


@pytest.mark.parametrize("request_field", [
    {"query": "{ me { id } }", "variables": {}, "operationName": None},
    [{"query": "{ a }"}, {"query": "{ b }"}],
    None,
], ids=["single", "batched", "null"])
@pytest.mark.parametrize("cookie_name", ["Cookie", "cookie", "COOKIE"])
async def test_post_mode_reads_headers_case_insensitively(gw: Gateway, request_field: Any,
                                                          cookie_name: str) -> None:
    token = await gw.token()
    status, body = await webhook_post(gw, {"headers": {cookie_name: f"{COOKIE}={token}"},
                                           "request": request_field})
    assert status == 200
    assert body["X-Hasura-Role"] == "user"
    assert_all_strings(body)


async def test_post_mode_bearer(gw: Gateway) -> None:
    token = await gw.token()
    status, _ = await webhook_post(gw, {"headers": {"authorization": f"bearer {token}"}, "request": None})
    assert status == 200


@pytest.mark.parametrize(("roles", "requested", "expected"), [
    ((), None, "user"),
    (("editor",), None, "editor"),
    (("editor", "user"), None, "user"),
    (("editor", "user"), "editor", "editor"),
    (("editor",), "admin", None),
    ((), "admin", None),
    ((), "user", "user"),
], ids=["no-roles-default", "only-role", "default-preferred", "switch-held", "switch-not-held",
        "no-roles-ask-admin", "no-roles-ask-default"])
async def test_role_selection(gw: Gateway, roles: tuple[str, ...], requested: str | None,
                              expected: str | None) -> None:
    token = await gw.token(roles=roles)
    headers = {"Cookie": f"{COOKIE}={token}"}
    if requested is not None:
        headers["X-Hasura-Role"] = requested
    status, body = await webhook_get(gw, **headers)
    if expected is None:
        assert status == 401
    else:
        assert status == 200
        assert body["X-Hasura-Role"] == expected
    # POST mode reads the same header, any case
    post_headers = {"cookie": headers["Cookie"]}
    if requested is not None:
        post_headers["x-HASURA-role"] = requested
    post_status, post_body = await webhook_post(gw, {"headers": post_headers, "request": None})
    assert post_status == status
    if expected is not None:
        assert post_body["X-Hasura-Role"] == expected


async def test_two_role_headers_are_refused(gw: Gateway) -> None:
    token = await gw.token(roles=("user", "editor"))
    resp = await gw.client.get("/auth/webhook", headers=[("Cookie", f"{COOKIE}={token}"),
                                                         ("X-Hasura-Role", "user"), ("X-Hasura-Role", "editor")])
    assert resp.status == 401


async def test_anonymous_role_only_for_callers_without_credentials(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**{"hasura.anonymous_role": "anonymous"})
    assert await webhook_get(gw) == (200, {"X-Hasura-Role": "anonymous"})
    assert await webhook_post(gw, {"headers": {}, "request": None}) == (200, {"X-Hasura-Role": "anonymous"})
    # a bad or stale token is a deny, not a silent downgrade to anonymous
    status, _ = await webhook_get(gw, Cookie=f"{COOKIE}={mint_token()}")
    assert status == 401
    status, _ = await webhook_get(gw, Cookie=f"{COOKIE}=garbage")
    assert status == 401


async def test_anonymous_is_off_by_default(gw: Gateway) -> None:
    status, _ = await webhook_get(gw)
    assert status == 401


async def test_extra_session_variables_from_user_fields(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**{"hasura.session_variables": {"X-Hasura-Email": "email", "X-Hasura-Name": "name",
                                                               "X-Hasura-Roles": "roles"}})
    token = await gw.token("Grace@Example.com", name="Grace Hopper", roles=("user", "admin"))
    status, body = await webhook_get(gw, Cookie=f"{COOKIE}={token}")
    assert status == 200
    assert body["X-Hasura-Email"] == "Grace@Example.com"
    assert body["X-Hasura-Name"] == "Grace Hopper"
    assert body["X-Hasura-Roles"] == '{"user","admin"}'
    assert_all_strings(body)


async def test_cache_control_never_exceeds_remaining_life(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**{"session.idle_timeout": "1h"})
    token = await gw.token(kind="api", lifetime=100)
    _, body = await webhook_get(gw, Cookie=f"{COOKIE}={token}")
    assert 0 < int(body["Cache-Control"].removeprefix("max-age=")) <= 100
    gw.clock.advance(60)
    _, body = await webhook_get(gw, Cookie=f"{COOKIE}={token}")
    assert int(body["Cache-Control"].removeprefix("max-age=")) <= 40
    browser = await gw.token("b@example.com")  # 7 days absolute, 1 hour idle
    _, body = await webhook_get(gw, Cookie=f"{COOKIE}={browser}")
    assert int(body["Cache-Control"].removeprefix("max-age=")) <= 3600


async def test_expired_revoked_and_idle_sessions_are_denied(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**{"session.idle_timeout": "10m", "session.last_seen_grain": "60s"})
    short = await gw.token("short@example.com", kind="api", lifetime=30)
    idle = await gw.token("idle@example.com")
    revoked = await gw.token("revoked@example.com")
    for token in (short, idle, revoked):
        assert (await webhook_get(gw, Cookie=f"{COOKIE}={token}"))[0] == 200
    assert await gw.app[CHECKER].revoke_token(revoked, actor="test", reason="test")
    assert (await webhook_get(gw, Cookie=f"{COOKIE}={revoked}"))[0] == 401
    gw.clock.advance(31)
    assert (await webhook_get(gw, Cookie=f"{COOKIE}={short}"))[0] == 401
    gw.clock.advance(600)
    assert (await webhook_get(gw, Cookie=f"{COOKIE}={idle}"))[0] == 401


async def test_policy_deny_is_401_on_the_webhook(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(policy=DenyAll())
    token = await gw.token()
    status, _ = await webhook_get(gw, Cookie=f"{COOKIE}={token}")
    assert status == 401


@pytest.mark.parametrize("body", [
    b"{not json",
    b"[]",
    b'"headers"',
    b'{"headers": ["Cookie"]}',
    b'{"headers": {"Cookie": 42}}',
    b'{"headers": {}, "request": "query"}',
    b'{"headers": {}, "request": 7}',
    b"\xff\xfe\x00",
    b"[" * 20000 + b"]" * 20000,
    b'{"headers": {}, "request": ' + b'{"a":' * 40 + b"1" + b"}" * 40 + b"}",
], ids=["invalid-json", "array", "string", "headers-list", "header-number", "request-string", "request-number",
        "not-utf8", "deep-arrays", "deep-objects"])
async def test_post_mode_bad_bodies_are_400(gw: Gateway, body: bytes) -> None:
    resp = await gw.client.post("/auth/webhook", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert (await resp.json())["error"] == "bad_request"


async def test_post_mode_huge_body_is_413(gw: Gateway) -> None:
    big = json.dumps({"headers": {"Cookie": "x" * (gw.settings.hasura.max_body_bytes + 10)}})
    resp = await gw.client.post("/auth/webhook", data=big, headers={"Content-Type": "application/json"})
    assert resp.status == 413


async def test_post_mode_huge_chunked_body_is_refused_unread(gw: Gateway) -> None:
    """No chunked bodies at all (see gateway/protocol.py), so a huge one is refused before it is read."""
    async def chunks() -> Any:
        for _ in range(100):
            yield b"x" * 4096

    resp = await gw.client.post("/auth/webhook", data=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status == 411


@pytest.mark.parametrize("cookie", [
    "",
    f"{COOKIE}=",
    f"{COOKIE}=not-a-token",
    f"{COOKIE}=gwt_{'A' * 42}",
    f"{COOKIE}=gwt_{'A' * 44}",
    f"{COOKIE}=gwt_{'A' * 42}!",
    f"{COOKIE}={'x' * 9000}",
    "; ".join(f"c{i}=v" for i in range(300)),
    f'{COOKIE}="unterminated',
], ids=["empty", "empty-value", "garbage", "short", "long", "bad-char", "oversized", "many-cookies", "quote"])
async def test_malformed_cookies_are_401(gw: Gateway, cookie: str) -> None:
    status, _ = await webhook_get(gw, Cookie=cookie)
    assert status == 401


async def test_headers_over_the_parser_limit_are_400_and_never_logged(gw: Gateway, caplog: Any) -> None:
    from gateway.logging import install_redaction

    install_redaction()
    secret = "gwt_" + "S" * 20000
    resp = await gw.client.get("/auth/webhook", headers={"Cookie": f"{COOKIE}={secret}"})
    assert resp.status == 400
    assert "SSSS" not in caplog.text


async def test_unknown_token_is_401_and_then_negatively_cached(gw: Gateway) -> None:
    token = mint_token()
    for _ in range(3):
        assert (await webhook_get(gw, Cookie=f"{COOKIE}={token}"))[0] == 401
    assert gw.metric("gateway_session_cache_events_total", event="miss") == 1
    assert gw.metric("gateway_session_cache_events_total", event="negative_hit") == 2


async def test_a_bad_bearer_is_not_rescued_by_a_good_cookie(gw: Gateway) -> None:
    token = await gw.token()
    status, _ = await webhook_get(gw, Cookie=f"{COOKIE}={token}", Authorization="Bearer nope")
    assert status == 401
    status, _ = await webhook_get(gw, Cookie=f"{COOKIE}={token}", Authorization="Basic dXNlcjpwYXNz")
    assert status == 200


@pytest.mark.postgres
async def test_list_session_variables_are_array_literals_postgres_reads_back(gateway_factory: GatewayFactory,
                                                                              postgres_url: str) -> None:
    """Hasura hands list variables to Postgres as text[] literals: Postgres itself must read back the list."""
    import psycopg2

    gw = await gateway_factory(**{"hasura.session_variables": {"X-Hasura-Groups": "groups"}})
    groups = ("café", 'q"uote', "back\\slash", "a,b", "{brace}", "sp ace", "NULL", "", "\U0001f600")
    user = await gw.store.upsert_user("test", "lists@example.com", email="lists@example.com", name="",
                                      username="", groups=groups, roles=("user",), login_at=gw.clock())
    token, _ = await start_session(gw.store, gw.settings.session, user_id=user.id, kind="browser", now=gw.clock())
    status, body = await webhook_get(gw, Cookie=f"{COOKIE}={token}")
    assert status == 200
    with psycopg2.connect(postgres_url) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT %s::text[]", (body["X-Hasura-Groups"],))
        assert tuple(cursor.fetchone()[0]) == groups
