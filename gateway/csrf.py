"""Cross-site request forgery checks for cookie-authenticated POSTs: same origin, and a session-bound token.

Shared by sign-out (:mod:`gateway.handlers.login`, whose module docstring gives the reasoning) and the
self-service API tokens (:mod:`gateway.handlers.tokens`). A state-changing request made with the session
cookie is accepted only when

- it comes from one of our own origins: ``Sec-Fetch-Site``, when sent, is ``same-origin``, and ``Origin``,
  when sent, is an origin a sign-in may return to (``Origin: null``, which browsers send for a same-origin
  form post from a no-referrer page, is no evidence either way); and
- it carries HMAC-SHA256(key = the session token, message = the purpose), hex: a value only the holder of
  the session token, or a page of ours that hands it out, can know. Each purpose has its own message, so
  a token handed out for one form means nothing to another.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence

from gateway.redirects import RedirectPolicy, is_safe_redirect_target

_ORIGIN_RE = re.compile(r"https?://[^/?#@\\\s]+")
"""``scheme://host[:port]`` as browsers serialise an ``Origin``: nothing after the authority."""


def session_bound_token(session_token: str, purpose: bytes) -> str:
    """The form token for ``purpose`` of the session whose (cookie) token is ``session_token``."""
    return hmac.new(session_token.encode(), purpose, hashlib.sha256).hexdigest()


def token_problem(session_token: str, sent: str, purpose: bytes) -> str | None:
    """Why ``sent`` is not the ``purpose`` token of ``session_token``'s session, or None when it is."""
    if not sent:
        return "no CSRF token"
    if not hmac.compare_digest(sent.encode(), session_bound_token(session_token, purpose).encode()):
        return "CSRF token does not match the session"
    return None


def cross_site_problem(fetch_sites: Sequence[str], origins: Sequence[str], redirects: RedirectPolicy) -> str | None:
    """Why a request with these ``Sec-Fetch-Site`` and ``Origin`` headers cannot come from one of our own
    pages, or None. Our origins are those a sign-in may return to under ``redirects``."""
    if len(fetch_sites) > 1 or (fetch_sites and fetch_sites[0] != "same-origin"):
        return f"Sec-Fetch-Site is {', '.join(fetch_sites)[:64]!r}, not 'same-origin'"
    if len(origins) > 1 or (origins and origins[0] != "null" and not is_our_origin(origins[0], redirects)):
        return f"Origin {', '.join(origins)[:200]!r} is not one of the gateway's"
    return None


def is_our_origin(origin: str, redirects: RedirectPolicy) -> bool:
    """True for an origin a sign-in may return to: where our pages may be served."""
    return _ORIGIN_RE.fullmatch(origin) is not None and is_safe_redirect_target(origin + "/", redirects)
