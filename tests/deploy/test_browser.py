"""A real browser signs in through nginx: headless Chromium, driven by Playwright, against the real stack.

The gateway (behind nginx, configured from ``deploy/nginx/protect-app.conf``) offers two upstreams: the
built-in ``dev`` form and an OpenID Connect provider (:class:`tests.fakes.oidc.FakeOIDC`, served on
127.0.0.1 from a thread of this process; its ``/authorize`` approves at once and redirects straight back).
Each flow opens the protected app, lands on the sign-in chooser, signs in, sees the app's JSON with its own
email in ``X-Auth-Request-Email``, signs out (``/logout`` asks; the button signs out), and is refused. A page
on another origin of the same site cannot sign anyone out. Along the way it checks what a person gets:
every page is served from loopback only (no third-party requests), with ``Referrer-Policy: no-referrer``,
and no ``Referer`` leaks to the provider.

Screenshots of the sign-in chooser and the dev form are taken at a fixed 900x640 viewport into the
test's directory; with ``GATEWAY_UPDATE_SCREENSHOTS=1`` they are written to ``docs/signin.png`` and
``docs/signin-dev.png`` (the README shows the first), so a plain test run never modifies the tree.

Needs Chromium (``apt-get install chromium``, see :func:`find_chromium`) and the ``playwright`` package
(only its driver: Playwright's own browser download is not used). Without them the tests skip, or fail
under ``GATEWAY_TEST_STRICT=1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.deploy.stack import COOKIE, REPO, Stack, start_stack, unavailable
from tests.fakes.oidc import FakeOIDC, FakeUser

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page, Request, Response

DOCS = REPO / "docs"
OIDC_NAME = "corp"
OIDC_DISPLAY = "Example SSO"
DEV_DISPLAY = "Development sign-in"  # the dev upstream's default display name (stack.py sets none)
OIDC_USER = FakeUser(sub="user-alice", email="alice@example.com", name="Alice Liddell", preferred_username="alice")
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
VIEWPORT_WIDTH, VIEWPORT_HEIGHT = 900, 640
STEP_MS = 5_000
"""Playwright's timeout for each action and navigation."""
LAUNCH_MS = 30_000
CHROMIUM_ARGS = [
    "--no-sandbox",  # tests may run as root
    "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
    "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
    # the browser's own traffic (updates, safe browsing, sync...) has no place on a closed test network
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--font-render-hinting=none",  # steadier glyph rendering for the committed screenshot
]


def find_chromium() -> str | None:
    """A Chromium (or Chrome) binary: Debian's ``chromium`` first."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


# ---- the fake OpenID Connect provider, in a thread with its own event loop ------------------------------

class ThreadedOIDC:
    """:class:`FakeOIDC` served on 127.0.0.1 by aiohttp in a background thread.

    A thread, not the test's event loop: the stack starts (synchronously) before any test loop exists,
    and the gateway subprocess must reach the provider whatever the test is awaiting at that moment.
    """

    def __init__(self, fake: FakeOIDC) -> None:
        self.fake = fake
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-oidc", daemon=True)

    def __enter__(self) -> FakeOIDC:
        self.thread.start()

        async def serve(app: web.Application, **_: Any) -> TestServer:
            server = TestServer(app, host="127.0.0.1")
            await server.start_server()
            return server

        asyncio.run_coroutine_threadsafe(self.fake.start(serve), self.loop).result(timeout=30)
        return self.fake

    def __exit__(self, *exc: object) -> None:
        try:
            if self.fake.server is not None:
                asyncio.run_coroutine_threadsafe(self.fake.server.close(), self.loop).result(timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)
            self.loop.close()


@dataclass
class Site:
    """The running stack and the fake provider it signs in with."""

    stack: Stack
    oidc: FakeOIDC
    chromium: str

    @property
    def url(self) -> str:
        return self.stack.url


@contextlib.contextmanager
def oidc_site(directory: Path, fake: FakeOIDC, extra_toml: str = "") -> Iterator[Site]:
    """The stack (nginx, the gateway, the echo app) in ``directory`` with ``fake`` served from a thread as the
    ``corp`` upstream besides ``dev``, and ``extra_toml`` (tables) added to the gateway's config; skips (or
    fails under strict mode) without Chromium or the playwright package."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        unavailable("the playwright package is not installed (pip install playwright)")
    chromium = find_chromium()
    if chromium is None:
        unavailable("Chromium not found (apt-get install chromium)")
    assert chromium is not None
    with ThreadedOIDC(fake) as oidc:
        upstream = oidc.config(display_name=OIDC_DISPLAY)
        extra = f"[upstreams.{OIDC_NAME}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in upstream.items())
        with start_stack(directory, extra_toml=extra + extra_toml) as stack:
            yield Site(stack, oidc, chromium)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with oidc_site(tmp_path_factory.mktemp("browser-stack"), FakeOIDC(users=[OIDC_USER])) as running:
        yield running


