"""The conformance suite's part for the ``SessionSecrets`` role, run against SQLite and PostgreSQL alike.

A session keeps sealed values (its ID token, its refresh token) under a purpose: kept, read, taken once,
replaced, claimed by one refresher at a time, and gone with the session; a renewal moves the session's
expiry and replaces its secrets at once. The store only ever sees sealed text; what it refuses it refuses
before writing.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Any

import pytest

from gateway.errors import NotFound
from gateway.store import SESSION_SECRET_MAX, SESSION_SECRET_PURPOSES, Store, migration_scripts
from tests.store.storekit import StoreFactory, eventually, make_session, make_user, token_hash

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]

SEALED = "v1.0123abcd.c2VhbGVkLXZhbHVlLW5vdC1hLXRva2Vu"
"""Stands for a sealed value: the store neither knows nor cares how it was sealed."""


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str:
    """A fresh, empty database for the backend under test."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_the_schemas_check_the_same_purposes_and_limit(dialect: str) -> None:
    # the newest migration that states the purposes is the schema's CHECK
    script = [sql for _, sql in migration_scripts(dialect) if "purpose IN (" in sql][-1]
    listed = re.search(r"purpose IN \(([^)]*)\)", script)
    assert listed is not None and set(re.findall(r"'([a-z_]+)'", listed.group(1))) == set(SESSION_SECRET_PURPOSES)
    assert f"BETWEEN 1 AND {SESSION_SECRET_MAX}" in dict(migration_scripts(dialect))["0007_session_secrets"]


async def test_a_kept_secret_is_read_replaced_and_taken_once(store: Store) -> None:
    user_id = await make_user(store)
    h, other = await make_session(store, user_id, "s"), await make_session(store, user_id, "t")
    assert await store.session_secret(h, "id_token") is None
    assert await store.take_session_secret(h, "id_token") is None

    await store.keep_session_secret(h, "id_token", SEALED)
    assert await store.session_secret(h, "id_token") == SEALED
    assert await store.session_secret(h, "id_token") == SEALED  # reading leaves it
    assert await store.session_secret(other, "id_token") is None  # kept per session

    await store.keep_session_secret(h, "id_token", SEALED + "x")  # a second sign-in's value replaces it
    assert await store.take_session_secret(h, "id_token") == SEALED + "x"
    assert await store.take_session_secret(h, "id_token") is None
    assert await store.session_secret(h, "id_token") is None


async def test_a_secret_goes_with_its_session(store: Store) -> None:
    user_id, bob = await make_user(store), await make_user(store, "bob")
    h, kept = await make_session(store, user_id, "s"), await make_session(store, bob, "b")
    await store.keep_session_secret(h, "id_token", SEALED)
    await store.keep_session_secret(kept, "id_token", SEALED)
    # revoking keeps the session row, and so what it kept (sign-out takes it itself)
    assert await store.revoke_session(h, actor="user", reason="logout")
    assert await store.session_secret(h, "id_token") == SEALED

    assert await store.delete_user(user_id, actor="admin")
    assert await store.session_secret(h, "id_token") is None
    assert await store.session_secret(kept, "id_token") == SEALED
    # nothing was left behind for a session that would reuse the hash
    again = await make_user(store, "carol")
    await store.create_session(token_hash=h, user_id=again, kind="browser", now=0.0, expires_at=1e10,
                               idle_timeout=0.0)
    assert await store.session_secret(h, "id_token") is None


async def test_keeping_for_an_unknown_session_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.keep_session_secret(token_hash("nobody"), "id_token", SEALED)


