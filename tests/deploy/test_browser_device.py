"""A CLI signs in with the device authorization grant (RFC 8628) while a person approves it in a real browser.

The stack of :mod:`tests.deploy.test_browser` (nginx from ``deploy/nginx/protect-app.conf``, the gateway,
the fake OpenID Connect provider) with a 1-second poll interval. The CLI, plain HTTP through nginx as a
command-line tool would send it, asks ``/auth/device/code`` and keeps polling ``/auth/device/token``;
meanwhile headless Chromium follows ``verification_uri_complete``, signs in at the provider, sees the code
prefilled, continues, reads which client asked, and approves. The CLI's next poll gets an API token, once,
and it passes ``/auth/check``. Every gateway page on the way carries its protective headers and nothing is
fetched from anywhere but loopback.

Needs what :mod:`tests.deploy.test_browser` needs (Chromium and the ``playwright`` package); without them
the tests skip, or fail under ``GATEWAY_TEST_STRICT=1``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from tests.deploy.stack import http
from tests.deploy.test_browser import (
    OIDC_DISPLAY,
    OIDC_USER,
    Site,
    assert_page_headers,
    assert_sign_in_chooser,
    launched,
    new_page,
    oidc_site,
)
from tests.fakes.oidc import FakeOIDC

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"
CLIENT_ID = "acme-cli 2.1"
FORM = [("Content-Type", "application/x-www-form-urlencoded"), ("Accept", "application/json")]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The browser tests' stack, polled every second."""
    with oidc_site(tmp_path_factory.mktemp("device-stack"), FakeOIDC(users=[OIDC_USER]),
                   '[session]\ndevice_poll_interval = "1s"\n') as running:
        yield running


def post_form(url: str, fields: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """What a CLI sends: one form-encoded POST, the JSON answer."""
    reply = http("POST", url, FORM, urlencode(fields).encode())
    assert reply.header("Cache-Control") == "no-store", reply.headers
    body: dict[str, Any] = json.loads(reply.text)
    return reply.status, body


def poll_until_done(site: Site, device_code: str, interval: float, deadline: float) -> list[tuple[int, dict[str, Any]]]:
    """Poll as RFC 8628 §3.5 says (wait ``interval``, 5 s more after ``slow_down``) until an answer other than
    ``authorization_pending`` or the deadline; every answer, in order."""
    answers = []
    while time.monotonic() < deadline:
        time.sleep(interval)
        status, body = post_form(site.url + "/auth/device/token", {
            "grant_type": GRANT_TYPE, "device_code": device_code, "client_id": CLIENT_ID})
        answers.append((status, body))
        if body.get("error") == "slow_down":
            interval += 5
        elif body.get("error") != "authorization_pending":
            break
    return answers


async def test_a_cli_gets_a_token_while_its_person_approves_in_a_real_browser(site: Site) -> None:
    status, asked = post_form(site.url + "/auth/device/code", {"client_id": CLIENT_ID})
    assert status == 200, asked
    assert asked["interval"] == 1 and re.fullmatch(r"[B-Z]{4}-[B-Z]{4}", asked["user_code"]), asked
    # the gateway's public_url is the site: the link the CLI shows goes through nginx
    link = urlsplit(asked["verification_uri_complete"])
    assert (link.path, link.query) == ("/device", f"user_code={asked['user_code']}"), asked
    page_url = site.url + "/device?" + link.query
    cli = asyncio.create_task(asyncio.to_thread(poll_until_done, site, asked["device_code"], asked["interval"],
                                                time.monotonic() + 60))
    async with launched(site.chromium) as browser:
        context, page, traffic = await new_page(browser)
        try:
            assert_page_headers(await page.goto(page_url))
            await assert_sign_in_chooser(site, page, "/device?user_code=" + asked["user_code"])
            async with page.expect_navigation(url=page_url):
                await page.get_by_role("link", name=f"Continue with {OIDC_DISPLAY}").click()
            await page.get_by_role("heading", level=1, name="Sign in a device").wait_for()
            assert await page.get_by_label("Code").input_value() == asked["user_code"]
            await page.get_by_role("button", name="Continue").click()
            await page.get_by_role("heading", level=1, name="Approve this device?").wait_for()
            shown = await page.locator("main").inner_text()
            assert CLIENT_ID in shown and asked["user_code"] in shown and OIDC_USER.email in shown, shown
            assert not cli.done()  # still waiting: nothing is granted before the click
            await page.get_by_role("button", name="Approve").click()
            await page.get_by_role("heading", level=1, name="Device approved").wait_for()
            posted = [r for r in traffic.to(site.url + "/device") if r.method == "POST"]
            assert len(posted) == 2
            for request in posted:
                assert await request.header_value("sec-fetch-site") == "same-origin"
            for response in traffic.documents:
                if urlsplit(response.url).path == "/device":
                    assert_page_headers(response)
            assert traffic.foreign() == []
        finally:
            await context.close()

    answers = await cli
    assert [body.get("error") for _, body in answers[:-1]] == ["authorization_pending"] * (len(answers) - 1)
    status, granted = answers[-1]
    assert status == 200, answers
    assert granted["token_type"] == "Bearer" and re.fullmatch(r"gwt_[A-Za-z0-9_-]{43}", granted["access_token"])
    token = granted["access_token"]
    checked = http("GET", site.stack.gateway.url + "/auth/check", [("Authorization", f"Bearer {token}")])
    assert checked.status == 200, (checked.status, checked.text)
    assert checked.header("X-Auth-Request-Email") == OIDC_USER.email
    used = site.stack.get("/api/reports", [("Authorization", f"Bearer {token}")])  # through nginx, as the CLI would
    assert used.status == 200, (used.status, used.text)
    # handed out once
    status, again = post_form(site.url + "/auth/device/token", {
        "grant_type": GRANT_TYPE, "device_code": asked["device_code"], "client_id": CLIENT_ID})
    assert (status, again["error"]) == (400, "invalid_grant")


async def test_a_code_denied_in_the_browser_gives_the_cli_access_denied(site: Site) -> None:
    status, asked = post_form(site.url + "/auth/device/code", {"client_id": CLIENT_ID})
    assert status == 200, asked
    cli = asyncio.create_task(asyncio.to_thread(poll_until_done, site, asked["device_code"], asked["interval"],
                                                time.monotonic() + 60))
    async with launched(site.chromium) as browser:
        context, page, _ = await new_page(browser)
        try:
            await page.goto(site.url + "/device")
            async with page.expect_navigation(url=site.url + "/device"):
                await page.get_by_role("link", name=f"Continue with {OIDC_DISPLAY}").click()
            await page.get_by_label("Code").fill(asked["user_code"].lower().replace("-", " "))  # as typed
            await page.get_by_role("button", name="Continue").click()
            await page.get_by_role("button", name="Deny").click()
            await page.get_by_role("heading", level=1, name="Device denied").wait_for()
        finally:
            await context.close()
    answers = await cli
    status, body = answers[-1]
    assert (status, body.get("error")) == (400, "access_denied"), answers
