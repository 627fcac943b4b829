"""Helpers shared by the Store suites: the conformance suite and the backend-specific ones."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from gateway.models import Revocation
from gateway.store import Store, migration_scripts

StoreFactory = Callable[..., Awaitable[Store]]
APPROX = 1e-3  # Postgres keeps microseconds; floats round-trip to well within a millisecond
VERSIONS = [version for version, _ in migration_scripts("sqlite")]
"""Every migration, in order (tests/store/test_conformance.py holds that PostgreSQL's are the same)."""


def token_hash(label: str) -> str:
    """A distinct, well-formed session key per label."""
    return hashlib.sha256(label.encode()).hexdigest()


async def eventually(predicate: Callable[[], bool], timeout: float = 1.0) -> bool:
    """Let the event loop run until ``predicate()`` holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True



async def make_user(store: Store, subject: str = "alice", **fields: Any) -> int:
    fields.setdefault("email", f"{subject}@example.com")
    return (await store.upsert_user("oidc", subject, **fields)).id


async def make_session(store: Store, user_id: int, label: str, *, now: float | None = None,
                       lifetime: float = 3600, idle_timeout: float = 600, kind: Any = "browser") -> str:
    start = time.time() if now is None else now
    h = token_hash(label)
    await store.create_session(token_hash=h, user_id=user_id, kind=kind, now=start,
                               expires_at=start + lifetime, idle_timeout=idle_timeout)
    return h


@contextlib.asynccontextmanager
async def watching(store: Store) -> AsyncIterator[tuple[list[Revocation], list[bool]]]:
    """Run ``store.watch_revocations`` in a task; yield what it reported; cancel it afterwards."""
    revocations: list[Revocation] = []
    states: list[bool] = []
    task = asyncio.create_task(store.watch_revocations(revocations.append, states.append))
    try:
        assert await eventually(lambda: states == [True], timeout=5), states
        yield revocations, states
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
