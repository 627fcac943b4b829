"""Opaque session tokens: mint (256 bits from ``secrets``), shape check, and the SHA-256 hash we store."""

from __future__ import annotations

import hashlib
import re
import secrets

TOKEN_PREFIX = "gwt_"  # noqa: S105 - a public prefix, not a secret
"""Marks gateway tokens so secret scanners and humans can recognise a leaked one."""

_TOKEN_BYTES = 32
_TOKEN_RE = re.compile(r"gwt_[A-Za-z0-9_-]{43}")
TOKEN_LENGTH = len(TOKEN_PREFIX) + 43


def mint_token() -> str:
    """Return a fresh token: ``gwt_`` plus 256 random bits as unpadded URL-safe base64 (47 chars)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)


def is_well_formed(token: str) -> bool:
    """True when ``token`` has exactly the shape :func:`mint_token` produces (checked before any lookup)."""
    return len(token) == TOKEN_LENGTH and _TOKEN_RE.fullmatch(token) is not None


def hash_token(token: str) -> str:
    """SHA-256 of the token as lowercase hex: the only form in which a token is stored or logged."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()
