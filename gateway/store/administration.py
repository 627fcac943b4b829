"""The store's :class:`Administration` role (what only an administrator does) and the session ids it takes,
apart from :mod:`gateway.store.base` (which composes it into ``Store``) so that module stays small."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gateway.models import User

SESSION_ID_MIN = 8
"""The shortest token hash prefix that names a session to an admin: as many hex digits as
``gateway sessions list`` shows."""

_HEX = frozenset("0123456789abcdef")


def check_session_prefix(prefix: str) -> None:
    """Raise ValueError unless ``prefix`` is :data:`SESSION_ID_MIN` to 64 lower-case hex digits."""
    if not SESSION_ID_MIN <= len(prefix) <= 64 or not set(prefix) <= _HEX:
        raise ValueError(f"a session id is {SESSION_ID_MIN} to 64 lower-case hex digits, as "
                         "`gateway sessions list` shows it")


class Administration(Protocol):
    """What only an administrator does: end every session at once, end one by the id people see, set roles."""

    async def revoke_all_sessions(self, *, actor: str, reason: str) -> int:
        """Revoke every active session of every user (browser sessions and API tokens); return how many.

        One transaction: the revocations, one ``revoke_all`` audit row (``reason``, ``sessions``, ``users``)
        and one revocation of everything in the log (:attr:`Revocation.everything`), logged even when
        nothing was active, so every process forgets every cached session, bearer JWTs included.
        """

    async def revoke_session_by_prefix(self, prefix: str, *, user_id: int | None = None, actor: str,
                                       reason: str) -> list[str]:
        """Revoke the one active session whose token hash starts with ``prefix`` (of ``user_id``, when given).

        Returns the token hashes of the active sessions that match, at most two: exactly one means it was
        revoked (audited ``revoke`` and logged like :meth:`SessionLookups.revoke_session`); none or two
        means nothing was revoked (unknown, or ambiguous: the caller asks for a longer prefix). Raises
        ValueError for a prefix :func:`check_session_prefix` refuses.
        """

    async def set_user_roles(self, user_id: int, roles: Sequence[str], *, actor: str) -> User | None:
        """Replace a user's roles and return the user as now stored; None when no such user exists.

        Audited ``user_roles`` (``roles`` and ``previous``, comma-separated). A revocation of the user is
        logged in the same transaction, which only makes every process forget the user's cached sessions:
        none is revoked, and each one's next check reads the new roles. The caller validates role names.
        """