# ---- the browser ------------------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def launched(chromium: str) -> AsyncIterator[Browser]:
    """Headless Chromium for one test; closed (and Playwright's driver stopped) whatever happens."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True,
                                                   timeout=LAUNCH_MS)
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Traffic:
    """Every request a browser context made, and the document responses it got."""

    requests: list[Request] = field(default_factory=list)
    documents: list[Response] = field(default_factory=list)

    def watch(self, context: BrowserContext) -> None:
        context.on("request", self._request)
        context.on("response", self._response)

    def _request(self, request: Request) -> None:
        self.requests.append(request)

    def _response(self, response: Response) -> None:
        if response.request.resource_type == "document":
            self.documents.append(response)

    def foreign(self) -> list[str]:
        """URLs of requests to anything but loopback (``data:``, ``blob:`` and ``about:`` go nowhere)."""
        return [r.url for r in self.requests
                if urlsplit(r.url).scheme not in ("data", "blob", "about")
                and urlsplit(r.url).hostname not in LOCAL_HOSTS]

    def to(self, url_prefix: str) -> list[Request]:
        return [r for r in self.requests if r.url.startswith(url_prefix)]


async def new_page(browser: Browser) -> tuple[BrowserContext, Page, Traffic]:
    """A fresh context (its own cookie jar: a new private window) with a fixed look and bounded steps."""
    context = await browser.new_context(
        viewport={"width": VIEWPORT_WIDTH, "height": VIEWPORT_HEIGHT}, device_scale_factor=1, locale="en-US",
        timezone_id="UTC", color_scheme="light", reduced_motion="reduce")
    context.set_default_timeout(STEP_MS)
    context.set_default_navigation_timeout(STEP_MS)
    traffic = Traffic()
    traffic.watch(context)
    return context, await context.new_page(), traffic


async def referer(request: Request) -> str | None:
    """The ``Referer`` header Chromium actually sent with ``request``."""
    return await request.header_value("referer")


async def shows_app(page: Page) -> dict[str, Any]:
    """The echo app's JSON as the page shows it (Chromium renders a JSON body as text in a ``<pre>``)."""
    echoed: dict[str, Any] = json.loads(await page.locator("pre").first.inner_text())
    return echoed


def header(echoed: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in echoed["headers"] if key.lower() == name.lower()]


async def assert_sign_in_chooser(site: Site, page: Page, rd: str) -> None:
    """The page is the gateway's sign-in chooser for ``rd``, with one button per upstream."""
    await page.wait_for_url(lambda url: urlsplit(url).path == "/login")
    assert page.url == f"{site.url}/login?rd={quote(rd, safe='')}", page.url  # the gateway encoded it
    assert await page.title() == "Sign in"
    await page.get_by_role("heading", level=1, name="Sign in").wait_for()
    buttons = page.locator("main a.button")
    assert await buttons.all_inner_texts() == [f"Continue with {DEV_DISPLAY}", f"Continue with {OIDC_DISPLAY}"]
    for link in await buttons.all():
        href = await link.get_attribute("href") or ""
        assert href.startswith("/login?upstream="), href
    assert await page.locator("pre").count() == 0  # not the app's JSON


def assert_page_headers(response: Response | None) -> None:
    """A gateway page's protective headers: no referrer, not cached, nothing loadable from elsewhere."""
    assert response is not None
    headers = response.headers
    assert headers.get("referrer-policy") == "no-referrer", (response.url, headers)
    assert headers.get("cache-control") == "no-store", (response.url, headers)
    assert "default-src 'none'" in headers.get("content-security-policy", ""), (response.url, headers)


