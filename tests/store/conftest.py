"""Store fixtures for every suite here, on every backend in turn (``database_url``) unless a module narrows it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway.settings import Settings
from gateway.store import Store
from tests.helpers import store_for
from tests.store.storekit import StoreFactory

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str:
    """A fresh, empty database for the backend under test: every backend in turn (a module may narrow it by
    defining its own ``database_url``)."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
async def store_factory(database_url: str, settings_factory: Callable[..., Settings]
                        ) -> AsyncIterator[StoreFactory]:
    """Open more stores (by default on the test's database); all are closed after the test."""
    stores: list[Store] = []

    async def factory(url: str | None = None, **overrides: Any) -> Store:
        store = store_for(settings_factory(database_url=url or database_url, **overrides))
        stores.append(store)
        await store.open()
        return store

    yield factory
    for store in stores:
        await store.close()


@pytest.fixture
async def store(store_factory: StoreFactory) -> Store:
    """An open store with the schema migrated."""
    opened = await store_factory()
    await opened.migrate()
    return opened
