"""One conformance suite for the ``Store`` protocol, run against SQLite and PostgreSQL alike.

Only what every Store must do belongs here; what one backend does its own way is in ``test_postgres.py``
(outages, the LISTEN feed, pooling, secrets) and ``test_postgres_batching.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import sqlite3
import time
from typing import Any

import psycopg2
import pytest

from gateway.errors import NotFound, StoreUnavailable
from gateway.models import LoginAttempt, Revocation
from gateway.settings import DatabaseSettings
from gateway.store import (
    LOGIN_ATTEMPT_LIMITS,
    BlockKey,
    LogoutTokenReused,
    ProviderLogout,
    Store,
    make_store,
    migration_scripts,
)
from gateway.store import postgres as postgres_module
from gateway.store import sqlite as sqlite_module
from gateway.store.factory import sqlite_path
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SQLiteStore
from tests.store.storekit import (
    APPROX,
    VERSIONS,
    StoreFactory,
    eventually,
    make_session,
    make_user,
    token_hash,
    watching,
)

# -- factory ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "cls"), [
    pytest.param("sqlite:///gw.db", SQLiteStore, id="sqlite"),
    pytest.param("postgresql://u@127.0.0.1/db", PostgresStore, id="postgresql"),
    pytest.param("postgres://u@127.0.0.1/db", PostgresStore, id="postgres"),
])
def test_make_store_picks_backend_by_scheme(url: str, cls: type) -> None:
    assert isinstance(make_store(url, DatabaseSettings(), revocation_retention=600.0), cls)


@pytest.mark.parametrize("url", ["mysql://root:hunter2@db/gw", "hunter2", "redis:hunter2@x"],
                         ids=["mysql", "no-scheme", "redis"])
def test_make_store_rejects_other_schemes_without_echoing_the_url(url: str) -> None:
    with pytest.raises(ValueError, match="unsupported scheme") as caught:
        make_store(url, DatabaseSettings(), revocation_retention=600.0)
    assert "hunter2" not in str(caught.value)


# -- migrations -------------------------------------------------------------------------------------


async def test_migrate_is_idempotent(store_factory: StoreFactory) -> None:
    store = await store_factory()
    assert await store.pending_migrations() == VERSIONS
    assert await store.migrate() == VERSIONS
    assert await store.pending_migrations() == []
    assert await store.migrate() == []
    await store.ping()


async def test_concurrent_migrations_apply_each_version_once(store_factory: StoreFactory) -> None:
    stores = [await store_factory() for _ in range(4)]
    results = await asyncio.gather(*(s.migrate() for s in stores))
    assert sorted(v for applied in results for v in applied) == VERSIONS
    assert [await s.pending_migrations() for s in stores] == [[]] * len(stores)


async def test_migrate_keeps_existing_rows(store: Store) -> None:
    user_id = await make_user(store)
    assert await store.migrate() == []
    assert (await store.get_user(user_id)) is not None


def _write_0001_sessions(database_url: str, rows: list[tuple[Any, ...]]) -> None:
    """Insert sessions the way code from before 0002 did: every 0001 column, no ``mfa``.

    Each row is ``(token_hash, user_id, kind, created_at, expires_at, idle_timeout, idle_expires_at,
    client_addr, user_agent)``; ``last_seen_at`` is ``created_at``.
    """
    values = [(h, u, k, c, e, i, c, ie, a, ua) for h, u, k, c, e, i, ie, a, ua in rows]
    if database_url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(sqlite_path(database_url))) as conn, conn:
            conn.executemany("INSERT INTO sessions (token_hash, user_id, kind, created_at, expires_at,"
                             " idle_timeout, last_seen_at, idle_expires_at, client_addr, user_agent)"
                             " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
        return
    with contextlib.closing(psycopg2.connect(database_url)) as conn, conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO sessions (token_hash, user_id, kind, created_at, expires_at,"
                        " idle_timeout, last_seen_at, idle_expires_at, client_addr, user_agent)"
                        " VALUES (%s, %s, %s, to_timestamp(%s), to_timestamp(%s), %s, to_timestamp(%s),"
                        " to_timestamp(%s), %s, %s)", values)


def _revoke_0001_session(database_url: str, token_hash: str, at: float) -> None:
    """Revoke a session the way code from before 0005 did: set ``revoked_at`` (no revocation log yet)."""
    if database_url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(sqlite_path(database_url))) as conn, conn:
            conn.execute("UPDATE sessions SET revoked_at = ? WHERE token_hash = ?", (at, token_hash))
        return
    with contextlib.closing(psycopg2.connect(database_url)) as conn, conn, conn.cursor() as cur:
        cur.execute("UPDATE sessions SET revoked_at = to_timestamp(%s) WHERE token_hash = %s", (at, token_hash))


async def test_migrating_a_0001_database_with_rows_to_0002_keeps_them(
        store_factory: StoreFactory, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # a gateway from before 0002: it only knows the first migration
    for module in (sqlite_module, postgres_module):
        monkeypatch.setattr(module, "migration_scripts", lambda dialect: migration_scripts(dialect)[:1])
    old = await store_factory()
    assert await old.migrate() == ["0001_initial"]
    alice = await old.upsert_user("oidc", "alice", email="alice@example.com", groups=["eng"],
                                  login_at=1_700_000_000.0)
    bob = await old.upsert_user("oidc", "bob", email="bob@example.com")
    now = 1_700_000_000.5
    live, api, doomed = token_hash("live"), token_hash("api"), token_hash("doomed")
    await asyncio.to_thread(_write_0001_sessions, database_url, [
        (live, alice.id, "browser", now, now + 3600, 600.0, now + 600, "203.0.113.9", "old-agent"),
        (api, alice.id, "api", now, now + 86400, 0.0, None, "", ""),
        (doomed, bob.id, "browser", now, now + 3600, 600.0, now + 600, "", ""),
    ])
    await asyncio.to_thread(_revoke_0001_session, database_url, doomed, now + 1)
    await old.record_audit("login", user_id=alice.id, user_key="oidc:alice", actor="alice",
                           detail={"ip": "203.0.113.9"})
    audit_before = await old.list_audit()
    await old.close()

    monkeypatch.undo()  # the new gateway knows every migration
    new = await store_factory()
    assert await new.pending_migrations() == VERSIONS[1:]
    assert await new.migrate() == VERSIONS[1:]
    assert await new.pending_migrations() == []

    assert await new.list_users() == [alice, bob]
    assert await new.list_audit() == audit_before
    found = await new.lookup_session(live)
    assert found is not None and found.user == alice
    session = found.session
    assert (session.kind, session.user_id, session.client_addr, session.user_agent, session.mfa) == (
        "browser", alice.id, "203.0.113.9", "old-agent", False)
    assert session.created_at == pytest.approx(now, abs=APPROX)
    assert session.expires_at == pytest.approx(now + 3600, abs=APPROX)
    assert session.idle_expires_at == pytest.approx(now + 600, abs=APPROX)
    assert session.is_active(now + 1)
    everything = await new.list_sessions(alice.id, include_inactive=True, now=now + 1)
    assert sorted(s.token_hash for s in everything) == sorted([live, api])
    assert not any(s.mfa for s in everything)
    revoked = await new.lookup_session(doomed)
    assert revoked is not None and revoked.session.revoked_at is not None and not revoked.session.mfa

    # and the new tables work on the upgraded database
    await new.create_login_attempt(**attempt_args("upgraded", now=now))
    assert await new.consume_login_attempt(token_hash("attempt:upgraded"), now=now + 1) is not None
    assert await new.record_login_failure("198.51.100.7", now=now, window=60, threshold=1,
                                          lock_for=30) == pytest.approx(now + 30, abs=APPROX)
    assert (await new.block_subject(BlockKey.for_identity("oidc", "bob"), actor="admin")).created
    assert await new.is_blocked("oidc", "bob")
    await new.remember_device(token_hash("device:upgraded"), user_id=alice.id, now=now, expires_at=now + 60)
    assert await new.find_device(token_hash("device:upgraded"), now=now) is not None


# -- users ------------------------------------------------------------------------------------------


async def test_upsert_creates_then_refreshes_keeping_id_and_created_at(store: Store) -> None:
    first = await store.upsert_user("oidc", "alice", email=" Alice@Example.com ", name="Alice",
                                    username="alice", groups=["eng", "ops", "eng"], roles=["admin"],
                                    login_at=1_700_000_000.25)
    assert first.email == "Alice@Example.com"
    assert first.groups == ("eng", "ops")
    assert first.roles == ("admin",)
    assert first.last_login_at == pytest.approx(1_700_000_000.25, abs=APPROX)
    assert first.updated_at == pytest.approx(first.created_at, abs=APPROX)
    assert await store.get_user(first.id) == first

    again = await store.upsert_user("oidc", "alice", email="alice@new.example", name="Alice B",
                                    groups=["ops"])
    assert again.id == first.id
    assert again.created_at == pytest.approx(first.created_at, abs=APPROX)
    assert again.updated_at >= first.updated_at
    assert (again.email, again.name, again.username) == ("alice@new.example", "Alice B", "")
    assert (again.groups, again.roles) == (("ops",), ())
    assert again.last_login_at == pytest.approx(1_700_000_000.25, abs=APPROX)  # no login_at: kept

    other = await store.upsert_user("github", "alice", email="alice@example.com")
    assert other.id != first.id
    assert [u.id for u in await store.list_users()] == [first.id, other.id]
    assert await store.get_user(other.id + 1000) is None


async def test_concurrent_first_logins_give_one_row(store: Store, store_factory: StoreFactory) -> None:
    # separate stores, so the upserts really race on separate connections
    stores = [await store_factory(**{"database.pool_max": 2}) for _ in range(20)]
    users = await asyncio.gather(*(s.upsert_user("oidc", "racer", email="racer@example.com",
                                                 login_at=float(i)) for i, s in enumerate(stores)))
    assert len({u.id for u in users}) == 1
    assert len({u.created_at for u in users}) == 1
    assert [u.subject for u in await store.list_users()] == ["racer"]


async def test_find_users_by_email_ignores_case_and_space(store: Store) -> None:
    a = await make_user(store, "a", email="Alice@Example.com")
    b = await store.upsert_user("github", "a", email="alice@example.com")
    await make_user(store, "c", email="attacker@evil.com@example.com")
    await make_user(store, "d", email="")
    found = await store.find_users_by_email("  ALICE@example.COM\t")
    assert [u.id for u in found] == [a, b.id]
    assert await store.find_users_by_email("example.com") == []
    assert await store.find_users_by_email("") == []
    assert await store.find_users_by_email("   ") == []


async def test_get_user_by_key(store: Store) -> None:
    alice = await store.upsert_user("oidc", "alice", email="alice@example.com")
    await store.upsert_user("github", "alice", email="other@example.com")
    assert await store.get_user_by_key("oidc", "alice") == alice
    assert await store.get_user_by_key("oidc", "ALICE") is None
    assert await store.get_user_by_key("dev", "alice") is None


async def test_upsert_rejects_a_bare_string_for_groups(store: Store) -> None:
    with pytest.raises(TypeError):
        await store.upsert_user("oidc", "x", email="x@example.com", groups="admins")


# -- sessions ---------------------------------------------------------------------------------------


async def test_create_and_lookup_round_trip(store: Store) -> None:
    user = await store.upsert_user("oidc", "alice", email="alice@example.com", groups=["eng"])
    now = 1_700_000_000.5
    h = token_hash("browser")
    created = await store.create_session(token_hash=h, user_id=user.id, kind="browser", now=now,
                                         expires_at=now + 3600, idle_timeout=600,
                                         client_addr="203.0.113.9", user_agent="x" * 600)
    assert created.token_hash == h
    assert created.user_id == user.id
    assert created.kind == "browser"
    assert created.created_at == pytest.approx(now, abs=APPROX)
    assert created.last_seen_at == pytest.approx(now, abs=APPROX)
    assert created.expires_at == pytest.approx(now + 3600, abs=APPROX)
    assert created.idle_timeout == 600
    assert created.idle_expires_at == pytest.approx(now + 600, abs=APPROX)
    assert created.revoked_at is None
    assert created.client_addr == "203.0.113.9"
    assert created.user_agent == "x" * 512

    found = await store.lookup_session(h)
    assert found is not None
    assert found.session == created
    assert found.user == user
    assert found.session.is_active(now + 1)

    api = await store.create_session(token_hash=token_hash("api"), user_id=user.id, kind="api", now=now,
                                     expires_at=now + 86400, idle_timeout=0)
    assert (api.kind, api.idle_timeout, api.idle_expires_at) == ("api", 0, None)
    assert api.is_active(now + 3600)


async def test_lookup_returns_awkward_text_and_times_exactly(store: Store) -> None:
    awkward = 'Zoë "Q" \\ O\'Brien\t\n\u2028 \U0001f600 </script> {a,b} null'
    user = await store.upsert_user("oidc", awkward, email=f"{awkward}@example.com", name=awkward,
                                   username=awkward, groups=[awkward, "", "1"], roles=["null", awkward])
    now = 1_712_345_678.123456
    h = token_hash("awkward")
    created = await store.create_session(token_hash=h, user_id=user.id, kind="browser", now=now,
                                         expires_at=now + 0.5, idle_timeout=1e-6, user_agent=awkward)
    found = await store.lookup_session(h)
    assert found is not None
    assert (found.user, found.session) == (user, created)
    assert found.user.groups == (awkward, "", "1")
    assert found.user.roles == ("null", awkward)
    assert found.session.user_agent == awkward


async def test_lookup_unknown_or_malformed_hash_is_none(store: Store) -> None:
    assert await store.lookup_session(token_hash("nobody")) is None
    assert await store.lookup_session("not-a-hash") is None
    assert await store.lookup_session(token_hash("x").upper()) is None


@pytest.mark.parametrize("change", [
    pytest.param({"token_hash": "abc"}, id="short-hash"),
    pytest.param({"token_hash": token_hash("x").upper()}, id="upper-case-hash"),
    pytest.param({"kind": "robot"}, id="bad-kind"),
    pytest.param({"idle_timeout": -1}, id="negative-idle"),
])
async def test_create_session_rejects_bad_values(store: Store, change: dict[str, Any]) -> None:
    user_id = await make_user(store)
    args: dict[str, Any] = {"token_hash": token_hash("s"), "user_id": user_id, "kind": "browser",
                            "now": 1.0, "expires_at": 100.0, "idle_timeout": 10.0, **change}
    with pytest.raises(ValueError):
        await store.create_session(**args)


async def test_create_session_for_unknown_user_or_duplicate_hash(store: Store) -> None:
    with pytest.raises(NotFound):
        await make_session(store, 424242, "orphan")
    user_id = await make_user(store)
    await make_session(store, user_id, "dup")
    with pytest.raises(ValueError):
        await make_session(store, user_id, "dup")


async def test_touch_moves_last_seen_and_idle_deadline_forward_only(store: Store) -> None:
    user_id = await make_user(store)
    now = 1_700_000_000.0
    h = await make_session(store, user_id, "s", now=now, lifetime=86400, idle_timeout=600)

    await store.touch_sessions({h: (now + 100, now + 100)})
    found = await store.lookup_session(h)
    assert found is not None
    assert found.session.last_seen_at == pytest.approx(now + 100, abs=APPROX)
    assert found.session.idle_expires_at == pytest.approx(now + 700, abs=APPROX)

    await store.touch_sessions({h: (now + 50, now + 50)})  # late writer from another replica
    found = await store.lookup_session(h)
    assert found is not None
    assert found.session.last_seen_at == pytest.approx(now + 100, abs=APPROX)
    assert found.session.idle_expires_at == pytest.approx(now + 700, abs=APPROX)

    await store.touch_sessions({h: (now + 5000, now + 5000)})  # idle deadline passed: stays dead
    found = await store.lookup_session(h)
    assert found is not None
    assert found.session.idle_expires_at == pytest.approx(now + 700, abs=APPROX)
    assert not found.session.is_active(now + 5000)

    api = await make_session(store, user_id, "api", now=now, idle_timeout=0, kind="api")
    await store.touch_sessions({api: (now + 30, now + 30)})
    found = await store.lookup_session(api)
    assert found is not None
    assert found.session.last_seen_at == pytest.approx(now + 30, abs=APPROX)
    assert found.session.idle_expires_at is None

    await store.touch_sessions({token_hash("unknown"): (now, now)})  # no error


async def test_touch_never_resurrects_a_revoked_session(store: Store) -> None:
    user_id = await make_user(store)
    now = time.time()
    h = await make_session(store, user_id, "s", now=now)
    assert await store.revoke_session(h, actor="test", reason="logout")
    await store.touch_sessions({h: (now + 10, now + 10)})
    found = await store.lookup_session(h)
    assert found is not None
    assert found.session.revoked_at is not None
    assert found.session.last_seen_at == pytest.approx(now, abs=APPROX)
    assert not found.session.is_active(now + 10)


async def test_revoke_session_once(store: Store) -> None:
    user_id = await make_user(store)
    h = await make_session(store, user_id, "s")
    assert await store.revoke_session(h, actor="alice", reason="logout") is True
    found = await store.lookup_session(h)
    assert found is not None and found.session.revoked_at is not None
    first_revoked_at = found.session.revoked_at
    assert await store.revoke_session(h, actor="alice", reason="logout") is False
    found = await store.lookup_session(h)
    assert found is not None and found.session.revoked_at == first_revoked_at
    assert await store.revoke_session(token_hash("unknown"), actor="alice", reason="logout") is False

    events = await store.list_audit(user_id=user_id)
    assert [(e.event, e.actor, e.user_key, e.detail["reason"]) for e in events] == [
        ("revoke", "alice", "oidc:alice", "logout")]


async def test_revoke_user_sessions_counts_active_ones(store: Store) -> None:
    user_id = await make_user(store)
    bystander = await make_user(store, "bob")
    now = time.time()
    await make_session(store, user_id, "a1", now=now)
    await make_session(store, user_id, "a2", now=now, kind="api", idle_timeout=0)
    await make_session(store, user_id, "expired", now=now - 7200, lifetime=3600)
    revoked = await make_session(store, user_id, "revoked", now=now)
    await store.revoke_session(revoked, actor="t", reason="r")
    bob = await make_session(store, bystander, "bob", now=now)

    assert await store.revoke_user_sessions(user_id, actor="admin", reason="offboarded") == 2
    assert await store.list_sessions(user_id) == []
    assert await store.revoke_user_sessions(user_id, actor="admin", reason="again") == 0
    found = await store.lookup_session(bob)
    assert found is not None and found.session.revoked_at is None

    latest = (await store.list_audit(user_id=user_id))[1]
    assert (latest.event, latest.actor, latest.detail) == ("revoke", "admin",
                                                           {"reason": "offboarded", "sessions": "2"})


async def test_delete_user_removes_user_and_sessions_keeps_audit(store: Store) -> None:
    user_id = await make_user(store)
    other = await make_user(store, "bob")
    h = await make_session(store, user_id, "s")
    await store.record_audit("login", user_id=user_id, user_key="oidc:alice", actor="alice")

    assert await store.delete_user(user_id, actor="admin") is True
    assert await store.get_user(user_id) is None
    assert await store.lookup_session(h) is None
    assert await store.list_sessions(user_id, include_inactive=True) == []
    assert [u.id for u in await store.list_users()] == [other]
    assert await store.delete_user(user_id, actor="admin") is False

    events = await store.list_audit(user_id=user_id)
    assert [e.event for e in events] == ["user_delete", "revoke", "login"]
    assert all(e.user_key == "oidc:alice" for e in events)
    assert events[0].actor == "admin"

    # a new user never inherits the deleted user's id (and so its audit trail)
    assert await make_user(store, "carol") not in {user_id, other}


async def test_list_sessions_filters_and_orders_newest_first(store: Store) -> None:
    user_id = await make_user(store)
    now = 1_700_000_000.0
    old = await make_session(store, user_id, "old", now=now - 100)
    new = await make_session(store, user_id, "new", now=now)
    expired = await make_session(store, user_id, "expired", now=now - 5000, lifetime=1000, idle_timeout=0)
    idle = await make_session(store, user_id, "idle", now=now - 700, lifetime=86400, idle_timeout=600)
    revoked = await make_session(store, user_id, "revoked", now=now - 10)
    await store.revoke_session(revoked, actor="t", reason="r")

    active = await store.list_sessions(user_id, now=now + 1)
    assert [s.token_hash for s in active] == [new, old]
    everything = await store.list_sessions(user_id, include_inactive=True, now=now + 1)
    assert [s.token_hash for s in everything] == [new, revoked, old, idle, expired]
    assert [s.token_hash for s in await store.list_sessions(user_id, now=now - 150)] == [new, old, idle]
    assert await store.list_sessions(user_id + 1000) == []


async def test_count_active_sessions_ignores_expired_revoked_and_idle(store: Store) -> None:
    user_id = await make_user(store)
    now = 1_700_000_000.0
    await make_session(store, user_id, "live", now=now)
    await make_session(store, user_id, "api", now=now, lifetime=86400, idle_timeout=0, kind="api")
    await make_session(store, user_id, "expired", now=now - 5000, lifetime=1000)
    await make_session(store, user_id, "idle", now=now - 700, lifetime=86400, idle_timeout=600)
    revoked = await make_session(store, user_id, "revoked", now=now)
    await store.revoke_session(revoked, actor="t", reason="r")
    assert await store.count_active_sessions(now + 1) == 2
    assert await store.count_active_sessions(now + 4000) == 1  # only the api token outlives an hour
    assert await store.count_active_sessions(now - 650) == 3   # "idle" had not gone idle yet


async def test_sessions_remember_whether_the_login_used_a_second_factor(store: Store) -> None:
    user_id = await make_user(store)
    now = 1_700_000_000.0
    strong = await store.create_session(token_hash=token_hash("mfa"), user_id=user_id, kind="browser",
                                        now=now, expires_at=now + 3600, idle_timeout=600, mfa=True)
    weak = await make_session(store, user_id, "plain", now=now - 1)  # mfa not given: False
    assert strong.mfa is True

    found = await store.lookup_session(strong.token_hash)
    assert found is not None and found.session == strong and found.session.mfa is True
    found = await store.lookup_session(weak)
    assert found is not None and found.session.mfa is False
    listed = await store.list_sessions(user_id, now=now + 1)
    assert [(s.token_hash, s.mfa) for s in listed] == [(strong.token_hash, True), (weak, False)]

    # revoking and touching keep the flag
    await store.touch_sessions({strong.token_hash: (now + 10, now + 10)})
    await store.revoke_session(strong.token_hash, actor="t", reason="r")
    found = await store.lookup_session(strong.token_hash)
    assert found is not None and found.session.mfa is True


# -- login attempts ---------------------------------------------------------------------------------


def attempt_args(label: str, *, now: float = 1_700_000_000.0, ttl: float = 600, **change: Any
                 ) -> dict[str, Any]:
    """Keyword arguments of ``create_login_attempt`` for a distinct attempt per label."""
    args: dict[str, Any] = {
        "attempt_hash": token_hash("attempt:" + label), "upstream": "oidc", "state": "state-" + label,
        "nonce": "nonce-" + label, "code_verifier": "v" * 64, "return_to": "https://app.example.com/x?y=1",
        "client_addr": "203.0.113.9", "now": now, "expires_at": now + ttl,
    }
    args.update(change)
    return args


async def test_login_attempt_round_trip_is_single_use(store: Store) -> None:
    now = 1_700_000_000.25
    args = attempt_args("a", now=now, return_to="https://app.example.com/" + "é" * 2000,
                        upstream="github", code_verifier="x" * 128, client_addr="2001:db8::1")
    await store.create_login_attempt(**args)
    await store.create_login_attempt(**attempt_args("b", now=now))

    got = await store.consume_login_attempt(args["attempt_hash"], now=now + 599)
    assert isinstance(got, LoginAttempt)
    assert dataclasses.replace(got, created_at=now, expires_at=now + 600) == LoginAttempt(
        attempt_hash=args["attempt_hash"], upstream="github", state="state-a", nonce="nonce-a",
        code_verifier="x" * 128, return_to=args["return_to"], client_addr="2001:db8::1",
        created_at=now, expires_at=now + 600)
    assert got.created_at == pytest.approx(now, abs=APPROX)
    assert got.expires_at == pytest.approx(now + 600, abs=APPROX)

    assert await store.consume_login_attempt(args["attempt_hash"], now=now + 1) is None  # used up
    other = await store.consume_login_attempt(token_hash("attempt:b"), now=now + 1)  # untouched
    assert other is not None and other.state == "state-b"


async def test_consume_unknown_malformed_or_expired_attempt_is_none(store: Store) -> None:
    now = 1_700_000_000.0
    assert await store.consume_login_attempt(token_hash("attempt:nobody"), now=now) is None
    assert await store.consume_login_attempt("not-a-hash", now=now) is None
    assert await store.consume_login_attempt(token_hash("attempt:nobody").upper(), now=now) is None

    await store.create_login_attempt(**attempt_args("late", now=now, ttl=300))
    assert await store.consume_login_attempt(token_hash("attempt:late"), now=now + 300) is None  # at expiry
    # the expired attempt was deleted, not just refused: it is gone even for an earlier clock
    assert await store.consume_login_attempt(token_hash("attempt:late"), now=now + 1) is None


async def test_creating_an_attempt_prunes_expired_ones(store: Store) -> None:
    now = 1_700_000_000.0
    await store.create_login_attempt(**attempt_args("old1", now=now - 1000, ttl=300))
    await store.create_login_attempt(**attempt_args("old2", now=now - 400, ttl=300))
    await store.create_login_attempt(**attempt_args("fresh", now=now - 100, ttl=300))
    await store.create_login_attempt(**attempt_args("new", now=now))
    # consumed with an old clock, at which they would still be valid: gone only if pruned
    assert await store.consume_login_attempt(token_hash("attempt:old1"), now=now - 999) is None
    assert await store.consume_login_attempt(token_hash("attempt:old2"), now=now - 399) is None
    assert await store.consume_login_attempt(token_hash("attempt:fresh"), now=now) is not None
    assert await store.consume_login_attempt(token_hash("attempt:new"), now=now) is not None


@pytest.mark.parametrize("change", [
    pytest.param({"attempt_hash": "abc"}, id="short-hash"),
    pytest.param({"attempt_hash": token_hash("x").upper()}, id="upper-case-hash"),
    pytest.param({"attempt_hash": "g" * 64}, id="non-hex-hash"),
    pytest.param({"return_to": "https://a.example/" + "x" * 2031}, id="return-to-2049"),
    pytest.param({"upstream": "u" * (LOGIN_ATTEMPT_LIMITS["upstream"] + 1)}, id="long-upstream"),
    pytest.param({"state": "s" * (LOGIN_ATTEMPT_LIMITS["state"] + 1)}, id="long-state"),
    pytest.param({"nonce": "n" * (LOGIN_ATTEMPT_LIMITS["nonce"] + 1)}, id="long-nonce"),
    pytest.param({"code_verifier": "v" * (LOGIN_ATTEMPT_LIMITS["code_verifier"] + 1)}, id="long-verifier"),
    pytest.param({"client_addr": "a" * (LOGIN_ATTEMPT_LIMITS["client_addr"] + 1)}, id="long-addr"),
    pytest.param({"state": "a\x00b"}, id="nul"),
    pytest.param({"expires_at": math.nan}, id="nan-expiry"),
    pytest.param({"now": math.inf}, id="infinite-now"),
])
async def test_create_login_attempt_rejects_bad_values(store: Store, change: dict[str, Any]) -> None:
    args = attempt_args("bad", **change)
    with pytest.raises(ValueError):
        await store.create_login_attempt(**args)
    if args["attempt_hash"] == token_hash("attempt:bad"):  # nothing half-stored
        assert await store.consume_login_attempt(args["attempt_hash"], now=args["now"]) is None


async def test_create_login_attempt_accepts_values_at_their_limits(store: Store) -> None:
    limits: dict[str, Any] = {name: "x" * size for name, size in LOGIN_ATTEMPT_LIMITS.items()}
    await store.create_login_attempt(**attempt_args("max", **limits))
    got = await store.consume_login_attempt(token_hash("attempt:max"), now=1_700_000_000.0)
    assert got is not None
    assert {name: getattr(got, name) for name in LOGIN_ATTEMPT_LIMITS} == limits


async def test_create_login_attempt_rejects_a_hash_in_use(store: Store) -> None:
    await store.create_login_attempt(**attempt_args("dup"))
    with pytest.raises(ValueError):
        await store.create_login_attempt(**attempt_args("dup", state="other"))
    got = await store.consume_login_attempt(token_hash("attempt:dup"), now=1_700_000_000.0)
    assert got is not None and got.state == "state-dup"


async def test_concurrent_consumes_of_one_attempt_give_it_once(store: Store, store_factory: StoreFactory
                                                               ) -> None:
    # two stores, so on PostgreSQL the DELETEs really race on separate connections
    first, second = await store_factory(), await store_factory()
    now = time.time()
    labels = [f"race{i}" for i in range(20)]
    for label in labels:
        await store.create_login_attempt(**attempt_args(label, now=now))
    for label in labels:
        h = token_hash("attempt:" + label)
        results = await asyncio.gather(first.consume_login_attempt(h, now=now + 1),
                                       second.consume_login_attempt(h, now=now + 1))
        winners = [r for r in results if r is not None]
        assert len(winners) == 1, (label, results)
        assert winners[0].state == "state-" + label


# -- login failures ---------------------------------------------------------------------------------


async def test_failures_lock_an_address_at_the_threshold(store: Store) -> None:
    now = 1_700_000_000.0
    addr = "203.0.113.9"

    async def fail(at: float, threshold: int = 3) -> float | None:
        return await store.record_login_failure(addr, now=at, window=60, threshold=threshold, lock_for=300)

    assert await store.locked_until(addr, now=now) is None
    assert await fail(now) is None
    assert await fail(now + 10) is None
    assert await store.locked_until(addr, now=now + 10) is None
    assert await fail(now + 20) == pytest.approx(now + 320, abs=APPROX)
    assert await store.locked_until(addr, now=now + 21) == pytest.approx(now + 320, abs=APPROX)
    assert await store.locked_until(addr, now=now + 319) == pytest.approx(now + 320, abs=APPROX)
    assert await store.locked_until(addr, now=now + 320) is None  # the lock has ended
    assert await store.locked_until("203.0.113.10", now=now + 21) is None  # per address

    # a further failure in the same window keeps the address locked, and never shortens the lock
    assert await fail(now + 30) == pytest.approx(now + 330, abs=APPROX)
    assert await store.record_login_failure(addr, now=now + 40, window=60, threshold=3,
                                            lock_for=1) == pytest.approx(now + 330, abs=APPROX)

    await store.clear_login_failures(addr)
    assert await store.locked_until(addr, now=now + 41) is None
    assert await fail(now + 41) is None  # counting starts again
    await store.clear_login_failures(addr)
    await store.clear_login_failures("198.51.100.1")  # nothing to clear: no error


async def test_failures_outside_the_window_restart_the_count(store: Store) -> None:
    now = 1_700_000_000.0
    addr = "2001:db8::7"

    async def fail(at: float) -> float | None:
        return await store.record_login_failure(addr, now=at, window=60, threshold=3, lock_for=300)

    assert await fail(now) is None
    assert await fail(now + 50) is None
    assert await fail(now + 60) == pytest.approx(now + 360, abs=APPROX)  # 60 s after: same window
    await store.clear_login_failures(addr)

    assert await fail(now + 100) is None
    assert await fail(now + 150) is None
    assert await fail(now + 161) is None  # more than 60 s after the window began: a new one, count 1
    assert await fail(now + 170) is None
    assert await fail(now + 180) == pytest.approx(now + 480, abs=APPROX)
    assert await store.locked_until(addr, now=now + 181) == pytest.approx(now + 480, abs=APPROX)


async def test_stale_failure_counters_are_pruned_without_changing_anything(store: Store) -> None:
    now = 1_700_000_000.0
    for i in range(5):
        await store.record_login_failure(f"192.0.2.{i}", now=now - 1000, window=60, threshold=1,
                                         lock_for=10)
    await store.record_login_failure("192.0.2.99", now=now - 1000, window=60, threshold=1, lock_for=5000)
    await store.record_login_failure("192.0.2.50", now=now, window=60, threshold=2, lock_for=300)
    # pruned or not, what the counters say is the same
    assert await store.locked_until("192.0.2.0", now=now) is None
    assert await store.locked_until("192.0.2.99", now=now) == pytest.approx(now + 4000, abs=APPROX)
    assert await store.record_login_failure("192.0.2.0", now=now, window=60, threshold=2,
                                            lock_for=300) is None
    assert await store.record_login_failure("192.0.2.50", now=now + 1, window=60, threshold=2,
                                            lock_for=300) == pytest.approx(now + 301, abs=APPROX)


async def test_concurrent_failures_count_exactly(store: Store, store_factory: StoreFactory) -> None:
    # separate stores, so the upserts really race on separate connections (or processes' worth of them)
    stores = [await store_factory(**{"database.pool_max": 2}) for _ in range(10)]
    now = time.time()
    addr = "203.0.113.66"
    results = await asyncio.gather(*(s.record_login_failure(addr, now=now, window=60, threshold=5,
                                                            lock_for=300) for s in stores))
    # failures 1-4 lock nothing; the 5th locks the address and 6-10 find it locked: no update is lost
    assert sum(r is None for r in results) == 4, results
    assert all(r == pytest.approx(now + 300, abs=APPROX) for r in results if r is not None)
    assert await store.locked_until(addr, now=now + 1) == pytest.approx(now + 300, abs=APPROX)

    # and with the threshold above what was counted, nothing locks until the count really reaches it
    other = "203.0.113.67"
    results = await asyncio.gather(*(s.record_login_failure(other, now=now, window=60, threshold=11,
                                                            lock_for=300) for s in stores))
    assert results == [None] * 10
    assert await store.locked_until(other, now=now + 1) is None
    assert await store.record_login_failure(other, now=now, window=60, threshold=11,
                                            lock_for=300) == pytest.approx(now + 300, abs=APPROX)


@pytest.mark.parametrize("change", [
    pytest.param({"client_addr": ""}, id="empty-addr"),
    pytest.param({"client_addr": "a" * 257}, id="long-addr"),
    pytest.param({"client_addr": "a\x00"}, id="nul-addr"),
    pytest.param({"threshold": 0}, id="zero-threshold"),
    pytest.param({"window": -1}, id="negative-window"),
    pytest.param({"lock_for": 0}, id="zero-lock"),
    pytest.param({"now": math.nan}, id="nan-now"),
])
async def test_record_login_failure_rejects_bad_arguments(store: Store, change: dict[str, Any]) -> None:
    args: dict[str, Any] = {"client_addr": "203.0.113.9", "now": 1_700_000_000.0, "window": 60,
                            "threshold": 1, "lock_for": 300, **change}
    addr = args.pop("client_addr")
    with pytest.raises(ValueError):
        await store.record_login_failure(addr, **args)
    assert await store.locked_until("203.0.113.9", now=1_700_000_000.0) is None
    assert await store.locked_until(addr, now=1_700_000_000.0) is None


# -- blocks -----------------------------------------------------------------------------------------


async def test_blocking_an_identity_revokes_its_sessions_and_sticks(store: Store) -> None:
    alice = await make_user(store)
    bob = await make_user(store, "bob")
    now = time.time()
    browser = await make_session(store, alice, "browser", now=now)
    api = await make_session(store, alice, "api", now=now, kind="api", idle_timeout=0)
    bystander = await make_session(store, bob, "bob", now=now)
    key = BlockKey.for_identity("oidc", "alice")
    assert not await store.is_blocked("oidc", "alice")

    outcome = await store.block_subject(key, actor="admin", reason="left the company")
    assert (outcome.created, outcome.sessions_revoked) == (True, 2)
    assert await store.is_blocked("oidc", "alice")
    assert await store.is_blocked("oidc", "alice", emails=["someone@else.example"])
    for other in (("oidc", "ALICE"), ("github", "alice"), ("oidc", "bob"), ("", "")):
        assert not await store.is_blocked(*other), other
    for h in (browser, api):
        found = await store.lookup_session(h)
        assert found is not None and found.session.revoked_at is not None
    found = await store.lookup_session(bystander)
    assert found is not None and found.session.revoked_at is None
    assert await store.get_user(alice) is not None  # blocked, not deleted

    events = await store.list_audit(user_id=alice)
    assert [(e.event, e.actor, e.user_key) for e in events[:2]] == [("user_block", "admin", "oidc:alice"),
                                                                   ("revoke", "admin", "oidc:alice")]
    assert events[0].detail == {"reason": "left the company", "sessions": "2"}
    assert events[1].detail == {"reason": "user_block", "sessions": "2"}

    # blocking again keeps the block as it was
    again = await store.block_subject(key, actor="other", reason="again")
    assert (again.created, again.sessions_revoked) == (False, 0)
    (block,) = await store.list_blocked_subjects()
    assert (block.key, block.actor, block.reason) == (key, "admin", "left the company")
    assert now - 5 <= block.created_at <= time.time() + 5
    assert len(await store.list_audit(user_id=alice)) == len(events)


async def test_an_identity_that_never_signed_in_can_be_blocked(store: Store) -> None:
    outcome = await store.block_subject(BlockKey.for_identity("github", "583231"), actor="admin")
    assert (outcome.created, outcome.sessions_revoked) == (True, 0)
    assert await store.is_blocked("github", "583231")
    (event,) = await store.list_audit()
    assert (event.event, event.user_id, event.user_key) == ("user_block", None, "github:583231")


async def test_an_email_block_matches_every_identity_with_that_email(store: Store) -> None:
    a = await make_user(store, "a", email="Carol@Example.com")
    b = (await store.upsert_user("github", "7", email=" carol@example.com")).id
    c = await make_user(store, "c", email="carol@example.com.evil.test")
    now = time.time()
    sessions = {user: await make_session(store, user, f"s{user}", now=now) for user in (a, b, c)}

    key = BlockKey.for_email("  CAROL@example.COM ")
    assert key.email == "carol@example.com" and str(key) == "carol@example.com"
    outcome = await store.block_subject(key, actor="admin")
    assert (outcome.created, outcome.sessions_revoked) == (True, 2)
    for user, revoked in ((a, True), (b, True), (c, False)):
        found = await store.lookup_session(sessions[user])
        assert found is not None and (found.session.revoked_at is not None) is revoked, user

    assert await store.is_blocked("dev", "anyone", emails=["Carol@Example.com "])
    assert await store.is_blocked("dev", "anyone", emails=["", "x@example.com", "carol@EXAMPLE.com"])
    assert not await store.is_blocked("dev", "anyone", emails=["carol@example.com.evil.test", ""])
    assert not await store.is_blocked("oidc", "a")  # the email blocks by email, not the identities' keys
    audit = [e for e in await store.list_audit() if e.event == "user_block"]
    assert [(e.user_id, e.user_key, e.detail) for e in audit] == [
        (None, "", {"email": "carol@example.com", "reason": "", "sessions": "2"})]


async def test_unblock_lifts_a_block_once(store: Store) -> None:
    alice = await make_user(store)
    key, email = BlockKey.for_identity("oidc", "alice"), BlockKey.for_email("x@example.com")
    await store.block_subject(key, actor="admin")
    await store.block_subject(email, actor="admin")
    assert [b.key for b in await store.list_blocked_subjects()] == [key, email]

    assert await store.unblock_subject(key, actor="admin") is True
    assert not await store.is_blocked("oidc", "alice")
    assert await store.is_blocked("oidc", "alice", emails=["X@example.com"])  # the email block stays
    assert await store.unblock_subject(key, actor="admin") is False
    assert await store.unblock_subject(email, actor="admin") is True
    assert await store.list_blocked_subjects() == []

    events = await store.list_audit()
    assert [(e.event, e.user_id, e.user_key) for e in events[:2]] == [("user_unblock", None, ""),
                                                                       ("user_unblock", alice, "oidc:alice")]
    assert events[0].detail == {"email": "x@example.com"}


async def test_delete_user_can_block_the_identity_in_the_same_step(store: Store) -> None:
    user_id = await make_user(store)
    h = await make_session(store, user_id, "s")
    assert await store.delete_user(user_id, actor="admin", block=True, reason="offboarded") is True
    assert await store.get_user(user_id) is None
    assert await store.lookup_session(h) is None
    assert await store.is_blocked("oidc", "alice")
    (block,) = await store.list_blocked_subjects()
    assert (block.key, block.actor, block.reason) == (BlockKey.for_identity("oidc", "alice"), "admin",
                                                       "offboarded")
    events = await store.list_audit(user_id=user_id)
    assert [e.event for e in events] == ["user_block", "user_delete", "revoke"]
    assert events[1].detail == {"sessions": "1", "blocked": "true"}

    # without block the identity may come back
    bob = await make_user(store, "bob")
    assert await store.delete_user(bob, actor="admin") is True
    assert not await store.is_blocked("oidc", "bob")


@pytest.mark.parametrize("key", [
    pytest.param(BlockKey(), id="empty"),
    pytest.param(BlockKey(upstream="oidc"), id="no-subject"),
    pytest.param(BlockKey(subject="alice"), id="no-upstream"),
    pytest.param(BlockKey("oidc", "alice", "alice@example.com"), id="both-forms"),
    pytest.param(BlockKey(email="Alice@Example.com"), id="email-not-normalised"),
    pytest.param(BlockKey("oidc", "a" * 1025), id="long-subject"),
    pytest.param(BlockKey("o" * 257, "alice"), id="long-upstream"),
    pytest.param(BlockKey(email="a" * 511 + "@x"), id="long-email"),
    pytest.param(BlockKey("oidc", "a\x00"), id="nul"),
])
async def test_malformed_blocks_are_refused(store: Store, key: BlockKey) -> None:
    with pytest.raises(ValueError):
        await store.block_subject(key, actor="admin")
    with pytest.raises(ValueError):
        await store.unblock_subject(key, actor="admin")
    assert await store.list_blocked_subjects() == []
    assert await store.list_audit() == []


async def test_blocks_accept_values_at_their_limits(store: Store) -> None:
    longest = [BlockKey("o" * 256, "s" * 1024), BlockKey.for_email("e" * 500 + "@example.com")]
    for key in longest:
        assert (await store.block_subject(key, actor="admin", reason="r" * 512)).created
    assert await store.is_blocked("o" * 256, "s" * 1024)
    assert await store.is_blocked("x", "y", emails=["E" * 500 + "@example.com"])
    with pytest.raises(ValueError):
        await store.block_subject(BlockKey.for_identity("oidc", "x"), actor="admin", reason="r" * 513)


async def test_a_block_is_broadcast_for_every_user_it_matches(store: Store, store_factory: StoreFactory) -> None:
    other = await store_factory()
    alice = await make_user(other)
    bob = await make_user(other, "bob", email="shared@example.com")
    carol = await make_user(other, "carol", email="shared@example.com")
    async with watching(store) as (revocations, _):
        await other.block_subject(BlockKey.for_identity("oidc", "alice"), actor="admin")
        assert await eventually(lambda: revocations == [Revocation(user_id=alice)]), revocations
        await other.block_subject(BlockKey.for_email("shared@example.com"), actor="admin")
        expected = [Revocation(user_id=alice), Revocation(user_id=bob), Revocation(user_id=carol)]
        assert await eventually(lambda: revocations == expected), revocations


async def test_concurrent_blocks_of_one_identity_create_it_once(store: Store, store_factory: StoreFactory
                                                                ) -> None:
    stores = [await store_factory(**{"database.pool_max": 2}) for _ in range(6)]
    await make_user(store)
    key = BlockKey.for_identity("oidc", "alice")
    outcomes = await asyncio.gather(*(s.block_subject(key, actor="admin") for s in stores))
    assert sum(o.created for o in outcomes) == 1
    assert len(await store.list_blocked_subjects()) == 1
    assert [e.event for e in await store.list_audit()].count("user_block") == 1


# -- login devices ----------------------------------------------------------------------------------


async def test_devices_are_remembered_until_they_expire(store: Store) -> None:
    alice = await make_user(store)
    now = 1_700_000_000.0
    h = token_hash("device:alice")
    assert await store.find_device(h, now=now) is None
    await store.remember_device(h, user_id=alice, now=now, expires_at=now + 100)
    device = await store.find_device(h, now=now + 99)
    assert device is not None
    assert (device.device_hash, device.user_id) == (h, alice)
    assert device.created_at == pytest.approx(now, abs=APPROX)
    assert device.expires_at == pytest.approx(now + 100, abs=APPROX)
    assert await store.find_device(h, now=now + 100) is None  # expired

    # remembering again extends it, never shortens it, and keeps when it was first seen
    await store.remember_device(h, user_id=alice, now=now + 50, expires_at=now + 500)
    await store.remember_device(h, user_id=alice, now=now + 60, expires_at=now + 200)
    device = await store.find_device(h, now=now + 400)
    assert device is not None
    assert device.expires_at == pytest.approx(now + 500, abs=APPROX)
    assert device.created_at == pytest.approx(now, abs=APPROX)

    assert await store.find_device("not-a-hash", now=now) is None
    assert await store.find_device(h.upper(), now=now) is None


async def test_a_device_belongs_to_one_user(store: Store) -> None:
    alice, bob = await make_user(store), await make_user(store, "bob")
    now = 1_700_000_000.0
    h = token_hash("device:shared")
    await store.remember_device(h, user_id=alice, now=now, expires_at=now + 100)
    with pytest.raises(ValueError):
        await store.remember_device(h, user_id=bob, now=now, expires_at=now + 1000)
    device = await store.find_device(h, now=now)
    assert device is not None and device.user_id == alice
    assert device.expires_at == pytest.approx(now + 100, abs=APPROX)
    with pytest.raises(NotFound):
        await store.remember_device(token_hash("device:orphan"), user_id=alice + bob + 1000, now=now,
                                    expires_at=now + 100)


async def test_devices_go_with_their_user(store: Store) -> None:
    alice, bob = await make_user(store), await make_user(store, "bob")
    now = time.time()
    await store.remember_device(token_hash("device:a"), user_id=alice, now=now, expires_at=now + 100)
    await store.remember_device(token_hash("device:b"), user_id=bob, now=now, expires_at=now + 100)
    assert await store.delete_user(alice, actor="admin")
    assert await store.find_device(token_hash("device:a"), now=now) is None
    assert await store.find_device(token_hash("device:b"), now=now) is not None


@pytest.mark.parametrize("change", [
    pytest.param({"device_hash": "abc"}, id="short-hash"),
    pytest.param({"device_hash": token_hash("d").upper()}, id="upper-case-hash"),
    pytest.param({"now": math.nan}, id="nan-now"),
    pytest.param({"expires_at": math.inf}, id="infinite-expiry"),
])
async def test_remember_device_rejects_bad_arguments(store: Store, change: dict[str, Any]) -> None:
    alice = await make_user(store)
    args: dict[str, Any] = {"device_hash": token_hash("d"), "user_id": alice, "now": 1_700_000_000.0,
                            "expires_at": 1_700_000_100.0, **change}
    device_hash = args.pop("device_hash")
    with pytest.raises(ValueError):
        await store.remember_device(device_hash, **args)
    assert await store.find_device(token_hash("d"), now=1_700_000_000.0) is None


async def test_expired_devices_are_pruned_without_changing_anything(store: Store) -> None:
    alice = await make_user(store)
    now = 1_700_000_000.0
    for i in range(5):
        await store.remember_device(token_hash(f"device:old{i}"), user_id=alice, now=now - 1000,
                                    expires_at=now - 500)
    await store.remember_device(token_hash("device:live"), user_id=alice, now=now - 1000, expires_at=now + 500)
    await store.remember_device(token_hash("device:new"), user_id=alice, now=now, expires_at=now + 100)
    assert await store.find_device(token_hash("device:old0"), now=now) is None
    assert await store.find_device(token_hash("device:live"), now=now) is not None
    # an expired device's cookie coming back is simply a new device (pruned or not)
    await store.remember_device(token_hash("device:old1"), user_id=alice, now=now, expires_at=now + 100)
    device = await store.find_device(token_hash("device:old1"), now=now)
    assert device is not None and device.expires_at == pytest.approx(now + 100, abs=APPROX)


# -- audit ------------------------------------------------------------------------------------------


async def test_audit_is_newest_first_and_filters_by_user(store: Store) -> None:
    alice = await make_user(store)
    bob = await make_user(store, "bob")
    before = time.time()
    await store.record_audit("login", user_id=alice, user_key="oidc:alice", actor="alice",
                             detail={"provider": "oidc", "ip": "203.0.113.9"})
    await store.record_audit("login", user_id=bob, user_key="oidc:bob", actor="bob")
    await store.record_audit("token_mint", user_id=alice, user_key="oidc:alice", actor="alice")
    await store.record_audit("config_reload", user_id=None, actor="system")

    events = await store.list_audit()
    assert [(e.event, e.user_id) for e in events] == [("config_reload", None), ("token_mint", alice),
                                                      ("login", bob), ("login", alice)]
    assert [e.id for e in events] == sorted((e.id for e in events), reverse=True)
    assert events[-1].detail == {"provider": "oidc", "ip": "203.0.113.9"}
    assert events[0].detail == {}
    assert all(before - 1 <= e.at <= time.time() + 1 for e in events)
    assert [e.event for e in await store.list_audit(user_id=alice)] == ["token_mint", "login"]
    assert [e.event for e in await store.list_audit(limit=2)] == ["config_reload", "token_mint"]
    assert await store.list_audit(user_id=alice + bob + 1000) == []


# -- revocation feed --------------------------------------------------------------------------------


async def test_watch_delivers_revocations_from_another_store(store: Store, store_factory: StoreFactory
                                                             ) -> None:
    other = await store_factory()
    user_id = await make_user(other)
    earlier = await make_session(other, user_id, "before-watch")
    # made just before watching: replayed (a watcher starts a few seconds back, for clocks that disagree)
    await other.revoke_session(earlier, actor="t", reason="r")
    h = await make_session(other, user_id, "s")
    await make_session(other, user_id, "s2")
    doomed = await make_user(other, "doomed")

    async with watching(store) as (revocations, _):
        assert await eventually(lambda: revocations == [Revocation(token_hash=earlier)]), revocations
        assert await other.revoke_session(h, actor="alice", reason="logout")
        assert await eventually(lambda: revocations[1:] == [Revocation(token_hash=h)]), revocations

        assert await other.revoke_user_sessions(user_id, actor="admin", reason="offboarded") == 1
        assert await eventually(lambda: Revocation(user_id=user_id) in revocations[2:]), revocations

        assert await other.delete_user(doomed, actor="admin")
        assert await eventually(lambda: Revocation(user_id=doomed) in revocations[2:]), revocations

        assert not await other.revoke_session(h, actor="alice", reason="logout")  # already revoked
        await asyncio.sleep(1.5)  # past a catch-up read of the log: a session's revocation arrives once
        assert [r for r in revocations if r.token_hash is not None] == [Revocation(token_hash=earlier),
                                                                         Revocation(token_hash=h)]
        assert set(revocations[2:]) == {Revocation(user_id=user_id), Revocation(user_id=doomed)}


def _log_without_broadcast(database_url: str, revoked: str) -> None:
    """Append a revocation to the log the way a writer whose NOTIFY got lost would leave it: a row, no
    broadcast."""
    if database_url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(sqlite_path(database_url))) as conn, conn:
            conn.execute("INSERT INTO revocations (token_hash, user_id, at) VALUES (?, NULL, ?)",
                         (revoked, time.time()))
        return
    with contextlib.closing(psycopg2.connect(database_url)) as conn, conn, conn.cursor() as cur:
        cur.execute("INSERT INTO revocations (token_hash) VALUES (%s)", (revoked,))


async def test_every_revocation_is_logged_in_order(store: Store) -> None:
    alice = await make_user(store)
    bob = await make_user(store, "bob")
    carol = await make_user(store, "carol")
    first, second = await make_session(store, alice, "first"), await make_session(store, alice, "second")
    start = 0  # a fresh database: nothing logged yet
    assert await store.revocations_since(start) == []

    assert await store.revoke_session(first, actor="alice", reason="logout")
    assert not await store.revoke_session(first, actor="alice", reason="logout")  # nothing new: nothing logged
    assert await store.revoke_user_sessions(alice, actor="admin", reason="offboarded") == 1
    assert await store.delete_user(bob, actor="admin")
    await store.block_subject(BlockKey.for_identity("oidc", "carol"), actor="admin")
    logged = await store.revocations_since(start)
    assert [entry.revocation for entry in logged] == [
        Revocation(token_hash=first), Revocation(user_id=alice), Revocation(user_id=bob), Revocation(user_id=carol)]
    seqs = [entry.seq for entry in logged]
    assert seqs == sorted(set(seqs)) and seqs[0] > start
    assert all(abs(entry.at - time.time()) < 60 for entry in logged)
    # read from any point on, in pages
    assert await store.revocations_since(seqs[1]) == logged[2:]
    assert await store.revocations_since(start, limit=2) == logged[:2]
    assert await store.revocations_since(seqs[-1]) == []
    assert second  # revoked with the user, logged as the user's revocation


async def test_pruning_the_log_keeps_what_is_newer(store: Store) -> None:
    user_id = await make_user(store)
    old = await make_session(store, user_id, "old")
    assert await store.revoke_session(old, actor="t", reason="r")
    cut = time.time() + 0.001
    await asyncio.sleep(0.01)
    new = await make_session(store, user_id, "new")
    assert await store.revoke_session(new, actor="t", reason="r")
    newest = (await store.revocations_since(0))[-1].seq
    assert await store.prune_revocations(before=cut) == 1
    assert [e.revocation.token_hash for e in await store.revocations_since(0)] == [new]
    assert await store.prune_revocations(before=cut) == 0
    # numbers are never handed out again: the next revocation is numbered past the newest, pruned or not
    after = await make_session(store, user_id, "after")
    assert await store.revoke_session(after, actor="t", reason="r")
    assert [e.seq > newest for e in await store.revocations_since(0)] == [False, True]


async def test_watch_delivers_a_revocation_whose_broadcast_never_came(store: Store, database_url: str) -> None:
    """The watcher reads the log (at least every second), so a lost NOTIFY costs a second, not the revocation."""
    async with watching(store) as (revocations, _):
        await asyncio.to_thread(_log_without_broadcast, database_url, token_hash("unannounced"))
        assert await eventually(lambda: revocations == [Revocation(token_hash=token_hash("unannounced"))],
                                timeout=2.5), revocations


async def test_a_revocation_is_logged_only_if_it_commits(store: Store) -> None:
    """The log row is written in the revoking transaction: a revocation that fails leaves none."""
    user_id = await make_user(store)
    start = 0  # a fresh database: nothing logged yet
    with pytest.raises(ValueError):  # the block's reason is too long: refused before anything is written
        await store.block_subject(BlockKey.for_identity("oidc", "alice"), actor="admin", reason="x" * 600)
    assert await store.revocations_since(start) == []
    assert await store.list_sessions(user_id) == []


async def test_watch_ends_when_the_store_is_closed(store: Store) -> None:
    states: list[bool] = []
    task = asyncio.create_task(store.watch_revocations(lambda _r: None, states.append))
    assert await eventually(lambda: states == [True], timeout=5)
    await store.close()
    await asyncio.wait_for(task, timeout=5)


async def test_open_succeeds_when_the_database_is_unreachable(database_url: str, tmp_path: Any,
                                                              store_factory: StoreFactory) -> None:
    if database_url.startswith("sqlite"):
        unreachable = f"sqlite:///{tmp_path}/missing-directory/gateway.db"
    else:
        unreachable = database_url.replace(database_url.split("@")[1].split("/")[0], "127.0.0.1:1")
    store = await store_factory(unreachable)
    for call in (store.ping, store.migrate, store.pending_migrations, store.list_users):
        with pytest.raises(StoreUnavailable):
            await call()
    with pytest.raises(StoreUnavailable):
        await store.lookup_session(token_hash("x"))


async def test_calls_after_close_raise_store_unavailable(store: Store) -> None:
    await store.close()
    await store.close()  # twice is fine
    with pytest.raises(StoreUnavailable):
        await store.ping()


async def test_touch_sessions_in_one_batch(store: Store) -> None:
    user = await store.upsert_user("oidc", "batch", email="batch@example.com")
    now = 1_700_000_000.0
    hashes = [token_hash(f"batch{i}") for i in range(3)]
    for h in hashes:
        await store.create_session(token_hash=h, user_id=user.id, kind="browser", now=now, expires_at=now + 9000,
                                   idle_timeout=600)
    await store.revoke_session(hashes[2], actor="test", reason="test")
    await store.touch_sessions({hashes[0]: (now + 60, now + 100), hashes[1]: (now + 50, now + 50),
                                hashes[2]: (now + 100, now + 100)})
    await store.touch_sessions({hashes[0]: (now + 10, now + 10)})  # never backwards
    await store.touch_sessions({})
    # uses seen from before the idle deadline carry the session past it; uses only after it do not
    await store.touch_sessions({hashes[1]: (now + 600, now + 1200)})
    await store.touch_sessions({hashes[0]: (now + 800, now + 800)})
    first, second, revoked = [await store.lookup_session(h) for h in hashes]
    assert first is not None and second is not None and revoked is not None
    assert first.session.last_seen_at == pytest.approx(now + 100, abs=APPROX)
    assert first.session.idle_expires_at == pytest.approx(now + 700, abs=APPROX)
    assert second.session.last_seen_at == pytest.approx(now + 1200, abs=APPROX)
    assert second.session.idle_expires_at == pytest.approx(now + 1800, abs=APPROX)
    assert revoked.session.last_seen_at == pytest.approx(now, abs=APPROX)


# -- back-channel logouts ---------------------------------------------------------------------------


def provider_logout(subject: str = "", sid: str = "", *, jti: str = "", upstream: str = "oidc",
                    expires_at: float | None = None) -> ProviderLogout:
    """A logout naming ``subject`` and/or the provider session ``sid`` (hashed as the gateway hashes it)."""
    return ProviderLogout(upstream=upstream, subject=subject, provider_session=token_hash(f"ps:{sid}") if sid else "",
                          token_id=token_hash(f"jti:{jti or subject + sid}"),
                          token_expires_at=time.time() + 120 if expires_at is None else expires_at)


async def make_provider_sessions(store: Store) -> dict[str, str]:
    """Alice signed in twice (provider sessions A and B) and holds an API token; Bob (sid C) and another
    upstream's "alice" have sessions too. Returns their token hashes by name."""
    now = time.time()
    alice, bob = await make_user(store), await make_user(store, "bob")
    elsewhere = (await store.upsert_user("other", "alice", email="alice@other.example")).id
    sessions = {"alice-a": (alice, "A", "browser"), "alice-b": (alice, "B", "browser"),
                "alice-api": (alice, "A", "api"), "bob-c": (bob, "C", "browser"),
                "other-alice": (elsewhere, "", "browser")}
    hashes = {}
    for name, (user_id, sid, kind) in sessions.items():
        hashes[name] = token_hash(name)
        await store.create_session(token_hash=hashes[name], user_id=user_id, kind=kind, now=now,
                                   expires_at=now + 3600, idle_timeout=0 if kind == "api" else 600,
                                   provider_session=token_hash(f"ps:{sid}") if sid else "")
    return hashes


