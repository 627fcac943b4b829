"""The device authorization grant's endpoints (RFC 8628): ``/auth/device/code`` and ``/auth/device/token`` for
CLIs, ``/device`` for the person who approves.

Thin adapters over :class:`gateway.device.DeviceGrantService`. Who may do what:

- Asking for a device code and polling for the token need nothing but the codes (the CLI has no session):
  form-encoded bodies (``application/x-www-form-urlencoded``, each parameter at most once, RFC 6749
  §3.2), at most :data:`_MAX_BODY` bytes. Errors are RFC 6749 §5.2 JSON; every answer is ``no-store``.
- The page needs a **browser session**, sent as the session cookie, as ``/tokens`` does: a browser
  without one is sent to sign in (and comes back to the code it followed), and an API token or a bearer
  JWT is refused with 403, so a leaked token cannot approve a device of its own. Every POST passes the
  same CSRF checks as the API tokens page (:mod:`gateway.csrf`: our own origin, and the session-bound
  token for this purpose in the field ``csrf_token``); a refusal is a 403 with one log line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NoReturn
from urllib.parse import parse_qsl, quote

import structlog
from aiohttp import hdrs, web

from gateway import pages
from gateway.admin import iso_time
from gateway.core import Checker
from gateway.credentials import Credential
from gateway.csrf import session_bound_token
from gateway.device import (
    DeviceGrantService,
    InvalidDeviceRequest,
    UnknownUserCode,
    display_user_code,
    normalise_user_code,
)
from gateway.errors import Forbidden, Unauthenticated
from gateway.facts import TrustedProxies
from gateway.handlers.forms import refuse_longer
from gateway.handlers.selfservice import Requesters
from gateway.metrics import Metrics
from gateway.models import ActiveSession
from gateway.redirects import RedirectPolicy
from gateway.tokens import hash_token

log = structlog.get_logger("gateway.device")

_PURPOSE = b"gateway device approval v1"
"""What this page's CSRF token MACs: its own purpose, so no other form's token is any use here."""

_MAX_BODY = 4096
_MAX_FIELDS = 16
_TOO_LARGE = "A device request is a few hundred bytes; this one is far larger."
_FORM = "application/x-www-form-urlencoded"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache", "X-Content-Type-Options": "nosniff"}
_ACTIONS = ("look_up", "approve", "deny")


def _json(body: Mapping[str, Any]) -> web.Response:
    return web.json_response(dict(body), headers=_NO_STORE)


async def oauth_form(request: web.Request) -> dict[str, str]:
    """The request's form parameters (RFC 6749 §3.2): InvalidDeviceRequest for any other body, a parameter
    sent twice, or text that is not UTF-8; PayloadTooLarge over :data:`_MAX_BODY` bytes."""
    refuse_longer(request, _MAX_BODY, _TOO_LARGE)
    if request.content_type != _FORM:
        raise InvalidDeviceRequest(f"Send the parameters form-encoded (Content-Type: {_FORM}).")
    raw = await request.read()  # its length was checked above (and chunked bodies are refused)
    if len(raw) > _MAX_BODY:
        raise InvalidDeviceRequest(_TOO_LARGE)
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, errors="strict", max_num_fields=_MAX_FIELDS)
    except ValueError:  # not UTF-8 (raw or percent-encoded), or too many fields
        raise InvalidDeviceRequest("The body is not a valid form-encoded request.") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            raise InvalidDeviceRequest(f"The parameter {name[:32]!r} is sent more than once.")
        fields[name] = value
    return fields


class DeviceHandlers:
    """The two OAuth endpoints and the approval page."""

    def __init__(self, service: DeviceGrantService, checker: Checker, proxies: TrustedProxies,
                 redirects: RedirectPolicy, metrics: Metrics, *, cookie_name: str, clock: Callable[[], float]) -> None:
        """``redirects`` says which origins are ours (those a sign-in may return to)."""
        self._service = service
        self._who = Requesters(checker, proxies, redirects, cookie_name=cookie_name)
        self._metrics = metrics
        self._clock = clock

    # ---- the CLI's side -----------------------------------------------------------------------------------

    async def code(self, request: web.Request) -> web.Response:
        """``POST /auth/device/code`` with ``client_id`` (and an ignored ``scope``): a device authorization
        response (RFC 8628 §3.2)."""
        fields = await oauth_form(request)
        issued = await self._service.issue(fields.get("client_id"), client=self._who.client(request))
        return _json({"device_code": issued.device_code, "user_code": issued.user_code,
                      "verification_uri": issued.verification_uri,
                      "verification_uri_complete": issued.verification_uri_complete,
                      "expires_in": issued.expires_in, "interval": issued.interval})

    async def token(self, request: web.Request) -> web.Response:
        """``POST /auth/device/token`` with ``grant_type``, ``device_code`` and ``client_id``: the token once
        approved (RFC 6749 §5.1), else an RFC 8628 §3.5 error."""
        fields = await oauth_form(request)
        issued = await self._service.poll(fields.get("grant_type"), fields.get("device_code"),
                                          fields.get("client_id"), client=self._who.client(request))
        return _json({"access_token": issued.access_token, "token_type": "Bearer", "expires_in": issued.expires_in})

    # ---- the person's side --------------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        """``GET /device[?user_code=...]``: the form to enter a code (prefilled from the link); a browser
        without a session is sent to sign in, and back here with the code."""
        code = normalise_user_code(request.query.get("user_code", ""))
        shown = "" if code is None else display_user_code(code)
        credential, active = await self._who.browser_session(request)
        if credential is None or active is None:
            back = "/device" + (f"?user_code={shown}" if shown else "")
            return web.Response(status=302, headers={"Location": "/login?rd=" + quote(back, safe=""),
                                                     **pages.PAGE_HEADERS})
        return self._html(pages.device_code_page(active.user.email, active.user.name, self._csrf(credential), shown))

    async def submit(self, request: web.Request) -> web.Response:
        """``POST /device``: ``action=look_up`` shows what asked (then Approve or Deny), ``approve`` or ``deny``
        decides. A wrong code shows the form again (400) with what was wrong."""
        fields = await self._page_form(request)
        action = fields.get("action", "look_up")
        credential, active = await self._may_decide(request, action if action in _ACTIONS else "look_up",
                                                    fields.get(pages.SIGN_OUT_FIELD, ""))
        user, raw_code, client = active.user, fields.get("user_code", ""), self._who.client(request)
        keys = (f"session:{hash_token(credential.token)}", f"client:{client}")
        try:
            if action == "approve" or action == "deny":
                grant = await self._service.decide(raw_code, approve=action == "approve", limit_keys=keys,
                                                   user=user, session_hash=active.session.token_hash, client=client)
                return self._html(pages.device_done_page(action == "approve", grant.client_id))
            grant = await self._service.look_up(raw_code, limit_keys=keys, user=user, client=client)
        except UnknownUserCode as exc:
            text = pages.device_code_page(user.email, user.name, self._csrf(credential), raw_code[:64].strip(),
                                          exc.message)
            return self._html(text, status=exc.status)
        code = normalise_user_code(raw_code)
        assert code is not None  # a grant was found by it
        return self._html(pages.device_confirm_page(user.email, user.name, self._csrf(credential),
                                                    display_user_code(code), grant.client_id, grant.client_addr,
                                                    iso_time(grant.created_at)))

    # ---- who may ------------------------------------------------------------------------------------------

    @staticmethod
    def _html(text: str, status: int = 200) -> web.Response:
        return web.Response(text=text, status=status, content_type="text/html", headers=pages.PAGE_HEADERS)

    @staticmethod
    def _csrf(credential: Credential) -> str:
        return session_bound_token(credential.token, _PURPOSE)

    async def _may_decide(self, request: web.Request, action: str, sent_token: str) -> tuple[Credential,
                                                                                           ActiveSession]:
        """The credential and session, when this request may look codes up or decide them: a browser session
        by cookie, same origin, and the session's CSRF token. Otherwise 401 (no session) or 403 (logged,
        counted, nothing looked at)."""
        credential, active = await self._who.any_session(request)
        if credential is None or active is None:
            raise Unauthenticated("Sign in to approve a device.", link=("/login?rd=%2Fdevice", "Sign in"))
        if not self._who.is_browser(credential, active):
            self._refuse(request, action, "not a browser session (an API token or a bearer JWT)",
                         "A device can be approved only from a signed-in browser, not with a token.")
        refusal = self._who.forgery_problem(request, credential, sent_token, _PURPOSE)
        if refusal is not None:
            self._refuse(request, action, refusal, "This request did not come from this site's device page (or "
                         "that page is out of date), so nothing was done. Reload the page and try again.")
        return credential, active

    def _refuse(self, request: web.Request, action: str, reason: str, message: str) -> NoReturn:
        self._metrics.device_grants.labels("forbidden").inc()
        log.warning("device approval refused", action=action, reason=reason, client=self._who.client(request),
                    user_agent=request.headers.get(hdrs.USER_AGENT, "")[:200])
        raise Forbidden(message, link=("/device", "Sign in a device"))

    async def _page_form(self, request: web.Request) -> dict[str, str]:
        """The page's posted fields; a body that is no form of ours reads as an empty form (refused later
        for its missing CSRF token)."""
        try:
            return await oauth_form(request)
        except InvalidDeviceRequest:
            return {}
