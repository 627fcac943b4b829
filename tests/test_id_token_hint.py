"""RP-initiated logout sends ``id_token_hint``: the ID token of the sign-in, kept sealed with the session.

Browsers sign in through the fake OIDC provider (real HTTP, RS256) and sign out with the gateway's own
form; the gateway sends them on to the provider's end-session endpoint, which records what it received.
With ``session.sealing_key`` set, the hint is exactly the ID token the provider issued at that sign-in,
and the database never holds it in clear (nor after sign-out at all); without a key nothing is kept and
no hint is sent. A key rotation (the old key moved to ``session.sealing_key_previous``) keeps hints
working; a kept value the gateway cannot open (its key is gone, or it belongs to another session) costs
the hint, never the sign-out. Each runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg2
import pytest
import structlog.testing
from aiohttp import ClientResponse

from gateway.sealing import new_key
from gateway.store.factory import sqlite_path
from gateway.tokens import hash_token
from tests.browsers import PUBLIC, Browser, BrowserFactory
from tests.fakes.oidc import FakeOIDC, FakeUser, Grant, ServerFactory
from tests.harness import Gateway, GatewayFactory

SETTINGS: dict[str, Any] = {"public_url": PUBLIC, "cookie.secure": False}
FROM_OUR_PAGE = {"Accept": "text/html", "Sec-Fetch-Site": "same-origin", "Origin": "null"}
KEY, OTHER_KEY = new_key(), new_key()


class RecordingOIDC(FakeOIDC):
    """The fake provider, also remembering every ID token it issued, in order."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.id_tokens: list[str] = []

    def _id_token(self, user: FakeUser, grant: Grant, access_token: str) -> str:
        token = super()._id_token(user, grant, access_token)
        self.id_tokens.append(token)
        return token


@pytest.fixture
async def oidc(aiohttp_server: ServerFactory) -> RecordingOIDC:
    users = [FakeUser(sub="user-ada", email="ada@example.com", name="Ada")]
    return await RecordingOIDC(users=users).start(aiohttp_server)


