"""The processes the security corpus attacks, started once per run and shared by every module of the corpus.

Built from :mod:`tests.deploy.stack` (and the Caddyfile rendering of :mod:`tests.deploy.test_caddy`), with
what the corpus needs on top:

- the recording echo app of :mod:`tests.security.echo` as the protected app, so a case sees every request
  the app received, even one whose answer never came back;
- two ``gateway serve`` processes on one SQLite database: one with the fast lane (behind the proxies),
  one with aiohttp alone (``fast_lane = false``), both at log level debug and trusting only 127.0.0.1, so a
  client bound to 127.0.0.2 is an untrusted peer;
- real nginx running ``deploy/nginx/protect-app.conf``, real Caddy running ``deploy/caddy/Caddyfile`` and real
  HAProxy running ``deploy/haproxy/haproxy.cfg``, only their placeholders substituted (Caddy's site also
  answers to ``app.example.com``, the name the host tricks use, as the shipped file does);
- a malicious OIDC provider (:class:`tests.fakes.oidc.FakeOIDC`, served from a thread) and a gateway that
  signs in with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.deploy import stack as deploy_stack
from tests.deploy.stack import (
    COOKIE,
    DEFAULT_ACCESS_TOML,
    Gateway,
    HAProxy,
    Nginx,
    find_haproxy,
    find_nginx,
    http,
    port_open,
    render_haproxy,
    render_site,
    running,
    sign_in,
    site_substitutions,
    start_haproxy,
    start_nginx,
    unavailable,
    wait_until,
)
from tests.deploy.test_caddy import CADDYFILE, render_caddyfile
from tests.fakes.oidc import FakeOIDC, FakeUser, Knobs
from tests.helpers import free_port

TRUSTED_PEER = "127.0.0.1"
"""nginx, Caddy, HAProxy and the corpus's "trusted proxy" connect from here."""
UNTRUSTED_PEER = "127.0.0.2"
"""A client binding this loopback address is not in the gateways' trusted_proxies."""
APP_HOST = "app.example.com"
"""The site name the host tricks play with; Caddy's site answers to it, nginx's only server takes anything."""
DENIED_PREFIXES = ("/forbidden", "/api/forbidden")
"""The access rules deny ``/forbidden/**`` and ``/api/forbidden/**`` (each covering the prefix itself)."""

GATEWAY_ENV = {
    "GATEWAY_LOG_LEVEL": "debug",  # the most the gateway ever logs: a leak anywhere shows
    "GATEWAY_TRUSTED_PROXIES": f"{TRUSTED_PEER}/32,::1/128",
    "GATEWAY_LOGIN_LOCKOUT_THRESHOLD": "1000000",  # forged sign-ins must be judged, not locked out
    "GATEWAY_LOGIN_RATE_LIMIT": "1000000",
}


# ---- the recording echo app -----------------------------------------------------------------------------

@dataclass
class Echo:
    """The running recording echo app."""

    port: int
    control_port: int
    log: Path

    def count(self) -> int:
        """How many requests the app has received so far."""
        return int(self._seen(0)["count"])

    def since(self, mark: int) -> list[dict[str, Any]]:
        """Every request the app received after the first ``mark`` ones."""
        requests: list[dict[str, Any]] = self._seen(mark)["requests"]
        return requests

    def _seen(self, since: int) -> dict[str, Any]:
        reply = http("GET", f"http://127.0.0.1:{self.control_port}/seen?since={since}", timeout=10)
        assert reply.status == 200, reply
        data: dict[str, Any] = reply.json()
        return data


@contextlib.contextmanager
def start_echo(directory: Path) -> Iterator[Echo]:
    """Run the recording echo app until the block ends."""
    port, control = free_port(), free_port()
    log = directory / "echo.log"
    args = [sys.executable, "-m", "tests.security.echo", "--port", str(port), "--control-port", str(control)]
    with running(args, log) as proc:
        wait_until(lambda: port_open(port) and port_open(control), "echo app", proc=proc, log=log)
        yield Echo(port, control, log)


# ---- gateways -----------------------------------------------------------------------------------------

@contextlib.contextmanager
def start_gateway(directory: Path, *, public_url: str, redirect_hosts: Sequence[str], database: Path,
                  env: Mapping[str, str] = GATEWAY_ENV, access_toml: str = DEFAULT_ACCESS_TOML,
                  extra_toml: str = "", port: int | None = None) -> Iterator[Gateway]:
    """:func:`tests.deploy.stack.start_gateway` on a free port, with the corpus's ``env`` settings."""
    with deploy_stack.start_gateway(directory, port=port or free_port(), public_url=public_url,
                                    redirect_hosts=redirect_hosts, access_toml=access_toml, extra_toml=extra_toml,
                                    database=database, env=env) as gateway:
        yield gateway


# ---- Caddy ---------------------------------------------------------------------------------------------

@dataclass
class Caddy:
    """A running Caddy with the deploy Caddyfile."""

    port: int
    directory: Path

    @property
    def url(self) -> str:
        """The site's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        """Caddy's output so far."""
        return (self.directory / "caddy.log").read_text(errors="replace")


