"""Statement text the parts of the PostgreSQL store share: column lists, the active-session test, audit rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import aiopg

from gateway.store.rows import SESSION_FIELDS, USER_FIELDS, encode_detail

TIME_FIELDS = frozenset({"created_at", "updated_at", "last_login_at", "expires_at", "last_seen_at",
                         "idle_expires_at", "revoked_at", "renewed_at", "at", "window_started_at", "locked_until"})
"""Columns stored as timestamptz, which cross the interface as epoch seconds."""


def columns(fields: Sequence[str], prefix: str = "") -> str:
    """A select list in ``fields`` order, times converted from timestamptz to epoch seconds."""
    out = []
    for name in fields:
        column = prefix + name
        out.append(f"extract(epoch from {column})::float8" if name in TIME_FIELDS else column)
    return ", ".join(out)


USER_COLUMNS = columns(USER_FIELDS)
USER_COLUMNS_U = columns(USER_FIELDS, "u.")
SESSION_COLUMNS = columns(SESSION_FIELDS)
SESSION_COLUMNS_S = columns(SESSION_FIELDS, "s.")
ACTIVE = ("revoked_at IS NULL AND expires_at > to_timestamp(%(now)s)"
          " AND (idle_expires_at IS NULL OR idle_expires_at > to_timestamp(%(now)s))")
"""The condition of a session active at the bound ``%(now)s``."""

# Statements assembled from the constant column lists above (never from input: values are bound).
SELECT_USERS = f"SELECT {USER_COLUMNS} FROM users"  # noqa: S608
COUNT_ACTIVE = f"SELECT count(*) FROM sessions WHERE {ACTIVE}"  # noqa: S608
REVOKE_USER_SESSIONS = ("UPDATE sessions SET revoked_at = to_timestamp(%(now)s)"  # noqa: S608
                        f" WHERE user_id = %(user_id)s AND {ACTIVE}")


async def insert_audit(cur: aiopg.Cursor, at: float, event: str, user_id: int | None, user_key: str, actor: str,
                       detail: Mapping[str, str] | None) -> None:
    """Append one audit row in the caller's transaction (or on its own, outside one)."""
    await cur.execute(
        "INSERT INTO audit (at, event, user_id, user_key, actor, detail)"
        " VALUES (to_timestamp(%s), %s, %s, %s, %s, %s::jsonb)",
        (at, event, user_id, user_key, actor, encode_detail(detail)))
