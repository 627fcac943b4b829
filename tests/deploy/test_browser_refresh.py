"""Sliding renewal in a real browser behind real nginx: Chromium stays signed in past its session's lifetime
while the provider vouches, and is signed out once the provider refuses.

The stack is the one users copy (``deploy/nginx/protect-app.conf`` in front of the echo app, the gateway as
a process) with an OpenID Connect upstream (:class:`tests.fakes.oidc.FakeOIDC`, served from a thread) and
``session.refresh`` on short, real durations: a 24 s lifetime, refreshed every 8 s. What is held, judged
by what the app and the browser receive:

- past 24 s (the sign-in's lifetime, and its cookie's Max-Age) the app still serves the browser, because
  the refresh renewed the session and nginx passed the renewed cookie (``Set-Cookie`` from the check,
  copied by ``auth_request_set``/``add_header``) on to Chromium, whose cookie now outlives the first one;
- once the provider revokes the refresh tokens, the next due refresh ends the session: the page sends
  the browser to sign in again.

Needs nginx, Chromium and the playwright package, like tests/deploy/test_browser.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest

from gateway.sealing import new_key
from tests.deploy.stack import COOKIE, Stack
from tests.deploy.test_browser import launched, new_page, oidc_site, shows_app
from tests.fakes.oidc import FakeOIDC, FakeUser

USER = FakeUser(sub="user-rene", email="rene@example.com", name="René", preferred_username="rene")
LIFETIME, INTERVAL = 24.0, 8.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, FakeOIDC, str]]:
    extra = (f'[session]\nrefresh = true\nlifetime = "{LIFETIME:g}s"\nrefresh_interval = "{INTERVAL:g}s"\n'
             f"sealing_key = {json.dumps(new_key())}\n")
    with oidc_site(tmp_path_factory.mktemp("refresh-stack"), FakeOIDC(users=[USER]), extra) as site:
        yield site.stack, site.oidc, site.chromium


async def test_a_browser_stays_signed_in_while_the_provider_vouches_and_is_signed_out_when_it_refuses(
        stack: tuple[Stack, FakeOIDC, str]) -> None:
    site, oidc, chromium = stack
    target = site.url + "/notes"
    async with launched(chromium) as browser:
        context, page, _ = await new_page(browser)
        try:
            await page.goto(target)
            async with page.expect_navigation(url=target):
                await page.get_by_role("link", name="Continue with Example SSO").click()
            signed_in_at = time.time()
            assert (await shows_app(page))["path"] == "/notes"
            first_expiry = await cookie_expiry(context)
            assert first_expiry == pytest.approx(signed_in_at + LIFETIME, abs=3)

            # Each load after a refresh is due starts one; a load soon after it brings the renewed cookie.
            for due in (INTERVAL, 2 * INTERVAL + 1):
                before = await cookie_expiry(context)
                await asyncio.sleep(max(0.0, signed_in_at + due + 0.5 - time.time()))
                await page.goto(target)
                assert (await shows_app(page))["path"] == "/notes"
                await until_cookie_outlives(context, page, target, before + 3)
            assert oidc.refresh_calls >= 2

            # Past the sign-in's lifetime, and its cookie's: still in, as the app sees.
            await asyncio.sleep(max(0.0, signed_in_at + LIFETIME + 1 - time.time()))
            await page.goto(target)
            echoed = await shows_app(page)
            assert [v for k, v in echoed["headers"] if k.lower() == "x-auth-request-email"] == [USER.email]

            # The provider refuses from now on: the next refresh that comes due ends the session.
            oidc.revoke_refresh_tokens(USER.sub)
            deadline = time.monotonic() + 3 * INTERVAL
            while True:
                await page.goto(target)
                if page.url.startswith(site.url + "/login"):
                    break
                assert time.monotonic() < deadline, "a session its provider refused still reached the app"
                await asyncio.sleep(1.0)
        finally:
            await context.close()


async def cookie_expiry(context: object) -> float:
    """When Chromium's session cookie expires (Unix seconds)."""
    cookies = await context.cookies()  # type: ignore[attr-defined]
    found = [c for c in cookies if c["name"] == COOKIE]
    assert len(found) == 1, cookies
    return float(found[0]["expires"])


async def until_cookie_outlives(context: object, page: object, target: str, when: float) -> None:
    """Reload ``target`` until Chromium's session cookie expires after ``when`` (the renewed cookie arrived)."""
    deadline = time.monotonic() + INTERVAL / 2
    while await cookie_expiry(context) <= when:
        assert time.monotonic() < deadline, "the renewed session's cookie never reached the browser"
        await asyncio.sleep(0.3)
        await page.goto(target)  # type: ignore[attr-defined]
