"""Statement text the parts of the SQLite store share: column lists, the active-session test, audit and log rows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import aiosqlite

from gateway.models import Revocation
from gateway.store.rows import SESSION_FIELDS, USER_FIELDS, encode_detail

USER_COLUMNS = ", ".join(USER_FIELDS)
USER_COLUMNS_U = ", ".join("u." + c for c in USER_FIELDS)
SESSION_COLUMNS = ", ".join(SESSION_FIELDS)
SESSION_COLUMNS_S = ", ".join("s." + c for c in SESSION_FIELDS)
ACTIVE = "revoked_at IS NULL AND expires_at > ? AND (idle_expires_at IS NULL OR idle_expires_at > ?)"
"""The condition of a session active at the two bound times (both the same ``now``)."""

# Statements assembled from the constant column lists above (never from input: values are bound).
SELECT_USERS = f"SELECT {USER_COLUMNS} FROM users"  # noqa: S608
COUNT_ACTIVE = f"SELECT count(*) FROM sessions WHERE {ACTIVE}"  # noqa: S608
REVOKE_USER_SESSIONS = (f"UPDATE sessions SET revoked_at = ? WHERE user_id = ? AND {ACTIVE}"  # noqa: S608
                        " RETURNING token_hash")


async def insert_audit(conn: aiosqlite.Connection, at: float, event: str, user_id: int | None, user_key: str,
                       actor: str, detail: Mapping[str, str] | None) -> None:
    """Append one audit row in the caller's transaction."""
    await conn.execute(
        "INSERT INTO audit (at, event, user_id, user_key, actor, detail) VALUES (?, ?, ?, ?, ?, ?)",
        (at, event, user_id, user_key, actor, encode_detail(detail)))


async def audit_user_key(conn: aiosqlite.Connection, user_id: int) -> str:
    """``upstream:subject`` of the user, as audit rows key them; empty when the user is gone."""
    rows = list(await conn.execute_fetchall("SELECT upstream, subject FROM users WHERE id = ?",
                                            (user_id,)))
    return f"{rows[0][0]}:{rows[0][1]}" if rows else ""


async def log_revocation(conn: aiosqlite.Connection, at: float, revocation: Revocation) -> None:
    """Append the revocation to the log watchers poll, in the caller's transaction."""
    await conn.execute("INSERT INTO revocations (token_hash, user_id, at) VALUES (?, ?, ?)",
                       (revocation.token_hash, revocation.user_id, at))


def one(rows: Iterable[Any]) -> Sequence[Any]:
    """The first row of a query that always returns one; RuntimeError when it returned none."""
    for row in rows:
        return tuple(row)
    raise RuntimeError("query returned no row")
