"""The ``ApiTokens`` role on SQLite and PostgreSQL: named API tokens people mint, list and revoke themselves."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.errors import NotFound
from gateway.models import Revocation
from gateway.store import ApiToken, Store, TooManyApiTokens
from tests.store.storekit import StoreFactory, eventually, make_session, make_user, token_hash, watching

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]

DAY = 86400.0


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str:
    """A fresh, empty database for the backend under test."""
    return str(request.getfixturevalue(f"{request.param}_url"))


async def mint(store: Store, user_id: int, label: str, *, name: str = "ci", now: float | None = None,
               lifetime: float = 30 * DAY, max_active: int = 50) -> ApiToken:
    start = time.time() if now is None else now
    return await store.create_api_token(token_hash=token_hash(label), user_id=user_id, name=name, now=start,
                                        expires_at=start + lifetime, max_active=max_active)


async def test_a_minted_token_is_a_named_api_session_without_idle_timeout(store: Store) -> None:
    alice = await make_user(store)
    now = time.time()
    token = await mint(store, alice, "t1", name="deploy bot ✓", now=now)
    assert token.name == "deploy bot ✓"
    assert token.token_id == token_hash("t1")[:8]
    assert token.session.kind == "api" and token.session.idle_timeout == 0
    assert token.session.expires_at == pytest.approx(now + 30 * DAY, abs=1e-3)
    found = await store.lookup_session(token_hash("t1"))
    assert found is not None and found.session.is_active(now + 1) and found.user.id == alice


async def test_list_shows_the_users_api_tokens_newest_first_named_or_not(store: Store) -> None:
    alice, bob = await make_user(store, "alice"), await make_user(store, "bob")
    now = time.time()
    await mint(store, alice, "a1", name="first", now=now - 10)
    await make_session(store, alice, "a-cli", kind="api", now=now - 5, idle_timeout=0)  # `gateway tokens mint`
    await mint(store, alice, "a2", name="second", now=now)
    await make_session(store, alice, "a-browser")
    await mint(store, bob, "b1", name="bob's")
    listed = await store.list_api_tokens(alice, since=now)
    assert [(t.session.token_hash, t.name) for t in listed] == [
        (token_hash("a2"), "second"), (token_hash("a-cli"), ""), (token_hash("a1"), "first")]


async def test_list_keeps_tokens_that_ended_after_since_and_drops_older_ones(store: Store) -> None:
    alice = await make_user(store)
    now = time.time()
    await mint(store, alice, "expired-long-ago", now=now - 40 * DAY, lifetime=DAY)
    await mint(store, alice, "expired-lately", now=now - 2 * DAY, lifetime=DAY)
    await mint(store, alice, "revoked", now=now - DAY)
    await store.revoke_api_token(alice, token_hash("revoked")[:8], actor="user", reason="test", now=now)
    listed = {t.session.token_hash: t for t in await store.list_api_tokens(alice, since=now - 30 * DAY)}
    assert set(listed) == {token_hash("expired-lately"), token_hash("revoked")}
    assert listed[token_hash("revoked")].session.revoked_at == pytest.approx(now, abs=1e-3)
    assert [t.session.token_hash for t in await store.list_api_tokens(alice, since=now + 1)] == []


@pytest.mark.parametrize("name", ["", "x" * 101, "tab\there", "new\nline", "nul\x00", "del\x7f"],
                         ids=["empty", "too-long", "tab", "newline", "nul", "del"])
async def test_a_bad_name_is_a_value_error_and_creates_nothing(store: Store, name: str) -> None:
    alice = await make_user(store)
    with pytest.raises(ValueError, match="name"):
        await mint(store, alice, "bad", name=name)
    assert await store.lookup_session(token_hash("bad")) is None


async def test_a_name_of_exactly_100_characters_is_kept(store: Store) -> None:
    alice = await make_user(store)
    assert (await mint(store, alice, "long", name="é" * 100)).name == "é" * 100


async def test_an_unknown_user_is_not_found_and_a_reused_hash_a_value_error(store: Store) -> None:
    with pytest.raises(NotFound):
        await mint(store, 424242, "nobody")
    alice = await make_user(store)
    await mint(store, alice, "once")
    with pytest.raises(ValueError, match="already exists"):
        await mint(store, alice, "once")


async def test_the_limit_counts_active_api_tokens_only(store: Store) -> None:
    alice = await make_user(store)
    now = time.time()
    await mint(store, alice, "old", now=now - 2 * DAY, lifetime=DAY, max_active=2)  # expired: not counted
    await make_session(store, alice, "browser")  # not an API token
    await mint(store, alice, "one", now=now, max_active=2)
    await mint(store, alice, "two", now=now, max_active=2)
    with pytest.raises(TooManyApiTokens):
        await mint(store, alice, "three", now=now, max_active=2)
    assert await store.lookup_session(token_hash("three")) is None
    await store.revoke_api_token(alice, token_hash("one")[:8], actor="user", reason="test", now=now)
    await mint(store, alice, "three", now=now, max_active=2)


async def test_concurrent_mints_cannot_pass_the_limit(store_factory: StoreFactory, store: Store) -> None:
    """Mints racing on two stores (two replicas) for one user: exactly ``max_active`` succeed."""
    other = await store_factory()
    alice = await make_user(store)
    results = await asyncio.gather(*(mint(s, alice, f"race{i}", max_active=3)
                                     for i, s in enumerate([store, other] * 4)), return_exceptions=True)
    assert sum(isinstance(r, ApiToken) for r in results) == 3
    assert all(isinstance(r, ApiToken | TooManyApiTokens) for r in results), results


async def test_revoke_by_id_audits_and_logs_it_for_every_replica(store: Store) -> None:
    alice = await make_user(store)
    now = time.time()
    token = await mint(store, alice, "t", now=now)
    async with watching(store) as (seen, _):
        revoked = await store.revoke_api_token(alice, token.token_id, actor="user", reason="mine", now=now)
        assert revoked is not None and revoked.name == "ci" and revoked.session.revoked_at is not None
        assert await eventually(lambda: Revocation(token_hash=token_hash("t")) in seen, timeout=3)
    found = await store.lookup_session(token_hash("t"))
    assert found is not None and not found.session.is_active(now + 1)
    audit = (await store.list_audit(user_id=alice))[0]
    assert (audit.event, audit.actor, audit.detail) == ("revoke", "user",
                                                        {"reason": "mine", "session": token_hash("t")[:12]})
    assert await store.revoke_api_token(alice, token.token_id, actor="user", reason="again", now=now) is None


async def test_revoke_accepts_a_longer_prefix_and_refuses_malformed_ids(store: Store) -> None:
    alice = await make_user(store)
    await mint(store, alice, "t")
    for bad in ["", "abc", token_hash("t")[:7], token_hash("t")[:8].upper(), "%" * 8, token_hash("t")[:8] + "%",
                "_" * 8, token_hash("t") + "0"]:
        assert await store.revoke_api_token(alice, bad, actor="user", reason="x", now=time.time()) is None, bad
    assert await store.revoke_api_token(alice, token_hash("t")[:20], actor="user", reason="x",
                                        now=time.time()) is not None


async def test_revoke_never_touches_another_users_token_or_a_browser_session(store: Store) -> None:
    alice, bob = await make_user(store, "alice"), await make_user(store, "bob")
    await mint(store, bob, "bobs")
    await make_session(store, alice, "browser")
    for user, label in [(alice, "bobs"), (alice, "browser"), (bob, "browser")]:
        assert await store.revoke_api_token(user, token_hash(label)[:8], actor="user", reason="x",
                                            now=time.time()) is None
    for label in ("bobs", "browser"):
        found = await store.lookup_session(token_hash(label))
        assert found is not None and found.session.revoked_at is None


async def test_a_token_and_its_name_go_with_the_user(store: Store) -> None:
    alice = await make_user(store)
    await mint(store, alice, "t")
    assert await store.delete_user(alice, actor="test")
    assert await store.lookup_session(token_hash("t")) is None
    assert await store.list_api_tokens(alice, since=0) == []
