"""The Administration role on every backend: revoke everything, revoke one session by its short id, set roles."""

from __future__ import annotations

import time

import pytest

from gateway.models import Revocation
from gateway.store import Store
from gateway.store.pgfeed import decode_revocation, encode_revocation
from tests.store.storekit import StoreFactory, eventually, make_session, make_user, token_hash, watching


async def active(store: Store, user_id: int) -> set[str]:
    return {s.token_hash for s in await store.list_sessions(user_id, now=time.time())}


async def test_revoke_all_sessions_ends_every_active_session_and_logs_one_revocation(
        store: Store, store_factory: StoreFactory) -> None:
    alice, bob = await make_user(store), await make_user(store, "bob")
    await make_session(store, alice, "a1")
    await make_session(store, alice, "a2", kind="api", idle_timeout=0)
    await make_session(store, bob, "b1")
    expired = await make_session(store, bob, "b-old", now=time.time() - 7200)
    other = await store_factory()
    async with watching(store) as (revocations, _):
        assert await other.revoke_all_sessions(actor="cli", reason="key leak") == 3
        # (PostgreSQL may deliver it twice, by NOTIFY and by the log: applying it again is harmless)
        assert await eventually(lambda: bool(revocations) and set(revocations) == {Revocation()}), revocations
        assert revocations[0].everything
    assert await active(store, alice) == set() and await active(store, bob) == set()
    old = await store.lookup_session(expired)
    assert old is not None and old.session.revoked_at is None  # an expired session is left as it was
    [audit] = [a for a in await store.list_audit() if a.event == "revoke_all"]
    assert (audit.user_id, audit.actor, audit.detail) == (None, "cli", {"reason": "key leak", "sessions": "3",
                                                                         "users": "2"})
    logged = await store.revocations_since(0)
    assert logged[-1].revocation == Revocation()
    # nothing active: still logged (bearer JWTs are cached without a row), and counted as nothing
    assert await store.revoke_all_sessions(actor="cli", reason="again") == 0
    assert (await store.revocations_since(logged[-1].seq))[-1].revocation.everything


async def test_revoke_session_by_prefix(store: Store) -> None:
    alice, bob = await make_user(store), await make_user(store, "bob")
    labels = {label: await make_session(store, alice if label.startswith("a") else bob, label)
              for label in ("a1", "a2", "a3", "b1")}
    target = labels["a1"]
    assert await store.revoke_session_by_prefix(target[:8], user_id=bob, actor="cli", reason="r") == []
    assert await store.revoke_session_by_prefix(target[:8], actor="cli", reason="stolen laptop") == [target]
    assert await active(store, alice) == {labels["a2"], labels["a3"]}
    revoke = next(a for a in await store.list_audit(user_id=alice) if a.event == "revoke")
    assert revoke.detail == {"reason": "stolen laptop", "session": target[:12]}
    assert (await store.revocations_since(0))[-1].revocation == Revocation(token_hash=target)
    # revoked now: unknown to a second attempt
    assert await store.revoke_session_by_prefix(target[:8], actor="cli", reason="r") == []
    assert await store.revoke_session_by_prefix(labels["b1"], user_id=bob, actor="cli", reason="r") == [labels["b1"]]


async def test_an_ambiguous_prefix_revokes_nothing(store: Store) -> None:
    alice = await make_user(store)
    # two hashes sharing their first 8 hex digits do not come by chance: made to order
    hashes = ["abcdef01" + token_hash(label)[8:] for label in ("x", "y")]
    for h in hashes:
        await store.create_session(token_hash=h, user_id=alice, kind="browser", now=time.time(),
                                   expires_at=time.time() + 3600, idle_timeout=600)
    assert sorted(await store.revoke_session_by_prefix("abcdef01", actor="cli", reason="r")) == sorted(hashes)
    assert await active(store, alice) == set(hashes)
    assert await store.revoke_session_by_prefix(hashes[0][:20], actor="cli", reason="r") == [hashes[0]]
    assert await active(store, alice) == {hashes[1]}


@pytest.mark.parametrize("prefix", ["abcdef0", "ABCDEF01", "abcdefg1", "", "a" * 65, "abcd ef01"])
async def test_revoke_session_by_prefix_refuses_malformed_ids(store: Store, prefix: str) -> None:
    with pytest.raises(ValueError, match="session id"):
        await store.revoke_session_by_prefix(prefix, actor="cli", reason="r")


async def test_set_user_roles_evicts_the_user_everywhere_without_revoking(store: Store,
                                                                         store_factory: StoreFactory) -> None:
    alice = await make_user(store, roles=["dev"])
    session = await make_session(store, alice, "a1")
    other = await store_factory()
    async with watching(store) as (revocations, _):
        user = await other.set_user_roles(alice, ["admin", "dev"], actor="cli")
        assert user is not None and user.roles == ("admin", "dev")
        assert await eventually(lambda: bool(revocations) and set(revocations) == {Revocation(user_id=alice)}), \
            revocations
    found = await store.lookup_session(session)
    assert found is not None and found.session.revoked_at is None and found.user.roles == ("admin", "dev")
    [audit] = [a for a in await store.list_audit(user_id=alice) if a.event == "user_roles"]
    assert (audit.actor, audit.detail) == ("cli", {"roles": "admin,dev", "previous": "dev"})
    assert [a.event for a in await store.list_audit()].count("revoke") == 0
    cleared = await store.set_user_roles(alice, [], actor="cli")
    assert cleared is not None and cleared == await store.get_user(alice) and cleared.roles == ()
    assert await store.set_user_roles(9999, ["x"], actor="cli") is None


@pytest.mark.parametrize("revocation", [
    pytest.param(Revocation(), id="everything"),
    pytest.param(Revocation(user_id=7), id="user"),
    pytest.param(Revocation(token_hash=token_hash("x")), id="session"),
])
def test_the_notify_payload_round_trips(revocation: Revocation) -> None:
    assert decode_revocation(encode_revocation(revocation)) == revocation
    assert revocation.everything == (encode_revocation(revocation) == "*")


@pytest.mark.parametrize("payload", ["", "**", "u:", "u:x", "s:abc", "a:*"])
def test_a_malformed_notify_payload_is_nothing(payload: str) -> None:
    assert decode_revocation(payload) is None
