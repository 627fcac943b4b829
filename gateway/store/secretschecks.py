"""What both backends check before keeping or looking up a session secret (never echoing a value)."""

from __future__ import annotations

import re

from gateway.store.checks import is_token_hash
from gateway.store.sessionsecrets import SESSION_SECRET_MAX, SESSION_SECRET_PURPOSES

_PRINTABLE_ASCII_RE = re.compile(r"[\x21-\x7e]+")


def check_session_secret(token_hash: str, purpose: str, sealed: str) -> None:
    """Reject a secret no schema would accept, with a ValueError naming the field (never its value)."""
    if not is_token_hash(token_hash):
        raise ValueError("token_hash must be 64 lower-case hex characters (SHA-256 of the token)")
    if purpose not in SESSION_SECRET_PURPOSES:
        raise ValueError(f"purpose must be one of {sorted(SESSION_SECRET_PURPOSES)}")
    if not 0 < len(sealed) <= SESSION_SECRET_MAX or not _PRINTABLE_ASCII_RE.fullmatch(sealed):
        raise ValueError(f"sealed must be 1 to {SESSION_SECRET_MAX} printable ASCII characters")


def is_session_secret_key(token_hash: str, purpose: str) -> bool:
    """True when ``(token_hash, purpose)`` could name a kept secret (a lookup of anything else is None)."""
    return is_token_hash(token_hash) and purpose in SESSION_SECRET_PURPOSES