@pytest.mark.parametrize("change", [
    pytest.param({"token_hash": "ab" * 31}, id="short-hash"),
    pytest.param({"token_hash": "AB" * 32}, id="upper-case-hash"),
    pytest.param({"token_hash": "raw-token"}, id="not-a-hash"),
    pytest.param({"purpose": "access_token"}, id="unknown-purpose"),
    pytest.param({"purpose": ""}, id="empty-purpose"),
    pytest.param({"sealed": ""}, id="empty-value"),
    pytest.param({"sealed": "x" * (SESSION_SECRET_MAX + 1)}, id="too-long"),
    pytest.param({"sealed": "v1.sealed value"}, id="space"),
    pytest.param({"sealed": "v1.sealed\0"}, id="nul"),
    pytest.param({"sealed": "v1.sealé"}, id="not-ascii"),
])
async def test_keep_refuses_what_no_schema_would_take(store: Store, change: dict[str, Any]) -> None:
    user_id = await make_user(store)
    h = await make_session(store, user_id, "s")
    args: dict[str, Any] = {"token_hash": h, "purpose": "id_token", "sealed": SEALED, **change}
    with pytest.raises(ValueError) as caught:
        await store.keep_session_secret(args["token_hash"], args["purpose"], args["sealed"])
    assert args["sealed"][:20] not in str(caught.value) or not args["sealed"]  # a value is never echoed
    assert await store.session_secret(h, "id_token") is None


async def test_the_longest_value_is_kept(store: Store) -> None:
    user_id = await make_user(store)
    h = await make_session(store, user_id, "s")
    await store.keep_session_secret(h, "id_token", "x" * SESSION_SECRET_MAX)
    assert await store.session_secret(h, "id_token") == "x" * SESSION_SECRET_MAX


@pytest.mark.parametrize(("h", "purpose"), [
    pytest.param("ab" * 31, "id_token", id="short-hash"),
    pytest.param("not-a-hash", "id_token", id="not-a-hash"),
    pytest.param(token_hash("s"), "access_token", id="unknown-purpose"),
])
async def test_reading_a_malformed_key_is_none(store: Store, h: str, purpose: Any) -> None:
    assert await store.session_secret(h, purpose) is None
    assert await store.take_session_secret(h, purpose) is None


async def test_concurrent_takes_get_it_once(store: Store, store_factory: StoreFactory) -> None:
    user_id = await make_user(store)
    h = await make_session(store, user_id, "s")
    await store.keep_session_secret(h, "id_token", SEALED)
    others = [await store_factory() for _ in range(3)]
    taken = await asyncio.gather(*(s.take_session_secret(h, "id_token") for s in [store, *others]))
    assert sorted(taken, key=lambda v: v is None) == [SEALED, None, None, None]


async def test_a_refresh_token_is_claimed_by_one_at_a_time_until_renewed_or_its_lease_ends(
        store: Store, store_factory: StoreFactory) -> None:
    user_id = await make_user(store)
    now = time.time()
    h = await make_session(store, user_id, "s", now=now)
    assert await store.claim_session_secret(h, "refresh_token", now=now, lease=30) is None  # nothing kept
    await store.keep_session_secret(h, "refresh_token", SEALED)
    others = [await store_factory() for _ in range(3)]
    claims = await asyncio.gather(*(s.claim_session_secret(h, "refresh_token", now=now, lease=30)
                                    for s in [store, *others]))
    assert sorted(claims, key=lambda v: v is None) == [SEALED, None, None, None]
    assert await store.claim_session_secret(h, "refresh_token", now=now + 29, lease=30) is None
    # a claimant that died: its lease runs out and another may claim
    assert await store.claim_session_secret(h, "refresh_token", now=now + 30, lease=30) == SEALED
    # the claim does not hide the value from readers, nor lock the other purposes
    assert await store.session_secret(h, "refresh_token") == SEALED
    await store.keep_session_secret(h, "id_token", SEALED)
    assert await store.claim_session_secret(h, "id_token", now=now + 30, lease=30) == SEALED
    # renewing stores the next value, held until the next refresh is due (a replica that has not re-read
    # the session yet cannot refresh it a second time)
    assert await store.renew_session(h, now=now + 31, expires_at=now + 7200, secrets={"refresh_token": SEALED + "2"},
                                     next_claim_at=now + 300)
    assert await store.claim_session_secret(h, "refresh_token", now=now + 299, lease=30) is None
    assert await store.claim_session_secret(h, "refresh_token", now=now + 300, lease=30) == SEALED + "2"