def render_caddy_site(directory: Path, *, port: int, gateway_port: int, app_port: int) -> str:
    """deploy/caddy/Caddyfile rendered as tests/deploy/test_caddy.py does; the site also named APP_HOST."""
    text = render_caddyfile(CADDYFILE.read_text(), caddy_port=port, gateway_port=gateway_port, app_port=app_port,
                            workdir=directory)
    site = f"http://127.0.0.1:{port} {{"
    assert text.count(site) == 1, f"expected one site block {site!r} in the rendered Caddyfile"
    return text.replace(site, f"http://127.0.0.1:{port}, http://{APP_HOST}:{port} {{")


# ---- the whole stack ------------------------------------------------------------------------------------

@dataclass
class Tokens:
    """Session tokens of every kind the corpus needs, all for users the access rules let in."""

    valid: str
    """A browser session (signed in through nginx with the dev upstream)."""
    other: str
    """An API token of another user."""
    revoked: str
    expired: str

    def all(self) -> list[str]:
        """Every token, for the leak checks."""
        return [self.valid, self.other, self.revoked, self.expired]


@dataclass
class SecurityStack:
    """Everything classes 1-8 attack."""

    directory: Path
    echo: Echo
    gateway: Gateway
    """Fast lane on; nginx, Caddy and HAProxy check with it."""
    plain: Gateway
    """aiohttp alone (``fast_lane = false``), same database."""
    nginx: Nginx
    caddy: Caddy | None
    tokens: Tokens
    caddy_problem: str = ""
    haproxy: HAProxy | None = None
    haproxy_problem: str = ""

    @property
    def gateways(self) -> dict[str, Gateway]:
        """The two front-ends, by name."""
        return {"fastlane": self.gateway, "aiohttp": self.plain}

    def logs(self) -> list[Path]:
        """The gateway log files a case's leak check reads."""
        return [self.gateway.log, self.plain.log]

    def require_caddy(self) -> Caddy:
        """Caddy, or skip (fail under GATEWAY_TEST_STRICT=1) when it could not be started."""
        if self.caddy is None:
            unavailable(self.caddy_problem or "caddy is not available")
        assert self.caddy is not None
        return self.caddy

    def require_haproxy(self) -> HAProxy:
        """HAProxy, or skip (fail under GATEWAY_TEST_STRICT=1) when it could not be started."""
        if self.haproxy is None:
            unavailable(self.haproxy_problem or "haproxy is not available")
        assert self.haproxy is not None
        return self.haproxy

    def port_of(self, front: str) -> int:
        """The port of a proxy by name ("nginx", "caddy", "haproxy"); skips for a proxy that is missing."""
        if front == "caddy":
            return self.require_caddy().port
        if front == "haproxy":
            return self.require_haproxy().port
        assert front == "nginx", front
        return self.nginx.port