@pytest.fixture(params=[pytest.param("sqlite", id="sqlite"),
                        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def start(gateway_factory: GatewayFactory, oidc: RecordingOIDC, database_url: str) -> Any:
    """Start a gateway on the test's database with the given sealing keys ("" for none)."""
    async def started(key: str = KEY, previous: str = "") -> Gateway:
        return await gateway_factory(upstreams={"corp": oidc.config()}, database_url=database_url,
                                     **{**SETTINGS, "session.sealing_key": key,
                                        "session.sealing_key_previous": previous})
    return started


async def signed_in(browsers: BrowserFactory, gw: Gateway) -> Browser:
    browser = browsers(gw)
    assert (await browser.sign_in()).status == 302
    return browser


async def sign_out(browser: Browser) -> ClientResponse:
    """Sign out with the gateway's own form, as a browser on its page does; the answer, not followed."""
    asked = await browser.get("/logout", headers={"Accept": "application/json"})
    csrf = (await asked.json())["csrf_token"]
    resp = await browser.session.post(browser.gw.client.make_url("/logout"), data={"csrf_token": csrf, "rd": "/"},
                                      headers=FROM_OUR_PAGE, allow_redirects=False)
    await resp.read()
    return resp


async def at_provider(browser: Browser, resp: ClientResponse, oidc: FakeOIDC) -> dict[str, str]:
    """Follow the sign-out to the provider's end-session endpoint; what it received."""
    assert resp.status == 303, await resp.text()
    location = resp.headers["Location"]
    assert location.startswith(f"{oidc.base}/logout?")
    before = len(oidc.logout_requests)
    assert (await browser.get(location)).status == 302  # back to the gateway's post_logout_redirect_uri
    assert len(oidc.logout_requests) == before + 1
    received = oidc.logout_requests[-1]
    assert received["post_logout_redirect_uri"] == f"{PUBLIC}/"
    # the hint travels in the URL the browser is sent to, and nowhere else
    assert parse_qs(urlsplit(location).query).get("id_token_hint", [""])[0] == received.get("id_token_hint", "")
    return received


def database_text(database_url: str) -> str:
    """Every row of every table, as text: what a dump of the database would show."""
    if database_url.startswith("sqlite"):
        with closing(sqlite3.connect(sqlite_path(database_url))) as db:
            tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            return "\n".join(repr(row) for table in tables for row in db.execute(f'SELECT * FROM "{table}"'))  # noqa: S608
    with closing(psycopg2.connect(database_url)) as db, db.cursor() as cur:
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        tables = [row[0] for row in cur.fetchall()]
        rows: list[str] = []
        for table in tables:
            cur.execute(f'SELECT t::text FROM "{table}" t')  # noqa: S608
            rows.extend(row[0] for row in cur.fetchall())
        return "\n".join(rows)


def kept(database_url: str) -> list[tuple[str, str]]:
    """``(token_hash, purpose)`` of every row of session_secrets."""
    query = "SELECT token_hash, purpose FROM session_secrets ORDER BY token_hash"
    if database_url.startswith("sqlite"):
        with closing(sqlite3.connect(sqlite_path(database_url))) as db:
            return [(str(a), str(b)) for a, b in db.execute(query)]
    with closing(psycopg2.connect(database_url)) as db, db.cursor() as cur:
        cur.execute(query)
        return [(str(a), str(b)) for a, b in cur.fetchall()]


async def test_sign_out_sends_the_id_token_issued_at_sign_in(
        start: Any, oidc: RecordingOIDC, browsers: BrowserFactory, database_url: str) -> None:
    gw = await start()
    with structlog.testing.capture_logs() as logs:
        first, second = await signed_in(browsers, gw), await signed_in(browsers, gw)
    assert len(oidc.id_tokens) == 2 and oidc.id_tokens[0] != oidc.id_tokens[1]
    sessions = [hash_token(str(b.cookie("gw_session"))) for b in (first, second)]
    assert kept(database_url) == sorted((h, "id_token") for h in sessions)
    # a dump holds no part of either ID token: header, claims or signature
    dump = database_text(database_url)
    assert dump and all(part not in dump for token in oidc.id_tokens for part in token.split("."))

    with structlog.testing.capture_logs() as more:
        received = await at_provider(second, await sign_out(second), oidc)
    assert received["id_token_hint"] == oidc.id_tokens[1]
    assert received["client_id"] == oidc.client_id
    assert all(token not in repr(logs + more) for token in oidc.id_tokens)
    # the kept token served its one purpose and is gone; the other session keeps its own
    assert kept(database_url) == [(sessions[0], "id_token")]
    assert (await first.get("/auth/check")).status == 200

    received = await at_provider(first, await sign_out(first), oidc)
    assert received["id_token_hint"] == oidc.id_tokens[0]
    assert kept(database_url) == []


async def test_without_a_key_nothing_is_kept_and_no_hint_is_sent(
        start: Any, oidc: RecordingOIDC, browsers: BrowserFactory, database_url: str) -> None:
    gw = await start(key="")
    browser = await signed_in(browsers, gw)
    assert kept(database_url) == []
    assert oidc.id_tokens[0].split(".")[1] not in database_text(database_url)
    received = await at_provider(browser, await sign_out(browser), oidc)
    assert "id_token_hint" not in received
    assert (await browser.get("/auth/check")).status == 401


async def test_after_a_key_rotation_the_hint_still_works(
        start: Any, oidc: RecordingOIDC, browsers: BrowserFactory) -> None:
    before = await signed_in(browsers, await start(key=KEY))
    # every replica restarts with a new key, the old one moved to sealing_key_previous
    rotated = await start(key=OTHER_KEY, previous=KEY)
    browser = browsers(rotated)
    browser.set_cookie("gw_session", str(before.cookie("gw_session")))
    received = await at_provider(browser, await sign_out(browser), oidc)
    assert received["id_token_hint"] == oidc.id_tokens[0]
    # sign-ins after the rotation seal with the new key, which opens without the old one
    after = await signed_in(browsers, rotated)
    done = browsers(await start(key=OTHER_KEY))
    done.set_cookie("gw_session", str(after.cookie("gw_session")))
    assert (await at_provider(done, await sign_out(done), oidc))["id_token_hint"] == oidc.id_tokens[1]


async def test_a_kept_token_that_does_not_open_costs_the_hint_not_the_sign_out(
        start: Any, oidc: RecordingOIDC, browsers: BrowserFactory, database_url: str) -> None:
    lost = await signed_in(browsers, await start(key=KEY))
    gw = await start(key=OTHER_KEY)  # the old key rotated away without passing through _previous

    browser = browsers(gw)
    browser.set_cookie("gw_session", str(lost.cookie("gw_session")))
    with structlog.testing.capture_logs() as logs:
        received = await at_provider(browser, await sign_out(browser), oidc)
    assert "id_token_hint" not in received
    assert (await browser.get("/auth/check")).status == 401  # signed out all the same
    warned = [e for e in logs if e["event"].startswith("id_token_hint not sent")]
    assert len(warned) == 1 and warned[0]["log_level"] == "warning"
    assert warned[0]["reason"] == "sealed with a key that is no longer configured"
    assert warned[0]["upstream"] == "corp" and isinstance(warned[0]["user_id"], int)
    assert oidc.id_tokens[0] not in repr(logs)
    assert kept(database_url) == []


async def test_a_kept_token_copied_to_another_session_does_not_open_there(
        start: Any, oidc: RecordingOIDC, browsers: BrowserFactory, database_url: str) -> None:
    gw = await start()
    owner, thief = await signed_in(browsers, gw), await signed_in(browsers, gw)
    hashes = [hash_token(str(b.cookie("gw_session"))) for b in (owner, thief)]
    stolen = await gw.store.session_secret(hashes[0], "id_token")
    assert stolen is not None
    await gw.store.keep_session_secret(hashes[1], "id_token", stolen)  # as a database writer could
    with structlog.testing.capture_logs() as logs:
        received = await at_provider(thief, await sign_out(thief), oidc)
    assert "id_token_hint" not in received
    assert [e["reason"] for e in logs if e["event"].startswith("id_token_hint not sent")] == [
        "does not authenticate: tampered with, or sealed for another session or purpose"]
    assert (await thief.get("/auth/check")).status == 401
    # where it belongs it still opens
    assert (await at_provider(owner, await sign_out(owner), oidc))["id_token_hint"] == oidc.id_tokens[0]
    assert kept(database_url) == []
