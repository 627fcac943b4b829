"""What only an administrator does, on SQLite: end every session at once, end one session by the short id
people see, set a user's roles (see :class:`gateway.store.administration.Administration`)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from gateway.models import Revocation, User
from gateway.store.administration import check_session_prefix
from gateway.store.rows import decode_names, encode_names, user_from_row
from gateway.store.sqliteconn import ConnectedStore
from gateway.store.sqlitesql import ACTIVE, USER_COLUMNS, insert_audit, log_revocation

_REVOKE_ALL = f"UPDATE sessions SET revoked_at = ? WHERE {ACTIVE} RETURNING user_id"  # noqa: S608

_MATCH_PREFIX = ("SELECT s.token_hash, s.user_id, u.upstream || ':' || u.subject FROM sessions s"  # noqa: S608
                 " JOIN users u ON u.id = s.user_id WHERE substr(s.token_hash, 1, ?) = ?"
                 f" AND {ACTIVE} AND (? IS NULL OR s.user_id = ?) ORDER BY s.token_hash LIMIT 2")

_SET_ROLES = f"UPDATE users SET roles = ?, updated_at = ? WHERE id = ? RETURNING {USER_COLUMNS}"  # noqa: S608


class AdminTables(ConnectedStore):
    """The :class:`gateway.store.administration.Administration` role on the file."""

    async def revoke_all_sessions(self, *, actor: str, reason: str) -> int:
        """Revoke every active session, audit it once and log one revocation of everything, in one transaction."""
        now = time.time()
        async with self._use(write=True) as conn:
            rows = list(await conn.execute_fetchall(_REVOKE_ALL, (now, now, now)))
            users = {int(row[0]) for row in rows}
            await insert_audit(conn, now, "revoke_all", None, "", actor,
                               {"reason": reason, "sessions": str(len(rows)), "users": str(len(users))})
            # Always, even when no row was active: bearer JWT sessions are cached without a row.
            await log_revocation(conn, now, Revocation())
        return len(rows)

    async def revoke_session_by_prefix(self, prefix: str, *, user_id: int | None = None, actor: str,
                                       reason: str) -> list[str]:
        """Revoke the one active session whose hash starts with ``prefix``; return the (at most two) matches."""
        check_session_prefix(prefix)
        now = time.time()
        async with self._use(write=True) as conn:
            rows = list(await conn.execute_fetchall(_MATCH_PREFIX, (len(prefix), prefix, now, now, user_id,
                                                                    user_id)))
            if len(rows) != 1:
                return [str(row[0]) for row in rows]
            token_hash, owner, user_key = str(rows[0][0]), int(rows[0][1]), str(rows[0][2])
            await conn.execute("UPDATE sessions SET revoked_at = ? WHERE token_hash = ?", (now, token_hash))
            await insert_audit(conn, now, "revoke", owner, user_key, actor,
                               {"reason": reason, "session": token_hash[:12]})
            await log_revocation(conn, now, Revocation(token_hash=token_hash))
        return [token_hash]

    async def set_user_roles(self, user_id: int, roles: Sequence[str], *, actor: str) -> User | None:
        """Replace the user's roles, audit it and have every replica re-read the user; None if unknown."""
        encoded = encode_names(roles)
        now = time.time()
        async with self._use(write=True) as conn:
            old = list(await conn.execute_fetchall("SELECT roles FROM users WHERE id = ?", (user_id,)))
            if not old:
                return None
            rows = list(await conn.execute_fetchall(_SET_ROLES, (encoded, now, user_id)))
            user = user_from_row(rows[0])
            await insert_audit(conn, now, "user_roles", user.id, f"{user.upstream}:{user.subject}", actor,
                               {"roles": ",".join(user.roles), "previous": ",".join(decode_names(old[0][0]))})
            # Evicts the user's cached sessions everywhere (revokes nothing): the next check reads the new roles.
            await log_revocation(conn, now, Revocation(user_id=user.id))
        return user
