"""What both backends check and build for :class:`gateway.store.base.ApiTokens`: names, token ids, records."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from gateway.store.checks import check_new_session
from gateway.store.rows import SESSION_FIELDS, session_from_row
from gateway.store.tokensrole import API_TOKEN_ID_LENGTH, API_TOKEN_NAME_MAX, ApiToken

_TOKEN_ID_RE = re.compile(rf"[0-9a-f]{{{API_TOKEN_ID_LENGTH},64}}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

REVOKE_REASON = "api token revoked by its user"
"""The audit ``reason`` when a user revokes one of their own API tokens."""


def has_control_character(text: str) -> bool:
    """True when ``text`` holds a control character or a line or paragraph separator (never in a name)."""
    return _CONTROL_RE.search(text) is not None


def is_token_id(value: str) -> bool:
    """True when ``value`` can name an API token: :data:`API_TOKEN_ID_LENGTH` to 64 lower-case hex digits."""
    return _TOKEN_ID_RE.fullmatch(value) is not None


def check_new_api_token(token_hash: str, name: str, now: float, expires_at: float, max_active: int) -> None:
    """Reject an API token no schema would accept (see :meth:`ApiTokens.create_api_token`), with a ValueError."""
    check_new_session(token_hash, "api", expires_at, 0.0)
    if not name or len(name) > API_TOKEN_NAME_MAX:
        raise ValueError(f"an API token name is 1 to {API_TOKEN_NAME_MAX} characters")
    if has_control_character(name):
        raise ValueError("an API token name must not hold control characters")
    if not (math.isfinite(now) and math.isfinite(expires_at)):
        raise ValueError("times must be finite")
    if max_active < 1:
        raise ValueError("max_active must be at least 1")


def api_token_from_row(row: Sequence[Any]) -> ApiToken:
    """An :class:`ApiToken` from a row laid out as :data:`gateway.store.rows.SESSION_FIELDS`, then the name
    (NULL for an unnamed token)."""
    width = len(SESSION_FIELDS)
    name = row[width]
    return ApiToken(session_from_row(row[:width]), "" if name is None else str(name))
