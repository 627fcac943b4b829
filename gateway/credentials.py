"""Find the session token in a request's ``Cookie`` and ``Authorization`` header values.

Pure functions over header strings, so every front-end (aiohttp today, a leaner one later) shares them.
Bounds are enforced here: an oversized or ambiguous credential is rejected, never half-parsed.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from typing import NamedTuple

from gateway import tokens

MAX_COOKIE_HEADER_BYTES = 8192
"""Cookie header bytes (all Cookie headers together) accepted; browsers cap a cookie at 4 KiB."""

MAX_COOKIES = 180
"""Cookie pairs accepted in one request (browsers keep at most ~180 per domain)."""

MAX_AUTHORIZATION_BYTES = 4096


class CredentialProblem(enum.Enum):
    """Why a request carries no usable token; the value is the reason logged and counted."""

    MISSING = "missing"
    MALFORMED = "malformed"
    OVERSIZED = "oversized"


class CredentialSource(enum.Enum):
    """Where the token came from."""

    COOKIE = "cookie"
    BEARER = "bearer"
    JWT = "jwt"
    """A bearer JWT issued by a configured upstream (only when ``check.jwt_upstreams`` is set)."""


class Credential(NamedTuple):
    """A well-formed opaque token and where it was found."""

    token: str
    source: CredentialSource


_JWT_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_AUTHORIZATION_RE = re.compile(r"[ \t]*([!#$%&'*+.^_`|~0-9A-Za-z-]+)(?:[ \t]+(.*?))?[ \t]*", re.DOTALL)


def find_credential(cookie_headers: Sequence[str], authorization_headers: Sequence[str],
                    cookie_name: str, *, accept_jwt: bool = False) -> Credential | CredentialProblem:
    """Return the request's token, or why there is none.

    ``Authorization: Bearer`` wins when present (an API client's explicit choice); it is then the only
    source considered, so a bad bearer token is never rescued by a cookie. Other schemes (``Basic``...)
    are ignored. Among cookies, the first one named ``cookie_name`` counts (browsers send the most
    specific path first). A token of the wrong shape is MALFORMED and must not be looked up. With
    ``accept_jwt``, a bearer value shaped like a compact JWT is returned as a JWT credential (to be
    verified against the configured upstreams, never looked up).
    """
    if authorization_headers:
        bearer = _bearer_token(authorization_headers, accept_jwt)
        if bearer is not None:
            return bearer
    if not cookie_headers:
        return CredentialProblem.MISSING
    return _cookie_token(cookie_headers, cookie_name)


def _bearer_token(values: Sequence[str], accept_jwt: bool) -> Credential | CredentialProblem | None:
    if len(values) > 1:
        return CredentialProblem.MALFORMED
    value = values[0]
    if len(value) > MAX_AUTHORIZATION_BYTES:
        return CredentialProblem.OVERSIZED
    # RFC 6750 2.1 / RFC 9110 11.4: the scheme is case-insensitive and one or more spaces follow it
    # (tabs too: leniency in the separator costs nothing, the token itself is checked strictly).
    match = _AUTHORIZATION_RE.fullmatch(value)
    if match is None or match.group(1).lower() != "bearer":
        return None
    token = match.group(2) or ""
    if tokens.is_well_formed(token):
        return Credential(token, CredentialSource.BEARER)
    if accept_jwt and _JWT_RE.fullmatch(token):
        return Credential(token, CredentialSource.JWT)
    return CredentialProblem.MALFORMED


def _cookie_token(values: Sequence[str], name: str) -> Credential | CredentialProblem:
    header = values[0] if len(values) == 1 else "; ".join(values)
    if len(header) > MAX_COOKIE_HEADER_BYTES:
        return CredentialProblem.OVERSIZED
    if header.count(";") >= MAX_COOKIES:
        return CredentialProblem.OVERSIZED
    # Find "name=" at the start of a pair (only spaces or tabs after the last ";" before it) without
    # splitting every pair: this runs on every request. "a=x gw_session=..." is a's value, not a session.
    prefix = name + "="
    at = header.find(prefix)
    while at > 0 and header[header.rfind(";", 0, at) + 1:at].strip(" \t"):
        at = header.find(prefix, at + 1)
    if at < 0:
        return CredentialProblem.MISSING
    start = at + len(prefix)
    end = header.find(";", start)
    token = (header[start:] if end < 0 else header[start:end]).strip(" \t")
    if len(token) >= 2 and token[0] == token[-1] == '"':
        token = token[1:-1]
    if tokens.is_well_formed(token):
        return Credential(token, CredentialSource.COOKIE)
    return CredentialProblem.MALFORMED