async def test_a_revoked_or_expired_session_gives_no_claim_and_is_never_renewed(store: Store) -> None:
    user_id = await make_user(store)
    now = time.time()
    revoked = await make_session(store, user_id, "r", now=now, lifetime=100, idle_timeout=0)
    expired = await make_session(store, user_id, "e", now=now, lifetime=100, idle_timeout=0)
    idle = await make_session(store, user_id, "i", now=now, lifetime=1000, idle_timeout=50)
    for h in (revoked, expired, idle):
        await store.keep_session_secret(h, "refresh_token", SEALED)
    assert await store.revoke_session(revoked, actor="user", reason="logout")
    assert await store.claim_session_secret(revoked, "refresh_token", now=now + 1, lease=30) is None
    assert not await store.renew_session(revoked, now=now + 1, expires_at=now + 9999, secrets={},
                                         next_claim_at=now + 600)
    assert await store.claim_session_secret(expired, "refresh_token", now=now + 100, lease=30) is None
    assert not await store.renew_session(expired, now=now + 100, expires_at=now + 9999,
                                         secrets={"refresh_token": SEALED + "2"}, next_claim_at=now + 600)
    assert await store.claim_session_secret(idle, "refresh_token", now=now + 50, lease=30) is None  # idle
    assert not await store.renew_session(idle, now=now + 50, expires_at=now + 9999, secrets={},
                                         next_claim_at=now + 600)
    assert await store.session_secret(revoked, "refresh_token") is None  # forgotten at the revocation
    assert await store.session_secret(expired, "refresh_token") == SEALED  # nothing was replaced
    for h in (revoked, expired):
        found = await store.lookup_session(h)
        assert found is not None and found.session.expires_at == pytest.approx(now + 100)
        assert found.session.renewed_at is None


async def test_a_renewal_moves_the_expiry_and_tells_every_process_to_re_read_the_user(store: Store) -> None:
    user_id = await make_user(store)
    now = time.time()
    h = await make_session(store, user_id, "s", now=now, lifetime=600)
    before = await store.lookup_session(h)
    assert before is not None and before.session.renewed_at is None
    seen: list[Any] = []
    watcher = asyncio.ensure_future(store.watch_revocations(seen.append, lambda live: None))
    try:
        await asyncio.sleep(0.3)
        assert await store.renew_session(h, now=now + 10, expires_at=now + 4000,
                                         secrets={"refresh_token": SEALED, "id_token": SEALED + "i"},
                                         next_claim_at=now + 600)
        after = await store.lookup_session(h)
        assert after is not None
        assert after.session.expires_at == pytest.approx(now + 4000)
        assert after.session.renewed_at == pytest.approx(now + 10)
        assert after.session.idle_expires_at == before.session.idle_expires_at  # use moves that, not a refresh
        assert await store.session_secret(h, "refresh_token") == SEALED
        assert await store.session_secret(h, "id_token") == SEALED + "i"
        assert await eventually(lambda: any(r.user_id == user_id and r.token_hash is None for r in seen), 5.0)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def test_renew_refuses_a_malformed_secret_before_writing(store: Store) -> None:
    user_id = await make_user(store)
    now = time.time()
    h = await make_session(store, user_id, "s", now=now)
    with pytest.raises(ValueError):
        await store.renew_session(h, now=now, expires_at=now + 9999, secrets={"refresh_token": "not sealed"},
                                  next_claim_at=now + 600)
    found = await store.lookup_session(h)
    assert found is not None and found.session.renewed_at is None


async def test_whatever_revokes_a_session_forgets_its_refresh_token(store: Store) -> None:
    user_id, bob = await make_user(store), await make_user(store, "bob")
    now = time.time()
    one, two, three, kept = [await make_session(store, uid, label, now=now)
                             for uid, label in ((user_id, "1"), (user_id, "2"), (user_id, "3"), (bob, "b"))]
    for h in (one, two, three, kept):
        await store.keep_session_secret(h, "refresh_token", SEALED)
        await store.keep_session_secret(h, "id_token", SEALED + "i")
    assert await store.revoke_session(one, actor="user", reason="logout")
    assert await store.session_secret(one, "refresh_token") is None
    assert await store.session_secret(one, "id_token") == SEALED + "i"  # sign-out takes it for the hint
    assert await store.revoke_user_sessions(user_id, actor="admin", reason="test") == 2
    for h in (two, three):
        assert await store.session_secret(h, "refresh_token") is None
    assert await store.session_secret(kept, "refresh_token") == SEALED