async def active(store: Store, hashes: dict[str, str]) -> set[str]:
    """The names of the sessions still active."""
    found = {name: await store.lookup_session(h) for name, h in hashes.items()}
    return {name for name, a in found.items() if a is not None and a.session.is_active(time.time())}


@pytest.mark.parametrize(("logout", "revoked"), [
    pytest.param(provider_logout(sid="A"), {"alice-a"}, id="sid"),
    pytest.param(provider_logout("alice"), {"alice-a", "alice-b"}, id="sub"),
    pytest.param(provider_logout("alice", "B"), {"alice-b"}, id="sub-and-sid"),
    pytest.param(provider_logout("bob", "A"), set(), id="sid-of-another-user"),
    pytest.param(provider_logout("nobody"), set(), id="unknown-sub"),
    pytest.param(provider_logout(sid="unknown"), set(), id="unknown-sid"),
])
async def test_a_back_channel_logout_revokes_only_the_browser_sessions_it_names(
        store: Store, logout: ProviderLogout, revoked: set[str]) -> None:
    hashes = await make_provider_sessions(store)
    ended = await store.revoke_provider_sessions(logout, actor="upstream:oidc", reason="backchannel_logout",
                                                 now=time.time())
    assert sorted(ended) == sorted(hashes[name] for name in revoked)
    assert await active(store, hashes) == set(hashes) - revoked  # API tokens and other upstreams untouched
    # audited, one row per user (or one saying nothing matched), and logged for every replica
    (audit,) = [e for e in await store.list_audit(limit=10) if e.event == "revoke"]
    assert audit.actor == "upstream:oidc"
    assert audit.detail["reason"] == "backchannel_logout" and audit.detail["sessions"] == str(len(revoked))
    assert audit.user_key == ("oidc:alice" if revoked else (f"oidc:{logout.subject}" if logout.subject else ""))
    assert [entry.revocation for entry in await store.revocations_since(0)] == [
        Revocation(token_hash=h) for h in ended]