def _wait_refused(gateway: Gateway, token: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while http("GET", gateway.url + "/auth/check", [("Authorization", f"Bearer {token}")]).status != 401:
        assert time.monotonic() < deadline, "a revoked or expired token is still accepted"
        time.sleep(0.1)


def make_tokens(gateway: Gateway, nginx_url: str) -> Tokens:
    """Sign in, mint, revoke and let expire the corpus's tokens (a few seconds, once per run)."""
    valid = sign_in(nginx_url, "ada@example.com").token
    other = gateway.mint("bob@example.com")
    expired = gateway.mint("old@example.com", ttl="1s")
    revoked = gateway.mint("gone@example.com")
    assert http("GET", gateway.url + "/auth/check", [("Authorization", f"Bearer {revoked}")]).status == 200
    gateway.cli("tokens", "revoke", "-", stdin=revoked + "\n")
    _wait_refused(gateway, revoked)
    _wait_refused(gateway, expired)
    for token in (valid, other):
        reply = http("GET", gateway.url + "/auth/check", [("Cookie", f"{COOKIE}={token}")])
        assert reply.status == 200, f"a fresh token is refused ({reply.status}): the corpus would prove nothing"
    return Tokens(valid, other, revoked, expired)


def redirect_hosts(nginx_port: int, caddy_port: int) -> list[str]:
    """Where ``rd`` may point: both sites, the app's name, and every sub-domain of corp.example.com."""
    return [f"127.0.0.1:{nginx_port}", f"localhost:{nginx_port}", f"127.0.0.1:{caddy_port}",
            APP_HOST, ".corp.example.com"]


@contextlib.contextmanager
def start_security_stack(directory: Path) -> Iterator[SecurityStack]:
    """Start everything classes 1-8 need; stop it all at the end. nginx is required, Caddy and HAProxy
    optional (their cases skip, or fail under strict mode, without them)."""
    if find_nginx() is None:
        unavailable("nginx not found (apt-get install nginx)")
    nginx_port, caddy_port = free_port(), free_port()
    nginx_url = f"http://127.0.0.1:{nginx_port}"
    database = directory / "gateway.db"
    hosts = redirect_hosts(nginx_port, caddy_port)
    with contextlib.ExitStack() as stack:
        echo = stack.enter_context(start_echo(directory))
        gateway = stack.enter_context(start_gateway(directory / "fastlane", public_url=nginx_url,
                                                    redirect_hosts=hosts, database=database))
        plain = stack.enter_context(start_gateway(directory / "aiohttp", public_url=nginx_url, redirect_hosts=hosts,
                                                  database=database, env={**GATEWAY_ENV, "GATEWAY_FAST_LANE": "false"}))
        site = render_site("protect-app.conf", site_substitutions(listen_port=nginx_port, gateway_port=gateway.port,
                                                                  app_port=echo.port))
        nginx = stack.enter_context(start_nginx(directory / "nginx", site, nginx_port))
        caddy: Caddy | None = None
        problem = ""
        if shutil.which("caddy") is None:
            problem = "the caddy binary is not installed (Debian: apt-get install caddy)"
        else:
            caddy = stack.enter_context(_caddy_on(directory / "caddy", caddy_port, gateway.port, echo.port))
        haproxy: HAProxy | None = None
        haproxy_problem = ""
        if find_haproxy() is None:
            haproxy_problem = "haproxy not found (apt-get install haproxy)"
        else:
            haproxy_port = free_port()
            config = render_haproxy(listen_port=haproxy_port, gateway_url=gateway.url, gateway_port=gateway.port,
                                    app_port=echo.port)
            haproxy = stack.enter_context(start_haproxy(directory / "haproxy", config, haproxy_port))
        tokens = make_tokens(gateway, nginx_url)
        yield SecurityStack(directory, echo, gateway, plain, nginx, caddy, tokens, problem, haproxy, haproxy_problem)


@contextlib.contextmanager
def _caddy_on(directory: Path, port: int, gateway_port: int, app_port: int) -> Iterator[Caddy]:
    directory.mkdir(parents=True, exist_ok=True)
    binary = shutil.which("caddy")
    assert binary is not None
    caddyfile = directory / "Caddyfile"
    caddyfile.write_text(render_caddy_site(directory, port=port, gateway_port=gateway_port, app_port=app_port))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
           "HOME": str(directory / "home"), "XDG_DATA_HOME": str(directory / "xdg-data"),
           "XDG_CONFIG_HOME": str(directory / "xdg-config")}
    log = directory / "caddy.log"
    with running([binary, "run", "--config", str(caddyfile), "--adapter", "caddyfile"], log, env=env) as proc:
        wait_until(lambda: port_open(port), "caddy", proc=proc, log=log)
        yield Caddy(port, directory)


# ---- the malicious OIDC provider ------------------------------------------------------------------------

class ThreadedServer:
    """An aiohttp app served from a background thread's event loop (for fakes used by subprocesses)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="corpus-fake", daemon=True)
        self._servers: list[TestServer] = []

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run ``coro`` on the thread's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def serve(self, app: web.Application, **kwargs: Any) -> TestServer:
        """Serve ``app`` on a free port of 127.0.0.1 (call through :meth:`run`)."""
        server = TestServer(app, host="127.0.0.1", **kwargs)
        await server.start_server()
        self._servers.append(server)
        return server

    def stop(self) -> None:
        """Close every server, stop the loop and join the thread."""
        async def close_all() -> None:
            for server in self._servers:
                await server.close()

        with contextlib.suppress(Exception):
            self.run(close_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


ALICE = FakeUser(sub="user-alice", email="alice@example.com", name="Alice Liddell", preferred_username="alice")


def honest_knobs(fake: FakeOIDC) -> Knobs:
    """How the fake behaves between cases: correctly, and promising (and sending) RFC 9207's ``iss`` on the
    way back, so a callback without it is a forgery too. Set before the gateway reads the discovery
    document, which it then caches for the whole run."""
    return Knobs(advertise_iss_parameter=True, callback_iss=fake.issuer)


@dataclass
class OidcStack:
    """A gateway whose ``corp`` upstream is a fake OIDC provider the cases make misbehave."""

    fake: FakeOIDC
    gateway: Gateway
    client_secret: str
    secrets_seen: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        """The gateway's base URL (its own public_url)."""
        return self.gateway.url

    def logs(self) -> list[Path]:
        """The gateway log file a case's leak check reads."""
        return [self.gateway.log]


@contextlib.contextmanager
def start_oidc_stack(directory: Path) -> Iterator[OidcStack]:
    """The fake provider in a thread and a gateway signing in with it, until the block ends."""
    server = ThreadedServer()
    server.start()
    try:
        fake = FakeOIDC(users=[ALICE])
        server.run(fake.start(server.serve))
        fake.knobs = honest_knobs(fake)
        config = fake.config()
        table = "\n".join(f"{key} = {json.dumps(value)}" for key, value in config.items())
        port = free_port()
        public_url = f"http://127.0.0.1:{port}"  # the callback comes straight back to the gateway
        with start_gateway(directory, public_url=public_url, redirect_hosts=[f"127.0.0.1:{port}"],
                           database=directory / "gateway.db", extra_toml=f"[upstreams.corp]\n{table}\n",
                           port=port) as gateway:
            yield OidcStack(fake, gateway, str(config["client_secret"]))
    finally:
        server.stop()