def gateway_documents(site: Site, traffic: Traffic) -> list[Response]:
    """The HTML pages the gateway served (through nginx) in this context."""
    return [r for r in traffic.documents
            if r.url.startswith((site.url + "/login", site.url + "/logout", site.url + "/callback"))]


async def session_cookies(context: BrowserContext, site: Site) -> list[str]:
    return [c["value"] for c in await context.cookies(site.url) if c["name"] == COOKIE]


async def sign_out_and_check_refused(site: Site, context: BrowserContext, page: Page, target: str,
                                     traffic: Traffic) -> None:
    """Open /logout (it asks), press its button, then open the app again: back on the sign-in chooser, and
    the old session token is dead."""
    session = await session_cookies(context, site)
    assert len(session) == 1, await context.cookies(site.url)

    confirm = await page.goto(site.url + "/logout")
    assert_page_headers(confirm)
    assert await page.title() == "Sign out"
    await page.get_by_role("heading", level=1, name=f"Sign out of {urlsplit(site.url).netloc}?").wait_for()
    assert await session_cookies(context, site) == session  # asking signed nobody out
    await page.get_by_role("button", name="Sign out", exact=True).click()  # not "Sign out everywhere"
    await assert_sign_in_chooser(site, page, site.url + "/")  # POST /logout -> / -> the app -> sign in
    assert await session_cookies(context, site) == []
    # what Chromium sent: same-origin fetch metadata, and Origin null (our pages say no-referrer)
    posted = [r for r in traffic.to(site.url + "/logout") if r.method == "POST"]
    assert len(posted) == 1
    assert await posted[0].header_value("sec-fetch-site") == "same-origin"
    assert await posted[0].header_value("origin") in ("null", site.url)

    assert_page_headers(await page.goto(target))
    await assert_sign_in_chooser(site, page, target)

    # the old token itself is dead, not just forgotten by this browser
    refused = site.stack.get(urlsplit(target).path, token=session[0], browser=True)
    assert refused.status == 302, (refused.status, refused.text)


# ---- the flows ------------------------------------------------------------------------------------------

