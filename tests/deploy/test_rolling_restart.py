"""A rolling restart behind real nginx: two gateways on one database, one restarted under load, no request fails."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path

import aiohttp

from tests.deploy.stack import (
    COOKIE,
    Gateway,
    http,
    render_site,
    site_substitutions,
    start_echo,
    start_gateway,
    start_nginx,
)
from tests.helpers import free_port


def gateway_on(directory: Path, port: int, database: Path,
               public_url: str) -> contextlib.AbstractContextManager[Gateway]:
    """``gateway serve`` on ``port`` with the shared SQLite ``database`` and no access rules."""
    return start_gateway(directory, port=port, public_url=public_url, redirect_hosts=["127.0.0.1"], access_toml="",
                         database=database)


async def test_no_request_fails_while_one_of_two_gateways_restarts(tmp_path: Path) -> None:
    nginx_port, port_a, port_b = free_port(), free_port(), free_port()
    public_url = f"http://127.0.0.1:{nginx_port}"
    database = tmp_path / "shared.db"
    with contextlib.ExitStack() as stack:
        echo = stack.enter_context(start_echo(tmp_path))
        first_a = stack.enter_context(gateway_on(tmp_path / "a1", port_a, database, public_url))
        stack.enter_context(gateway_on(tmp_path / "b", port_b, database, public_url))
        # the very deploy/nginx/protect-app.conf, with a second gateway in its upstream block
        site = render_site("protect-app.conf", {
            **site_substitutions(listen_port=nginx_port, gateway_port=port_a, app_port=echo.port),
            "keepalive 32;": f"server 127.0.0.1:{port_b};\n    keepalive 32;",
        })
        stack.enter_context(start_nginx(tmp_path / "nginx", site, nginx_port))
        token = first_a.mint("rolling@example.com")

        statuses: list[int] = []
        done = asyncio.Event()

        async def client() -> None:
            async with aiohttp.ClientSession() as session:
                while not done.is_set():
                    async with session.get(public_url + "/app", headers={"Cookie": f"{COOKIE}={token}",
                                                                         "Accept": "application/json"}) as resp:
                        statuses.append(resp.status)

        load = [asyncio.create_task(client()) for _ in range(8)]
        try:
            await asyncio.sleep(1.0)
            # restart gateway A: SIGTERM, wait for a clean exit, start it again on the same port
            first_a.proc.send_signal(signal.SIGTERM)
            exit_code = await asyncio.to_thread(first_a.proc.wait, 30)
            assert exit_code == 0, first_a.log_text()
            served_during_restart = len(statuses)
            restarted = stack.enter_context(gateway_on(tmp_path / "a2", port_a, database, public_url))
            await asyncio.sleep(1.0)
        finally:
            done.set()
            await asyncio.gather(*load, return_exceptions=True)
        assert len(statuses) > served_during_restart > 50
        failures = [s for s in statuses if s != 200]
        assert failures == [], f"{len(failures)} of {len(statuses)} requests failed: {sorted(set(failures))}"
        assert "stopped" in first_a.log_text()
        started = time.monotonic()
        while http("GET", restarted.url + "/readyz", timeout=1).status != 200:
            assert time.monotonic() - started < 10
            await asyncio.sleep(0.1)
