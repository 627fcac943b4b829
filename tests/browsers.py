"""Browsers for endpoint tests: each with a cookie jar of its own, all at the test server's one address
(as people behind one NAT are), reaching the gateway under its ``public_url`` and the fake providers."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
from aiohttp import ClientResponse
from yarl import URL

from tests.harness import Gateway

PUBLIC = "http://gateway.test"
"""The gateway's ``public_url``; requests to it go to the test server."""
DEVICE = "gw_login_device"
"""The device cookie's name with the default ``login.cookie_name``."""


class Browser:
    """One browser with a cookie jar of its own, reaching the gateway (under :data:`PUBLIC` or by path) and
    the fake provider. Redirects are never followed automatically."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    def _url(self, url: str) -> URL:
        if url == PUBLIC or url.startswith(PUBLIC + "/"):
            url = url[len(PUBLIC):] or "/"
        if url.startswith("/"):
            return self.gw.client.make_url("").join(URL(url, encoded=True))
        return URL(url, encoded=True)

    async def get(self, url: str, headers: Mapping[str, str] | None = None) -> ClientResponse:
        resp = await self.session.get(self._url(url), headers=headers, allow_redirects=False)
        await resp.read()
        return resp

    def cookie(self, name: str) -> str | None:
        morsel = self.session.cookie_jar.filter_cookies(self.gw.client.make_url("/")).get(name)
        return morsel.value if morsel is not None else None

    def set_cookie(self, name: str, value: str) -> None:
        self.session.cookie_jar.update_cookies({name: value}, self.gw.client.make_url("/"))

    def drop_session(self) -> None:
        """Forget the session cookie only (signed out), keeping the device cookie."""
        device = self.cookie(DEVICE)
        self.session.cookie_jar.clear()
        if device is not None:
            self.set_cookie(DEVICE, device)

    async def callback_url(self, rd: str = "/") -> str:
        """Start a sign-in and let the provider approve it: the callback URL it sends the browser to."""
        login = await self.get(f"/login?{urlencode({'rd': rd})}")
        assert login.status == 302, await login.text()
        at_provider = await self.get(login.headers["Location"])
        assert at_provider.status == 302, await at_provider.text()
        back: str = at_provider.headers["Location"]
        assert back.startswith(f"{PUBLIC}/callback/corp?")
        return back

    async def sign_in(self, headers: Mapping[str, str] | None = None) -> ClientResponse:
        """The whole dance; returns the gateway's answer to the callback (JSON errors unless ``headers``)."""
        return await self.get(await self.callback_url(), headers=headers or {"Accept": "application/json"})

    async def fail_genuinely(self) -> ClientResponse:
        """A genuine attempt whose code the provider refuses: what guessing codes looks like."""
        back = await self.callback_url()
        query = {k: v[0] for k, v in parse_qs(urlsplit(back).query).items()}
        query["code"] = "guessed-" + secrets.token_urlsafe(8)
        return await self.get(f"/callback/corp?{urlencode(query)}", headers={"Accept": "application/json"})


BrowserFactory = Callable[[Gateway], Browser]


@contextlib.asynccontextmanager
async def open_browsers() -> AsyncIterator[BrowserFactory]:
    """Open browsers on a gateway with ``browsers(gw)``; all are closed on leaving the block."""
    opened: list[Browser] = []

    def open_browser(gw: Gateway) -> Browser:
        browser = Browser(gw)
        opened.append(browser)
        return browser

    try:
        yield open_browser
    finally:
        for browser in opened:
            await browser.session.close()


@pytest.fixture
async def browsers() -> AsyncIterator[BrowserFactory]:
    """Browsers for a gateway, each with its own cookie jar (see :func:`open_browsers`)."""
    async with open_browsers() as factory:
        yield factory