async def test_a_replayed_logout_token_revokes_nothing(store: Store) -> None:
    hashes = await make_provider_sessions(store)
    logout = provider_logout("alice", jti="once")
    assert len(await store.revoke_provider_sessions(logout, actor="a", reason="r", now=time.time())) == 2
    user_id = (await store.lookup_session(hashes["alice-a"])).user.id  # type: ignore[union-attr]
    fresh = await make_session(store, user_id, "signed-in-again")
    audit_before = await store.list_audit(limit=100)
    log_before = await store.revocations_since(0)
    by_sid = dataclasses.replace(logout, subject="", provider_session=token_hash("ps:C"))
    for replay in (logout, dataclasses.replace(logout, subject="bob"), by_sid):
        with pytest.raises(LogoutTokenReused):
            await store.revoke_provider_sessions(replay, actor="a", reason="r", now=time.time())
    found = await store.lookup_session(fresh)
    assert found is not None and found.session.revoked_at is None
    assert await active(store, hashes) == {"alice-api", "bob-c", "other-alice"}
    assert await store.list_audit(limit=100) == audit_before
    assert await store.revocations_since(0) == log_before
    # the same jti from another upstream is another token
    other = dataclasses.replace(logout, upstream="other", token_id=token_hash("jti:other:once"))
    assert len(await store.revoke_provider_sessions(other, actor="a", reason="r", now=time.time())) == 1


