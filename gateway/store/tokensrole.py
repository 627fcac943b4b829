"""The store's :class:`ApiTokens` role and its records, apart from :mod:`gateway.store.base` (which composes it
into ``Store``) so that module stays small."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.models import SessionRecord


@dataclass(frozen=True, slots=True)
class ApiToken:
    """An API token (a session of kind ``api``) as its owner sees it: the session and the name it was given.

    ``name`` is empty for tokens minted without one (``gateway tokens mint``). :attr:`token_id` is what
    people see and name the token by, never the token itself.
    """

    session: SessionRecord
    name: str

    @property
    def token_id(self) -> str:
        """The first :data:`API_TOKEN_ID_LENGTH` hex characters of the token's hash (as ``gateway sessions list``
        shows them)."""
        return self.session.token_hash[:API_TOKEN_ID_LENGTH]


API_TOKEN_ID_LENGTH = 8
"""Hex characters of a token hash that name an API token to its owner."""

API_TOKEN_NAME_MAX = 100
"""Longest API token name, in characters (the schema's CHECK)."""


class TooManyApiTokens(Exception):
    """The user already holds as many active API tokens as allowed; nothing was created."""


class ApiTokens(Protocol):
    """API tokens people mint, list and revoke for themselves: named sessions of kind ``api``."""

    async def create_api_token(self, *, token_hash: str, user_id: int, name: str, now: float, expires_at: float,
                               max_active: int) -> ApiToken:
        """Insert an ``api`` session (no idle timeout) named ``name`` and return it, in one transaction.

        Raises TooManyApiTokens when the user already holds ``max_active`` API tokens active at ``now``
        (concurrent calls for one user are serialised, so the limit holds), ValueError for a malformed
        hash, a hash already in use, a name that is empty, over :data:`API_TOKEN_NAME_MAX` characters or
        holds a control character, or a non-finite time, and NotFound when the user does not exist.
        """

    async def list_api_tokens(self, user_id: int, *, since: float) -> list[ApiToken]:
        """The user's API tokens that were still alive at ``since`` or later (not revoked, or expired,
        before it), newest first; named or not."""

    async def revoke_api_token(self, user_id: int, token_id: str, *, actor: str, reason: str,
                               now: float) -> ApiToken | None:
        """Revoke the user's unrevoked API token whose hash starts with ``token_id`` (:data:`API_TOKEN_ID_LENGTH`
        to 64 lower-case hex digits) and return it as revoked; audited ``revoke`` and logged like
        :meth:`gateway.store.base.SessionLookups.revoke_session`, so every replica drops it. None, and nothing
        revoked, when no such token of this user (another user's, a browser session, a revoked one) or more
        than one matches, or ``token_id`` is not such a prefix.
        """
