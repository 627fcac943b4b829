"""What only an administrator does, on PostgreSQL: end every session at once, end one session by the short id
people see, set a user's roles (see :class:`gateway.store.administration.Administration`)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import aiopg

from gateway.models import Revocation, User
from gateway.store.administration import check_session_prefix
from gateway.store.pgfeed import log_revocations
from gateway.store.pgpool import PooledStore
from gateway.store.pgsql import ACTIVE, USER_COLUMNS_U, insert_audit
from gateway.store.rows import decode_names, encode_names, user_from_row

_REVOKE_ALL = ("UPDATE sessions SET revoked_at = to_timestamp(%(now)s)"  # noqa: S608
               f" WHERE {ACTIVE} RETURNING user_id")

# Locked: a concurrent revocation of the same session waits, then finds it revoked (and matches nothing).
_MATCH_PREFIX = ("SELECT s.token_hash, s.user_id, u.upstream || ':' || u.subject FROM sessions s"  # noqa: S608
                 f" JOIN users u ON u.id = s.user_id WHERE s.token_hash LIKE %(pattern)s AND {ACTIVE}"
                 " AND (%(user_id)s::bigint IS NULL OR s.user_id = %(user_id)s) ORDER BY s.token_hash"
                 " LIMIT 2 FOR UPDATE OF s")

_SET_ROLES = ("UPDATE users u SET roles = %(roles)s::jsonb, updated_at = to_timestamp(%(now)s)"  # noqa: S608
              f" WHERE u.id = %(user_id)s RETURNING {USER_COLUMNS_U}")


class AdminTables(PooledStore):
    """The :class:`gateway.store.administration.Administration` role on the pool."""

    async def revoke_all_sessions(self, *, actor: str, reason: str) -> int:
        """Revoke every active session, audit it once and log one revocation of everything, in one transaction."""
        now = time.time()

        async def work(cur: aiopg.Cursor) -> int:
            await cur.execute(_REVOKE_ALL, {"now": now})
            rows = await cur.fetchall()
            users = {int(row[0]) for row in rows}
            count = len(rows)
            await insert_audit(cur, now, "revoke_all", None, "", actor,
                               {"reason": reason, "sessions": str(count), "users": str(len(users))})
            # Always, even when no row was active: bearer JWT sessions are cached without a row.
            await log_revocations(cur, [Revocation()], keep=self._retention)
            return count

        return await self._run(work, transaction=True)

    async def revoke_session_by_prefix(self, prefix: str, *, user_id: int | None = None, actor: str,
                                       reason: str) -> list[str]:
        """Revoke the one active session whose hash starts with ``prefix``; return the (at most two) matches."""
        check_session_prefix(prefix)
        now = time.time()

        async def work(cur: aiopg.Cursor) -> list[str]:
            await cur.execute(_MATCH_PREFIX, {"pattern": prefix + "%", "now": now, "user_id": user_id})
            rows = await cur.fetchall()
            if len(rows) != 1:
                return [str(row[0]) for row in rows]
            token_hash, owner, user_key = str(rows[0][0]), int(rows[0][1]), str(rows[0][2])
            await cur.execute("UPDATE sessions SET revoked_at = to_timestamp(%s) WHERE token_hash = %s",
                              (now, token_hash))
            await insert_audit(cur, now, "revoke", owner, user_key, actor,
                               {"reason": reason, "session": token_hash[:12]})
            await log_revocations(cur, [Revocation(token_hash=token_hash)], keep=self._retention)
            return [token_hash]

        return await self._run(work, transaction=True)

    async def set_user_roles(self, user_id: int, roles: Sequence[str], *, actor: str) -> User | None:
        """Replace the user's roles, audit it and have every replica re-read the user; None if unknown."""
        encoded = encode_names(roles)
        now = time.time()

        async def work(cur: aiopg.Cursor) -> User | None:
            await cur.execute("SELECT roles FROM users WHERE id = %s FOR UPDATE", (user_id,))
            old = await cur.fetchone()
            if old is None:
                return None
            await cur.execute(_SET_ROLES, {"roles": encoded, "now": now, "user_id": user_id})
            user = user_from_row(await cur.fetchone())
            previous = ",".join(decode_names(old[0]))
            await insert_audit(cur, now, "user_roles", user.id, f"{user.upstream}:{user.subject}", actor,
                               {"roles": ",".join(user.roles), "previous": previous})
            # Evicts the user's cached sessions everywhere (revokes nothing): the next check reads the new roles.
            await log_revocations(cur, [Revocation(user_id=user.id)], keep=self._retention)
            return user

        return await self._run(work, transaction=True)
