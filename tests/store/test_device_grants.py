"""The ``DeviceGrants`` role on SQLite and PostgreSQL: device codes a CLI polls with while its person decides.

One suite for both backends (the fixtures in ``tests/store/conftest.py`` run every test on each): issuing,
finding by user code, deciding once, polling with slow-down bookkeeping, claiming once (also from two stores
on one database, as two replicas), purging.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest

from gateway.store import Store
from gateway.store.devicerole import DeviceGrant, PollOutcome, UserCodeTaken
from tests.store.storekit import APPROX, StoreFactory, make_session, make_user, token_hash

LIFETIME = 600.0
INTERVAL = 5.0


async def issue(store: Store, label: str = "d1", *, client_id: str = "cli", now: float | None = None,
                **fields: Any) -> DeviceGrant:
    start = time.time() if now is None else now
    values: dict[str, Any] = {"device_hash": token_hash("device " + label),
                              "user_code_hash": token_hash("user " + label), "client_id": client_id,
                              "client_addr": "203.0.113.9", "now": start, "expires_at": start + LIFETIME,
                              "interval": INTERVAL}
    values.update(fields)
    return await store.issue_device_grant(**values)


async def poll(store: Store, label: str = "d1", *, now: float, client_id: str = "cli") -> Any:
    return await store.poll_device_grant(token_hash("device " + label), client_id=client_id, now=now,
                                         slow_down_step=5.0)


async def approver(store: Store, *, now: float, subject: str = "alice") -> tuple[int, str]:
    user_id = await make_user(store, subject)
    return user_id, await make_session(store, user_id, f"browser of {subject}", now=now)


async def decide(store: Store, label: str = "d1", *, approve: bool = True, user_id: int, session_hash: str,
                 now: float) -> DeviceGrant | None:
    return await store.decide_device_grant(token_hash("user " + label), approve=approve, user_id=user_id,
                                           session_hash=session_hash, actor="user", now=now)


async def test_an_issued_grant_is_pending_and_found_by_its_user_code_until_it_expires(store: Store) -> None:
    now = time.time()
    grant = await issue(store, now=now)
    assert (grant.status, grant.client_id, grant.client_addr, grant.user_id, grant.last_polled_at) == (
        "pending", "cli", "203.0.113.9", None, None)
    assert grant.device_hash == token_hash("device d1") and grant.grant_id == token_hash("device d1")[:8]
    assert grant.expires_at == pytest.approx(now + LIFETIME, abs=APPROX) and grant.interval == INTERVAL
    found = await store.find_device_grant(token_hash("user d1"), now=now + 1)
    assert found is not None and found.device_hash == grant.device_hash
    assert await store.find_device_grant(token_hash("user d1"), now=now + LIFETIME) is None
    assert await store.find_device_grant(token_hash("user other"), now=now) is None
    assert await store.find_device_grant("not a hash", now=now) is None


@pytest.mark.parametrize(("field", "value"), [
    pytest.param("device_hash", "A" * 64, id="upper-case-hash"),
    pytest.param("user_code_hash", "abc", id="short-hash"),
    pytest.param("client_id", "", id="empty-client"),
    pytest.param("client_id", "x" * 65, id="long-client"),
    pytest.param("client_id", "cli\n", id="control-in-client"),
    pytest.param("client_id", "clé", id="non-ascii-client"),
    pytest.param("client_addr", "a" * 257, id="long-address"),
    pytest.param("client_addr", "a\x00", id="nul-in-address"),
    pytest.param("interval", 0.5, id="short-interval"),
    pytest.param("expires_at", math.inf, id="infinite-expiry"),
    pytest.param("expires_at", 0.0, id="expired-at-birth"),
])
async def test_a_malformed_grant_is_refused_and_nothing_is_stored(store: Store, field: str, value: Any) -> None:
    with pytest.raises(ValueError):
        await issue(store, **{field: value})
    assert await store.find_device_grant(token_hash("user d1"), now=time.time()) is None


async def test_a_taken_user_code_or_device_code_is_refused(store: Store) -> None:
    now = time.time()
    await issue(store, now=now)
    with pytest.raises(UserCodeTaken):
        await issue(store, "d2", now=now, user_code_hash=token_hash("user d1"))
    with pytest.raises(ValueError):
        await issue(store, "d2", now=now, device_hash=token_hash("device d1"))
    assert (await poll(store, "d2", now=now)).outcome is PollOutcome.UNKNOWN


async def test_polls_are_pending_until_decided_and_too_early_ones_slow_down_for_good(store: Store) -> None:
    now = time.time()
    await issue(store, now=now)
    first = await poll(store, now=now + 1)
    assert first.outcome is PollOutcome.PENDING and first.grant.last_polled_at == pytest.approx(now + 1, abs=APPROX)
    assert (await poll(store, now=now + 6)).outcome is PollOutcome.PENDING  # 5 s later: fine
    early = await poll(store, now=now + 8)
    assert early.outcome is PollOutcome.SLOW_DOWN and early.grant.interval == 10.0
    assert (await poll(store, now=now + 16)).outcome is PollOutcome.SLOW_DOWN  # 8 s < the new 10 s
    assert (await poll(store, now=now + 31)).outcome is PollOutcome.PENDING  # 15 s >= 15 s
    again = await store.find_device_grant(token_hash("user d1"), now=now + 31)
    assert again is not None and again.interval == 15.0


async def test_an_approved_grant_is_claimed_by_exactly_one_poll(store: Store) -> None:
    now = time.time()
    await issue(store, now=now)
    user_id, session = await approver(store, now=now)
    decided = await decide(store, user_id=user_id, session_hash=session, now=now + 2)
    assert decided is not None and (decided.status, decided.user_id) == ("approved", user_id)
    assert decided.decided_at == pytest.approx(now + 2, abs=APPROX)
    claimed = await poll(store, now=now + 3)
    assert claimed.outcome is PollOutcome.CLAIMED and claimed.grant.user_id == user_id
    assert claimed.grant.status == "claimed"
    assert (await poll(store, now=now + 20)).outcome is PollOutcome.USED
    assert (await poll(store, now=now + LIFETIME + 1)).outcome is PollOutcome.USED


async def test_concurrent_polls_from_two_stores_claim_once(store: Store, store_factory: StoreFactory) -> None:
    """Two replicas on one database, many polls at the same instant: one token, the rest see it used."""
    other = await store_factory()
    now = time.time()
    await issue(store, now=now)
    user_id, session = await approver(store, now=now)
    assert await decide(store, user_id=user_id, session_hash=session, now=now) is not None
    results = await asyncio.gather(*(poll(s, now=now + 10) for s in (store, other) * 4))
    assert sorted(r.outcome for r in results) == sorted([PollOutcome.CLAIMED] + [PollOutcome.USED] * 7)


async def test_only_one_of_two_concurrent_decisions_takes_effect(store: Store, store_factory: StoreFactory) -> None:
    other = await store_factory()
    now = time.time()
    await issue(store, now=now)
    user_id, session = await approver(store, now=now)
    results = await asyncio.gather(decide(store, user_id=user_id, session_hash=session, now=now),
                                   decide(other, approve=False, user_id=user_id, session_hash=session, now=now))
    assert sum(r is not None for r in results) == 1
    audit = [e for e in await store.list_audit(user_id=user_id) if e.event.startswith("device_")]
    assert len(audit) == 1


async def test_decisions_are_audited_with_the_client_and_its_address(store: Store) -> None:
    now = time.time()
    await issue(store, now=now, client_id="deploy-cli")
    await issue(store, "d2", now=now)
    user_id, session = await approver(store, now=now)
    await decide(store, user_id=user_id, session_hash=session, now=now)
    await decide(store, "d2", approve=False, user_id=user_id, session_hash=session, now=now)
    rows = [e for e in await store.list_audit(user_id=user_id) if e.event.startswith("device_")]
    assert [(e.event, e.actor, e.user_key) for e in rows] == [("device_deny", "user", "oidc:alice"),
                                                              ("device_approve", "user", "oidc:alice")]
    assert rows[1].detail == {"client_id": "deploy-cli", "client_addr": "203.0.113.9",
                              "grant": token_hash("device d1")[:8]}


async def test_a_grant_is_decided_only_while_pending_and_unexpired(store: Store) -> None:
    now = time.time()
    await issue(store, now=now)
    user_id, session = await approver(store, now=now)
    assert await decide(store, user_id=user_id, session_hash=session, now=now + LIFETIME) is None  # expired
    assert await decide(store, user_id=user_id, session_hash=session, now=now) is not None
    assert await decide(store, approve=False, user_id=user_id, session_hash=session, now=now) is None  # decided
    assert await decide(store, "unknown", user_id=user_id, session_hash=session, now=now) is None
    assert await decide(store, user_id=user_id, session_hash="bad", now=now) is None
    await issue(store, "d2", now=now)
    assert await decide(store, "d2", user_id=user_id + 1000, session_hash=session, now=now) is None  # no such user


async def test_a_denied_grant_answers_denied_until_it_expires(store: Store) -> None:
    now = time.time()
    await issue(store, now=now)
    user_id, session = await approver(store, now=now)
    denied = await decide(store, approve=False, user_id=user_id, session_hash=session, now=now)
    assert denied is not None and denied.status == "denied"
    assert (await poll(store, now=now + 1)).outcome is PollOutcome.DENIED
    assert (await poll(store, now=now + 2)).outcome is PollOutcome.DENIED  # terminal answers never slow down
    assert (await poll(store, now=now + LIFETIME)).outcome is PollOutcome.EXPIRED


async def test_an_expired_grant_answers_expired_and_a_wrong_client_records_nothing(store: Store) -> None:
    now = time.time()
    await issue(store, now=now)
    wrong = await poll(store, now=now + 1, client_id="someone-else")
    assert wrong.outcome is PollOutcome.WRONG_CLIENT
    assert (await poll(store, now=now + 2)).outcome is PollOutcome.PENDING  # the wrong client's poll did not count
    assert (await poll(store, now=now + LIFETIME)).outcome is PollOutcome.EXPIRED
    assert (await poll(store, "nope", now=now)).outcome is PollOutcome.UNKNOWN
    assert (await store.poll_device_grant("x" * 64, client_id="cli", now=now, slow_down_step=5)).outcome \
        is PollOutcome.UNKNOWN


async def test_a_grant_whose_approving_session_ended_is_denied_instead_of_claimed(store: Store) -> None:
    now = time.time()
    await issue(store, now=now)
    user_id, session = await approver(store, now=now)
    assert await decide(store, user_id=user_id, session_hash=session, now=now) is not None
    assert await store.revoke_session(session, actor="user", reason="logout")
    gone = await poll(store, now=now + 1)
    assert gone.outcome is PollOutcome.APPROVER_GONE and gone.grant.status == "denied"
    assert (await poll(store, now=now + 10)).outcome is PollOutcome.DENIED


async def test_deleting_the_approver_deletes_their_grants(store: Store) -> None:
    now = time.time()
    await issue(store, now=now)
    user_id, session = await approver(store, now=now)
    await decide(store, user_id=user_id, session_hash=session, now=now)
    assert await store.delete_user(user_id, actor="cli")
    assert (await poll(store, now=now + 1)).outcome is PollOutcome.UNKNOWN


async def test_purge_deletes_only_grants_that_expired_before_the_bound(store: Store) -> None:
    now = time.time()
    await issue(store, "old", now=now - 3 * LIFETIME)
    await issue(store, "recent", now=now - LIFETIME - 10)
    await issue(store, "live", now=now)
    assert await store.purge_device_grants(before=now - LIFETIME) == 1
    assert (await poll(store, "old", now=now)).outcome is PollOutcome.UNKNOWN
    assert (await poll(store, "recent", now=now)).outcome is PollOutcome.EXPIRED
    assert (await poll(store, "live", now=now)).outcome is PollOutcome.PENDING
    assert await store.purge_device_grants(before=now - LIFETIME) == 0
