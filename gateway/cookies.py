"""Setting and clearing the gateway's cookies with the attributes security.md requires.

Session cookie: ``HttpOnly``, ``Secure`` (unless configured off for plain-http development),
``SameSite=Lax``, ``Path=/``, ``Domain`` only when configured, ``Max-Age`` = session lifetime. Login
attempt cookies: the same, host-only, living as long as the attempt. The device cookie: the same,
host-only (only the gateway's sign-in pages read it), living as long as the device.
"""

from __future__ import annotations

import re
from http.cookies import Morsel

from aiohttp import web

from gateway.settings import CookieSettings

COOKIE_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""A cookie name: an RFC 6265 token."""


def cookie_problems(cookie: CookieSettings) -> list[str]:
    """Problems with ``[cookie]``: a name browsers accept, a SameSite they know, a host-name domain."""
    problems: list[str] = []
    if not COOKIE_NAME_RE.fullmatch(cookie.name):
        problems.append(f"cookie.name: {cookie.name!r} is not a valid cookie name")
    if cookie.samesite not in {"Lax", "Strict", "None"}:
        problems.append(f"cookie.samesite: expected Lax, Strict or None, got {cookie.samesite!r}")
    if cookie.samesite == "None" and not cookie.secure:
        problems.append("cookie.samesite: None requires cookie.secure = true (browsers drop it otherwise)")
    if cookie.domain and not re.fullmatch(r"\.?[A-Za-z0-9.-]+", cookie.domain):
        problems.append(f"cookie.domain: {cookie.domain!r} is not a host name")
    return problems


def set_session_cookie(response: web.StreamResponse, cookie: CookieSettings, token: str, max_age: float) -> None:
    """Put the session token on the browser."""
    response.set_cookie(cookie.name, token, max_age=int(max_age), path="/", domain=cookie.domain or None,
                        secure=cookie.secure, httponly=True, samesite=cookie.samesite)


def session_cookie_header(cookie: CookieSettings, token: str, max_age: float) -> str:
    """The ``Set-Cookie`` value :func:`set_session_cookie` would send, for answers built without aiohttp (a
    check renewing the cookie of a session its upstream renewed)."""
    morsel: Morsel[str] = Morsel()
    morsel.set(cookie.name, token, token)
    morsel["max-age"] = str(int(max_age))
    morsel["path"] = "/"
    if cookie.domain:
        morsel["domain"] = cookie.domain
    morsel["secure"] = cookie.secure
    morsel["httponly"] = True
    morsel["samesite"] = cookie.samesite
    return morsel.OutputString()


def clear_session_cookie(response: web.StreamResponse, cookie: CookieSettings) -> None:
    """Remove the session cookie (same name, path and domain, so the browser really drops it)."""
    response.set_cookie(cookie.name, "", max_age=0, expires="Thu, 01 Jan 1970 00:00:00 GMT", path="/",
                        domain=cookie.domain or None, secure=cookie.secure, httponly=True,
                        samesite=cookie.samesite)


def set_attempt_cookie(response: web.StreamResponse, cookie: CookieSettings, name: str, value: str,
                       max_age: float) -> None:
    """Bind a login attempt to this browser (host-only; Lax so it rides the provider's redirect back)."""
    response.set_cookie(name, value, max_age=int(max_age), path="/", secure=cookie.secure, httponly=True,
                        samesite="Lax")


def clear_attempt_cookie(response: web.StreamResponse, cookie: CookieSettings, name: str) -> None:
    """Drop a used login attempt's cookie."""
    response.set_cookie(name, "", max_age=0, expires="Thu, 01 Jan 1970 00:00:00 GMT", path="/",
                        secure=cookie.secure, httponly=True, samesite="Lax")


def set_device_cookie(response: web.StreamResponse, cookie: CookieSettings, name: str, value: str,
                      max_age: float) -> None:
    """Mark this browser as one someone signed in with (host-only; Lax so it rides the provider's redirect)."""
    response.set_cookie(name, value, max_age=int(max_age), path="/", secure=cookie.secure, httponly=True,
                        samesite="Lax")