async def test_a_logout_token_id_is_single_use_until_it_expires(store: Store) -> None:
    await make_provider_sessions(store)
    now = time.time()
    logout = provider_logout("bob", jti="short", expires_at=now + 10)
    assert await store.revoke_provider_sessions(logout, actor="a", reason="r", now=now) != []
    with pytest.raises(LogoutTokenReused):
        await store.revoke_provider_sessions(logout, actor="a", reason="r", now=now + 9)
    # once expired the claim is gone (the token itself would no longer verify); a new claim is made
    later = dataclasses.replace(logout, token_expires_at=now + 100)
    assert await store.revoke_provider_sessions(later, actor="a", reason="r", now=now + 11) == []
    with pytest.raises(LogoutTokenReused):
        await store.revoke_provider_sessions(later, actor="a", reason="r", now=now + 12)


async def test_concurrent_uses_of_one_logout_token_revoke_once(store: Store, store_factory: StoreFactory) -> None:
    # two stores, so on PostgreSQL the claims really race on separate connections
    first, second = await store_factory(), await store_factory()
    await make_provider_sessions(store)
    for attempt in range(10):
        logout = provider_logout("alice", jti=f"race{attempt}")
        results = await asyncio.gather(
            first.revoke_provider_sessions(logout, actor="a", reason="r", now=time.time()),
            second.revoke_provider_sessions(logout, actor="a", reason="r", now=time.time()),
            return_exceptions=True)
        assert sum(isinstance(r, LogoutTokenReused) for r in results) == 1, results
        assert sum(isinstance(r, list) for r in results) == 1, results


