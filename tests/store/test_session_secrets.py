"""The conformance suite's part for the ``SessionSecrets`` role, run against SQLite and PostgreSQL alike.

A session keeps sealed values (today its ID token) under a purpose: kept, read, taken once, replaced, and
gone with the session. The store only ever sees sealed text; what it refuses it refuses before writing.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from gateway.errors import NotFound
from gateway.store import SESSION_SECRET_MAX, SESSION_SECRET_PURPOSES, Store, migration_scripts
from tests.store.storekit import StoreFactory, make_session, make_user, token_hash

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
    script = dict(migration_scripts(dialect))["0007_session_secrets"]
    listed = re.search(r"purpose IN \(([^)]*)\)", script)
    assert listed is not None and set(re.findall(r"'([a-z_]+)'", listed.group(1))) == set(SESSION_SECRET_PURPOSES)
    assert f"BETWEEN 1 AND {SESSION_SECRET_MAX}" in script


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
    pytest.param({"purpose": "refresh_token"}, id="unknown-purpose"),
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
    pytest.param(token_hash("s"), "refresh_token", id="unknown-purpose"),
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
