"""Unenrolment sticks for every credential type: after ``gateway users delete`` (or ``users block``) the
user's browser sessions, API tokens and provider-issued bearer JWTs are refused on every endpoint, a fresh
sign-in through the upstream gets a 403 page, and nothing enrols them again until an admin unblocks them.

The admin acts through a store of its own on the same database, as the CLI in another process does; the
gateway learns of it through the revocation feed, like every other replica.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import pytest

from gateway import admin
from gateway.store.base import BlockKey, Store
from tests.browsers import PUBLIC, Browser, BrowserFactory
from tests.fakes.oidc import FakeOIDC, ServerFactory, ada_and_bob
from tests.harness import Gateway, GatewayFactory
from tests.helpers import store_for

API_AUDIENCE = "https://api.example.com"
JSON = {"Accept": "application/json"}
HTML = {"Accept": "text/html"}
ADA = BlockKey.for_identity("corp", "user-ada")


@pytest.fixture
async def oidc(aiohttp_server: ServerFactory) -> FakeOIDC:
    return await FakeOIDC(users=ada_and_bob()).start(aiohttp_server)


@pytest.fixture(params=[pytest.param("sqlite", id="sqlite"),
                        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)])
async def gw(request: pytest.FixtureRequest, gateway_factory: GatewayFactory, oidc: FakeOIDC) -> Gateway:
    """The gateway on each backend (their revocation feeds differ: polling and LISTEN/NOTIFY)."""
    return await gateway_factory(upstreams={"corp": oidc.config(bearer_audience=API_AUDIENCE)}, public_url=PUBLIC,
                                 database_url=request.getfixturevalue(f"{request.param}_url"),
                                 **{"cookie.secure": False, "check.jwt_upstreams": ["corp"]})


@pytest.fixture
async def cli_store(gw: Gateway) -> AsyncIterator[Store]:
    """The admin's own connection to the gateway's database."""
    store = store_for(gw.settings)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def statuses(browser: Browser, credentials: Mapping[str, Mapping[str, str]]) -> dict[str, tuple[int, int]]:
    """``name -> (check status, webhook status)`` for each set of credential headers."""
    out = {}
    for name, headers in credentials.items():
        check = await browser.get("/auth/check", headers=headers)
        webhook = await browser.get("/auth/webhook", headers=headers)
        out[name] = (check.status, webhook.status)
    return out


async def eventually(probe: Callable[[], Awaitable[bool]], timeout: float = 3.0) -> bool:
    """Poll ``probe`` until it holds or ``timeout`` seconds pass (revocations arrive within a second)."""
    deadline = time.monotonic() + timeout
    while not await probe():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def assert_removed_page(browser: Browser) -> None:
    page = await browser.sign_in(headers=HTML)
    assert page.status == 403, await page.text()
    assert page.content_type == "text/html" and page.headers["Referrer-Policy"] == "no-referrer"
    assert "removed from this site" in await page.text()
    assert "gw_session" not in page.cookies
    as_json = await browser.sign_in(headers=JSON)
    assert as_json.status == 403
    assert (await as_json.json())["error"] == "account_removed"


async def test_a_deleted_user_is_refused_with_every_credential_until_unblocked(
        gw: Gateway, oidc: FakeOIDC, cli_store: Store, browsers: BrowserFactory) -> None:
    ada = browsers(gw)
    assert (await ada.sign_in()).status == 302
    (user,) = await gw.store.list_users()
    minted = await admin.mint_api_token(cli_store, gw.settings.session, user_id=user.id)
    credentials = {
        "browser session": {},
        "api token": bearer(minted.token),
        "bearer jwt": bearer(oidc.access_token(aud=API_AUDIENCE)),
        "bearer jwt with email": bearer(oidc.access_token(aud=API_AUDIENCE, email="ada@example.com",
                                                          email_verified=True)),
    }
    assert set((await statuses(ada, credentials)).values()) == {(200, 200)}

    await admin.delete_user(cli_store, user)

    async def all_refused() -> bool:
        return set((await statuses(ada, credentials)).values()) == {(401, 401)}

    assert await eventually(all_refused)
    # and it stays that way once every cache entry has run out: nothing re-enrols the user
    gw.clock.advance(gw.settings.cache.ttl + gw.settings.cache.negative_ttl + 1)
    assert set((await statuses(ada, credentials)).values()) == {(401, 401)}
    assert set((await statuses(browsers(gw), credentials)).values()) == {(401, 401)}
    assert await gw.store.list_users() == []

    # a fresh sign-in through the upstream: a clear page, no session, no user
    for browser in (ada, browsers(gw)):
        await assert_removed_page(browser)
    assert await gw.store.list_users() == []
    assert gw.metric("gateway_logins_total", upstream="corp", outcome="blocked") == 4
    assert [b.key for b in await cli_store.list_blocked_subjects()] == [ADA]

    # until an admin lets them back: then they are enrolled afresh
    assert await admin.unblock_subject(cli_store, ADA)
    gw.clock.advance(gw.settings.cache.negative_ttl + 1)
    jwt = {"bearer jwt": credentials["bearer jwt"]}
    assert await statuses(ada, jwt) == {"bearer jwt": (200, 200)}
    returning = browsers(gw)
    assert (await returning.sign_in()).status == 302
    (again,) = await gw.store.list_users()
    assert again.id != user.id and (again.upstream, again.subject) == ("corp", "user-ada")
    assert await statuses(returning, {"session": {}}) == {"session": (200, 200)}
    assert await statuses(ada, {"old api token": credentials["api token"]}) == {"old api token": (401, 401)}


async def test_an_identity_that_never_signed_in_can_be_kept_out(
        gw: Gateway, oidc: FakeOIDC, cli_store: Store, browsers: BrowserFactory) -> None:
    outcome = await admin.block_subject(cli_store, admin.identity_key("corp:user-bob"), reason="contractor left")
    assert outcome.created and outcome.sessions_revoked == 0
    browser = browsers(gw)
    jwt = {"bob's jwt": bearer(oidc.access_token("user-bob", aud=API_AUDIENCE))}
    assert await statuses(browser, jwt) == {"bob's jwt": (401, 401)}
    oidc.login_as = "user-bob"
    await assert_removed_page(browser)
    assert await gw.store.list_users() == []
    # others are not affected
    oidc.login_as = "user-ada"
    assert (await browsers(gw).sign_in()).status == 302
    assert await statuses(browser, {"ada's jwt": bearer(oidc.access_token(aud=API_AUDIENCE))}) == {
        "ada's jwt": (200, 200)}


async def test_an_email_block_reaches_known_users_and_newcomers_with_that_email(
        gw: Gateway, oidc: FakeOIDC, cli_store: Store, browsers: BrowserFactory) -> None:
    ada = browsers(gw)
    assert (await ada.sign_in()).status == 302
    # an access token without any profile claims: only the enrolled user's email can match the block
    credentials = {"browser session": {}, "bare jwt": bearer(oidc.access_token(aud=API_AUDIENCE))}
    assert set((await statuses(ada, credentials)).values()) == {(200, 200)}

    outcome = await admin.block_subject(cli_store, admin.email_key(" ADA@example.com"))
    assert outcome.created and outcome.sessions_revoked == 1

    async def all_refused() -> bool:
        return set((await statuses(ada, credentials)).values()) == {(401, 401)}

    assert await eventually(all_refused)
    await assert_removed_page(browsers(gw))
    # a new address at the upstream does not get the enrolled user past the block on their old one
    oidc.users["user-ada"].email = "ada@elsewhere.example"
    await assert_removed_page(browsers(gw))
    (user,) = await gw.store.list_users()  # blocked, not deleted, and not refreshed
    assert user.email == "ada@example.com"
    oidc.login_as = "user-bob"
    assert (await browsers(gw).sign_in()).status == 302


async def test_delete_with_allow_return_lets_them_sign_in_again(
        gw: Gateway, cli_store: Store, browsers: BrowserFactory) -> None:
    ada = browsers(gw)
    assert (await ada.sign_in()).status == 302
    (user,) = await gw.store.list_users()
    await admin.delete_user(cli_store, user, block=False)

    async def signed_out() -> bool:
        return await statuses(ada, {"session": {}}) == {"session": (401, 401)}

    assert await eventually(signed_out)
    assert await cli_store.list_blocked_subjects() == []
    assert (await ada.sign_in()).status == 302
    (again,) = await gw.store.list_users()
    assert again.id != user.id


async def test_a_removal_while_the_provider_answers_still_keeps_them_out(
        gw: Gateway, oidc: FakeOIDC, cli_store: Store, browsers: BrowserFactory) -> None:
    ada = browsers(gw)
    assert (await ada.sign_in()).status == 302
    (user,) = await gw.store.list_users()
    ada.drop_session()
    back = await ada.callback_url()
    oidc.knobs.token_delay = 0.5  # the callback waits at the provider's token endpoint...
    callback = asyncio.ensure_future(ada.get(back, headers=JSON))
    await asyncio.sleep(0.2)
    await admin.delete_user(cli_store, user)  # ...while the admin removes the user
    resp = await callback
    assert resp.status == 403
    assert (await resp.json())["error"] == "account_removed"
    assert "gw_session" not in resp.cookies
    assert await gw.store.list_users() == []