async def test_a_back_channel_logout_is_broadcast(store: Store, store_factory: StoreFactory) -> None:
    other = await store_factory()
    hashes = await make_provider_sessions(other)
    async with watching(store) as (revocations, _):
        await other.revoke_provider_sessions(provider_logout("alice"), actor="a", reason="r", now=time.time())
        expected = {Revocation(token_hash=hashes["alice-a"]), Revocation(token_hash=hashes["alice-b"])}
        assert await eventually(lambda: set(revocations) == expected), revocations


async def test_provider_sessions_go_with_their_sessions(store: Store) -> None:
    hashes = await make_provider_sessions(store)
    bob = (await store.lookup_session(hashes["bob-c"])).user.id  # type: ignore[union-attr]
    assert await store.delete_user(bob, actor="admin")
    assert await store.revoke_provider_sessions(provider_logout(sid="C"), actor="a", reason="r",
                                                now=time.time()) == []


@pytest.mark.parametrize("change", [
    pytest.param({"subject": "", "provider_session": ""}, id="neither-sub-nor-sid"),
    pytest.param({"upstream": ""}, id="no-upstream"),
    pytest.param({"upstream": "x" * 129}, id="long-upstream"),
    pytest.param({"subject": "x" * 1025}, id="long-subject"),
    pytest.param({"subject": "a\x00b"}, id="nul-subject"),
    pytest.param({"provider_session": "sid-1"}, id="raw-sid"),
    pytest.param({"token_id": "jti"}, id="raw-jti"),
    pytest.param({"token_id": token_hash("j").upper()}, id="upper-case-jti-hash"),
    pytest.param({"token_expires_at": math.nan}, id="nan-expiry"),
])
async def test_malformed_back_channel_logouts_are_refused(store: Store, change: dict[str, Any]) -> None:
    hashes = await make_provider_sessions(store)
    logout = dataclasses.replace(provider_logout("alice", "A"), **change)
    with pytest.raises(ValueError):
        await store.revoke_provider_sessions(logout, actor="a", reason="r", now=time.time())
    assert await active(store, hashes) == set(hashes)


async def test_create_session_refuses_a_raw_provider_session(store: Store) -> None:
    user_id = await make_user(store)
    now = time.time()
    with pytest.raises(ValueError):
        await store.create_session(token_hash=token_hash("s"), user_id=user_id, kind="browser", now=now,
                                   expires_at=now + 60, idle_timeout=0, provider_session="sid-1")
    assert await store.lookup_session(token_hash("s")) is None
