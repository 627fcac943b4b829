"""A running gateway for endpoint tests: real app, real store (SQLite or Postgres), a clock tests can move."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from gateway.access import Policy
from gateway.app import CHECKER, METRICS, STORE, create_app
from gateway.models import SessionKind, User
from gateway.serving.fastlane import FastLane
from gateway.serving.server import front_end, runner_options
from gateway.sessions import start_session
from gateway.settings import Settings
from gateway.store.base import Store
from gateway.tokens import hash_token
from tests.helpers import make_settings, store_for


class FakeClock:
    """Unix time that only moves when a test says so."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Gateway:
    """One gateway under test and handles on its parts."""

    client: TestClient[web.Request, web.Application]
    app: web.Application
    settings: Settings
    clock: FakeClock
    users: dict[str, User] = field(default_factory=dict)

    @property
    def store(self) -> Store:
        return self.app[STORE]

    async def user(self, email: str, *, roles: Sequence[str] = (), name: str = "", username: str = "",
                   upstream: str = "test") -> User:
        """Enrol (or refresh) a user keyed by email."""
        user = await self.store.upsert_user(upstream, email.lower(), email=email, name=name, username=username,
                                            roles=roles, login_at=self.clock())
        self.users[email] = user
        return user

    async def token(self, email: str = "ada@example.com", *, roles: Sequence[str] = (),
                    kind: SessionKind = "browser", lifetime: float | None = None, **user_fields: Any) -> str:
        """A fresh token for a (new or existing) user."""
        user = await self.user(email, roles=roles, **user_fields)
        token, _ = await start_session(self.store, self.settings.session, user_id=user.id, kind=kind,
                                       now=self.clock(), lifetime=lifetime)
        return token

    def metric(self, name: str, **labels: str) -> float:
        """Current value of one sample of this gateway's metrics (0 when absent)."""
        value = self.app[METRICS].registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    async def revoke_elsewhere(self, token: str) -> bool:
        """Revoke ``token`` through a second store on the same database, as another replica would."""
        other = store_for(self.settings)
        await other.open()
        try:
            return await other.revoke_session(hash_token(token), actor="admin", reason="test")
        finally:
            await other.close()

    def flush_cache(self) -> None:
        """Forget every cached session, as after a lost revocation feed."""
        self.app[CHECKER].cache.flush()


GatewayFactory = Callable[..., Awaitable[Gateway]]

FRONT_ENDS = ("fastlane", "aiohttp")
"""What serves the port in endpoint tests: the production listener (fast lane, handing everything
it does not answer to aiohttp), or aiohttp alone (as with ``fast_lane = false``)."""


class ListenerTestServer(TestServer):
    """A TestServer whose socket is served by :func:`gateway.serving.server.front_end`, as in production."""

    def __init__(self, app: web.Application, settings: Settings) -> None:
        super().__init__(app)
        self._settings = settings
        self._listener: asyncio.Server | None = None
        self._front: Callable[[], asyncio.Protocol] | None = None

    async def start_server(self, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any) -> None:
        if self.runner:
            return
        self.runner = await self._make_runner(handler_cancellation=True, **kwargs)
        await self.runner.setup()
        assert isinstance(self.runner, web.AppRunner)
        self._front = front_end(self.app, self.runner, self._settings.serving)
        self._listener = await asyncio.get_running_loop().create_server(self._front, self.host, 0)
        self.port = self._listener.sockets[0].getsockname()[1]
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")

    async def close(self) -> None:
        if self._listener is not None and not self.closed:
            self._listener.close()
            if isinstance(self._front, FastLane):
                await self._front.shutdown(1.0)
        await super().close()


def _gateway_factory(aiohttp_client: Any, default_url: str, frontend: str) -> Callable[..., Awaitable[Gateway]]:
    async def start(*, policy: Policy | None = None, database_url: str | None = None,
                    **overrides: Any) -> Gateway:
        overrides.setdefault("database_url", database_url or default_url)
        overrides.setdefault("fast_lane", frontend == "fastlane")
        settings = make_settings(overrides)
        clock = FakeClock()
        app = create_app(settings, policy=policy, clock=clock)
        server = ListenerTestServer(app, settings)
        await server.start_server(**runner_options(settings.serving))
        client = await aiohttp_client(server)
        return Gateway(client, app, settings, clock)
    return start


@pytest.fixture
def frontend() -> str:
    """The front-end endpoint tests run through; modules that test the check path run both."""
    return "fastlane"


@pytest.fixture
async def gateway_factory(aiohttp_client: Any, tmp_path: Any, frontend: str) -> AsyncIterator[GatewayFactory]:
    """Start gateways on a fresh SQLite file (pass ``database_url=`` for Postgres)."""
    yield _gateway_factory(aiohttp_client, f"sqlite:///{tmp_path}/gateway.db", frontend)


@pytest.fixture
async def gw(gateway_factory: GatewayFactory) -> Gateway:
    """A gateway with default settings on SQLite."""
    return await gateway_factory()
