"""Keeping database passwords out of what the gateway prints: find them in a URL, mask them in any text.

One small API for every place that shows a URL or repeats a driver's message: the settings printout
(:func:`mask_url`), the command line and the store's error messages (:func:`url_secrets` then
:func:`scrub`). A password may reach a message raw, percent-decoded, or from a ``?password=`` parameter,
so every spelling is masked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qs, unquote, urlsplit

MASK = "***"
"""What a secret is replaced with."""

_QUERY_PASSWORD_RE = re.compile(r"(?<=[?&]password=)[^&#]+")


def url_secrets(*urls: str) -> tuple[str, ...]:
    """Every spelling of every password in ``urls`` (userinfo and ``?password=``, raw and percent-decoded),
    longest first so that a password containing another is masked whole. Never raises: a malformed URL
    yields what could be found, possibly nothing."""
    found: set[str] = set()
    for url in urls:
        try:
            parts = urlsplit(url)
            passwords = [parts.password] if parts.password else []
            passwords += parse_qs(parts.query).get("password", [])  # decoded
            passwords += _QUERY_PASSWORD_RE.findall("?" + parts.query)  # as written
        except ValueError:
            continue
        found.update(spelling for password in passwords for spelling in (password, unquote(password)))
    return tuple(sorted((s for s in found if s), key=len, reverse=True))


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each of ``secrets`` replaced by :data:`MASK` (pass them longest
    first, as :func:`url_secrets` gives them)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text


def mask_url(url: str) -> str:
    """``url`` with its password (userinfo and ``?password=``) masked, everything else as written, so an
    operator can still tell which user, host and database it names."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return MASK
    if password:
        parts = urlsplit(url)
        url = parts._replace(netloc=parts.netloc.replace(":" + password + "@", f":{MASK}@")).geturl()
    return _QUERY_PASSWORD_RE.sub(MASK, url)
