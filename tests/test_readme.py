"""The README's shell snippets, run as written (with a private port and database)."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def code_block_after(marker: str) -> str:
    """The first fenced code block after the line containing ``marker``."""
    start = README.index(marker)
    match = re.search(r"```(?:sh)?\n(.*?)```", README[start:], re.S)
    assert match, marker
    return match.group(1)


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """A directory laid out like a checkout after `make`: config/ and a .venv/bin/gateway to call."""
    shutil.copytree(ROOT / "config", tmp_path / "config")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    wrapper = bin_dir / "gateway"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m gateway "$@"\n')
    wrapper.chmod(0o755)
    return tmp_path


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def test_quick_start_commands_exist_and_ci_runs_the_same_test_command() -> None:
    quick = code_block_after("## Quick start")
    assert "make run" in quick and "make test" in quick
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run: ", makefile, re.M) and re.search(r"^test: ", makefile, re.M)
    assert "config/dev.toml" in makefile
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "GATEWAY_TEST_STRICT=1" in ci


@contextlib.contextmanager
def dev_gateway(sandbox: Path) -> Iterator[str]:
    """``gateway serve --config config/dev.toml`` in ``sandbox``, moved to a free port (yielded) and ready;
    stopped with SIGTERM afterwards, as the README's reader would."""
    port = str(free_port())
    dev = sandbox / "config" / "dev.toml"
    dev.write_text(dev.read_text().replace("4180", port))
    server = subprocess.Popen([str(sandbox / ".venv/bin/gateway"), "serve", "--config", "config/dev.toml"],
                              cwd=sandbox, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        yield port
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(20)


@pytest.mark.skipif(shutil.which("curl") is None and os.environ.get("GATEWAY_TEST_STRICT") != "1",
                    reason="curl not installed")
def test_try_it_snippet(sandbox: Path) -> None:
    with dev_gateway(sandbox) as port:
        snippet = code_block_after("Try it from a second terminal").replace("4180", port)
        # POSIX sh, as a reader's /bin/sh may be: dash (Debian's sh) when installed, so bash-only syntax fails.
        result = subprocess.run([shutil.which("dash") or "sh", "-eu", "-c", snippet], cwd=sandbox, env=clean_env(),
                                capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    first = out.partition("HTTP/1.1 401")[0]
    assert "HTTP/1.1 200" in first
    assert "X-Auth-Request-Email: ada@example.com" in first
    assert '"X-Hasura-Role": "editor"' in first
    assert '"X-Hasura-Email": "ada@example.com"' in first
    assert "HTTP/1.1 401" in out
    assert (sandbox / "gateway-dev.db").exists()


def test_admin_cli_snippet_runs_line_by_line(sandbox: Path) -> None:
    env = clean_env(GATEWAY_DATABASE_URL=f"sqlite:///{sandbox}/admin.db")
    for line in code_block_after("## Admin CLI").splitlines():
        command = line.split("  #", 1)[0].strip()
        if not command:
            continue
        result = subprocess.run(["bash", "-c", command], cwd=sandbox, env=env, capture_output=True, text=True,
                                timeout=60, check=False)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"


def test_check_config_snippet(sandbox: Path) -> None:
    snippet = code_block_after("Every setting has an environment variable").strip()
    result = subprocess.run(["bash", "-c", snippet], cwd=sandbox, env=clean_env(), capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout


def test_every_toml_snippet_is_a_valid_config(tmp_path: Path) -> None:
    from gateway.settings import load_settings

    blocks = re.findall(r"```toml\n(.*?)```", README, re.S)
    assert len(blocks) >= 2
    for index, block in enumerate(blocks):
        path = tmp_path / f"snippet{index}.toml"
        path.write_text(block)
        _, problems = load_settings(path, env={})
        assert problems == [], (block, problems)


def test_deploy_snippets_are_the_files() -> None:
    """Each README block marked ``<!-- from PATH -->`` is PATH itself, or a verbatim piece of it."""
    blocks = re.findall(r"<!-- from (\S+) -->\n```[a-z]*\n(.*?)```", README, re.S)
    assert {path for path, _ in blocks} >= {"deploy/nginx/protect-app.conf", "deploy/nginx/hasura.conf",
                                            "deploy/caddy/Caddyfile", "deploy/traefik/dynamic.yml",
                                            "deploy/envoy/envoy.yaml", "deploy/haproxy/haproxy.cfg",
                                            "deploy/haproxy/auth-request.lua"}
    for path, text in blocks:
        source = (ROOT / path).read_text()
        assert text in source, f"README's copy of {path} differs from the file"
    whole = {path: text for path, text in blocks if path.endswith((".conf", "Caddyfile", ".cfg", ".lua"))}
    for path, text in whole.items():
        assert text == (ROOT / path).read_text(), f"README must show all of {path}"


def _cookies(response: http.client.HTTPResponse) -> dict[str, str]:
    """The cookies a response sets, by name (attributes dropped)."""
    jar: dict[str, str] = {}
    for header in response.headers.get_all("Set-Cookie") or ():
        name, _, rest = header.partition("=")
        jar[name.strip()] = rest.split(";", 1)[0]
    return jar


def _browser_request(port: str, method: str, path: str, jar: dict[str, str],
                     body: dict[str, str] | None = None) -> tuple[int, str, str]:
    """One request as a browser on the gateway's own page would send it; the jar takes the cookies set.
    Answers (status, Location, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=10)
    headers = {"Accept": "text/html", "Cookie": "; ".join(f"{k}={v}" for k, v in jar.items())}
    data = None
    if body is not None:
        data = urllib.parse.urlencode(body)
        headers.update({"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "same-origin",
                        "Origin": f"http://127.0.0.1:{port}"})
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        jar.update(_cookies(response))
        return response.status, response.getheader("Location") or "", response.read().decode()
    finally:
        conn.close()


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")) and os.environ.get("GATEWAY_TEST_STRICT") != "1",
                    reason="curl or jq not installed")
def test_device_sign_in_snippet(sandbox: Path) -> None:
    """The CLI's side runs as written while a browser signs in with the dev form and approves the code."""
    cli: subprocess.Popen[str] | None = None
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(dev_gateway(sandbox))
        stack.callback(lambda: cli is not None and cli.poll() is None and cli.kill())
        snippet = code_block_after("### Device sign-in for CLIs").replace("4180", port)
        cli = subprocess.Popen([shutil.which("dash") or "sh", "-eu", "-c", snippet], cwd=sandbox, env=clean_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert cli.stdout is not None
        prompt = cli.stdout.readline()
        match = re.fullmatch(r"Open (http://\S+/device\?user_code=(\S+)) and approve code (\S+)\n", prompt)
        assert match and match.group(2) == match.group(3), prompt
        # the person: signs in with the development form, follows the link, approves
        jar: dict[str, str] = {}
        status, location, _ = _browser_request(port, "GET", "/login?upstream=dev&rd=%2Fdevice", jar)
        assert status == 302 and "/login/dev/dev?state=" in location, (status, location)
        state = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)["state"][0]
        status, location, _ = _browser_request(port, "GET", "/callback/dev?" + urllib.parse.urlencode(
            {"state": state, "email": "ada@example.com"}), jar)
        assert status == 302 and "gw_session" in jar, (status, location)
        status, _, page = _browser_request(port, "GET", urllib.parse.urlsplit(match.group(1)).path + "?"
                                           + urllib.parse.urlsplit(match.group(1)).query, jar)
        csrf = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', page)
        assert status == 200 and csrf, page
        status, _, page = _browser_request(port, "POST", "/device", jar, {
            "csrf_token": csrf.group(1), "user_code": match.group(3), "action": "approve"})
        assert status == 200 and "Device approved" in page, page
        out, err = cli.communicate(timeout=60)
    assert cli.returncode == 0, err
    assert out.startswith("HTTP/1.1 200") and "X-Auth-Request-Email: ada@example.com" in out, out