def shot_path(name: str, tmp_path: Path) -> Path:
    """Where a screenshot goes: docs/ when refreshing them on purpose, else the test's directory."""
    if os.environ.get("GATEWAY_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        return DOCS / name
    return tmp_path / name


async def test_dev_sign_in_in_a_real_browser(site: Site, tmp_path: Path) -> None:
    target = site.url + "/dashboard/7?tab=files"
    email = "grace@example.com"
    async with launched(site.chromium) as browser:
        context, page, traffic = await new_page(browser)
        try:
            first = await page.goto(target)
            assert_page_headers(first)
            await assert_sign_in_chooser(site, page, target)
            signin = shot_path("signin.png", tmp_path)
            await page.screenshot(path=signin, animations="disabled", caret="hide")
            assert signin.stat().st_size > 5000

            await page.get_by_role("link", name=f"Continue with {DEV_DISPLAY}").click()
            await page.wait_for_url(lambda url: urlsplit(url).path == "/login/dev/dev")
            await page.get_by_role("heading", level=1, name=DEV_DISPLAY).wait_for()
            await page.get_by_text("Development only").wait_for()
            await page.screenshot(path=shot_path("signin-dev.png", tmp_path), animations="disabled", caret="hide")

            await page.get_by_label("Email").fill(email)
            async with page.expect_navigation(url=target):
                await page.get_by_role("button", name="Sign in").click()
            echoed = await shows_app(page)
            assert echoed["path"] == "/dashboard/7" and echoed["query"] == "tab=files"
            assert header(echoed, "X-Auth-Request-Email") == [email]
            assert header(echoed, "X-Auth-Request-User") == ["grace"]

            # the sign-in pages came from the gateway, through nginx, with their protective headers
            pages = gateway_documents(site, traffic)
            assert {urlsplit(r.url).path for r in pages} >= {"/login", "/login/dev/dev", "/callback/dev"}
            for response in pages:
                assert_page_headers(response)
            # no-referrer at work: leaving the chooser told the next page nothing
            chosen = traffic.to(site.url + "/login?upstream=dev")
            assert len(chosen) == 1
            assert await referer(chosen[0]) is None

            await sign_out_and_check_refused(site, context, page, target, traffic)
            assert traffic.to(site.oidc.base) == []  # the dev flow never touches the provider
            assert traffic.foreign() == []
        finally:
            await context.close()


async def test_oidc_sign_in_in_a_real_browser(site: Site) -> None:
    target = site.url + "/reports/2024"
    fake = site.oidc
    authorized_before, logouts_before = fake.hits["authorize"], fake.hits["logout"]
    async with launched(site.chromium) as browser:
        context, page, traffic = await new_page(browser)
        try:
            await page.goto(target)
            await assert_sign_in_chooser(site, page, target)

            # the provider approves at once: Chromium follows /login -> /authorize -> /callback/corp -> target
            async with page.expect_navigation(url=target):
                await page.get_by_role("link", name=f"Continue with {OIDC_DISPLAY}").click()
            echoed = await shows_app(page)
            assert echoed["path"] == "/reports/2024"
            assert header(echoed, "X-Auth-Request-Email") == [OIDC_USER.email]
            assert fake.hits["authorize"] == authorized_before + 1

            at_provider = traffic.to(fake.base + "/authorize")
            assert len(at_provider) == 1
            assert await referer(at_provider[0]) is None  # the provider does not learn where the user was
            assert fake.authorize_requests[-1]["redirect_uri"] == f"{site.url}/callback/{OIDC_NAME}"
            back = traffic.to(f"{site.url}/callback/{OIDC_NAME}?")
            assert len(back) == 1
            for response in gateway_documents(site, traffic):
                assert_page_headers(response)

            await sign_out_and_check_refused(site, context, page, target, traffic)
            # RP-initiated logout: the browser went through the provider's end-session endpoint and back
            assert fake.hits["logout"] == logouts_before + 1
            assert fake.logout_requests[-1].get("post_logout_redirect_uri") == site.url + "/"
            assert traffic.foreign() == []
        finally:
            await context.close()




async def test_sign_out_everywhere_signs_out_the_other_browser_too(site: Site) -> None:
    """Two browsers (contexts: separate cookie jars) signed in as one person; "Sign out everywhere" in one,
    and the other, still holding its cookie, gets the sign-in chooser at its next page load."""
    target = site.url + "/projects"
    email = "everywhere@example.com"
    async with launched(site.chromium) as browser:
        opened = [await new_page(browser) for _ in range(2)]
        try:
            for _, page, _ in opened:
                await page.goto(target)
                await assert_sign_in_chooser(site, page, target)
                await page.get_by_role("link", name=f"Continue with {DEV_DISPLAY}").click()
                await page.get_by_label("Email").fill(email)
                async with page.expect_navigation(url=target):
                    await page.get_by_role("button", name="Sign in").click()
                assert header(await shows_app(page), "X-Auth-Request-Email") == [email]
            (here_context, here, here_traffic), (there_context, there, _) = opened
            there_session = await session_cookies(there_context, site)
            assert len(there_session) == 1

            assert_page_headers(await here.goto(site.url + "/logout"))
            await here.get_by_role("button", name="Sign out everywhere").click()
            await assert_sign_in_chooser(site, here, site.url + "/")
            assert await session_cookies(here_context, site) == []
            [posted] = [r for r in here_traffic.to(site.url + "/logout") if r.method == "POST"]
            assert "scope=everywhere" in (posted.post_data or "")

            # the other browser still presents its cookie: its next page load is refused all the same
            assert await session_cookies(there_context, site) == there_session
            assert_page_headers(await there.goto(target))
            await assert_sign_in_chooser(site, there, target)
            assert site.stack.get("/projects", token=there_session[0], browser=True).status == 302
            for _, _, traffic in opened:
                assert traffic.foreign() == []
        finally:
            for context, _, _ in opened:
                await context.close()


async def test_another_site_cannot_sign_you_out(site: Site) -> None:
    """A page on another origin of the same site (cookies ride along: SameSite=Lax does not stop it) loads
    ``/logout`` as an image, links to it, and posts a forged form to it: the session survives all three."""
    target = site.url + "/inbox"
    # another origin on the same host: Chromium sends the session cookie with its requests (same-site)
    evil = site.oidc.base + "/prize"
    evil_page = (f'<!doctype html><title>Prize</title><img src="{site.url}/logout?rd=/" alt="">'
                 f'<a href="{site.url}/logout?rd=/">Claim</a>'
                 f'<form method="post" action="{site.url}/logout"><input type="hidden" name="csrf_token" '
                 f'value="{"0" * 64}"><button>Win</button></form>')
    async with launched(site.chromium) as browser:
        context, page, traffic = await new_page(browser)
        try:
            await context.route(evil, lambda route: route.fulfill(status=200, content_type="text/html",
                                                                  body=evil_page))
            await page.goto(target)
            await assert_sign_in_chooser(site, page, target)
            await page.get_by_role("link", name=f"Continue with {DEV_DISPLAY}").click()
            await page.get_by_label("Email").fill("mallory-target@example.com")
            async with page.expect_navigation(url=target):
                await page.get_by_role("button", name="Sign in").click()
            session = await session_cookies(context, site)
            assert len(session) == 1

            await page.goto(evil, wait_until="load")  # the image has loaded, or failed to, by then
            image = [r for r in traffic.to(site.url + "/logout") if r.resource_type == "image"]
            assert len(image) == 1  # the request went out, cookie and all; it only got the question
            assert f"{COOKIE}={session[0]}" in (await image[0].header_value("cookie") or "").split("; ")
            await page.get_by_role("link", name="Claim").click()
            await page.get_by_role("heading", level=1, name=re.compile("^Sign out of ")).wait_for()
            await page.goto(evil)
            async with page.expect_response(lambda r: r.request.method == "POST") as posted:
                await page.get_by_role("button", name="Win").click()
            refused = await posted.value
            assert refused.status == 403
            evil_origin = "http://" + urlsplit(evil).netloc
            assert await refused.request.header_value("origin") == evil_origin  # another origin: refused
            await page.get_by_text("nothing was changed").wait_for()

            assert await session_cookies(context, site) == session
            await page.goto(target)
            assert header(await shows_app(page), "X-Auth-Request-Email") == ["mallory-target@example.com"]
            assert site.stack.get("/inbox", token=session[0], browser=True).status == 200
            assert traffic.foreign() == []
        finally:
            await context.close()


async def test_people_mint_and_revoke_their_own_api_tokens_in_a_real_browser(site: Site) -> None:
    """Signed in, a person opens /tokens, creates a token by clicking, reads it off the page (shown once),
    uses it from a script (a bearer request through nginx), then revokes it by clicking: refused at once."""
    email = "scripts@example.com"
    async with launched(site.chromium) as browser:
        context, page, traffic = await new_page(browser)
        try:
            assert_page_headers(await page.goto(site.url + "/tokens"))
            await assert_sign_in_chooser(site, page, "/tokens")
            await page.get_by_role("link", name=f"Continue with {DEV_DISPLAY}").click()
            await page.get_by_label("Email").fill(email)
            async with page.expect_navigation(url=site.url + "/tokens"):
                await page.get_by_role("button", name="Sign in").click()
            await page.get_by_role("heading", level=1, name="API tokens").wait_for()
            await page.get_by_text("You have no API tokens yet").wait_for()

            await page.get_by_label("Name").fill("nightly export")
            await page.get_by_label("Expires after").select_option(label="30 days")
            async with page.expect_navigation():
                await page.get_by_role("button", name="Create token").click()
            token = (await page.locator("#new-token").inner_text()).strip()
            assert re.fullmatch(r"gwt_[A-Za-z0-9_-]{43}", token), token
            row = page.locator("tbody tr")
            assert await row.count() == 1
            assert "nightly export" in await row.inner_text() and await row.locator(".state").inner_text() == "active"
            [posted] = [r for r in traffic.to(site.url + "/tokens") if r.method == "POST"]
            assert await posted.header_value("sec-fetch-site") == "same-origin"

            bearer = [("Authorization", f"Bearer {token}")]
            used = site.stack.get("/api/reports", bearer)
            assert used.status == 200, (used.status, used.text)
            assert json.loads(used.text)["path"].startswith("/api/reports")

            assert_page_headers(await page.goto(site.url + "/tokens"))
            assert token not in await page.content()  # shown once, never again
            token_id = await row.get_attribute("data-token-id")
            async with page.expect_navigation(url=site.url + "/tokens"):
                await page.locator(f"#revoke-{token_id}").click()
            assert await page.locator("tbody tr .state").inner_text() == "revoked"
            assert site.stack.get("/api/reports", bearer).status == 401
            assert traffic.foreign() == []
        finally:
            await context.close()
