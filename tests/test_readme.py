"""The README's shell snippets, run as written (with a private port and database)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
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


@pytest.mark.skipif(shutil.which("curl") is None and os.environ.get("GATEWAY_TEST_STRICT") != "1",
                    reason="curl not installed")
def test_try_it_snippet(sandbox: Path) -> None:
    port = str(free_port())
    dev = sandbox / "config" / "dev.toml"
    dev.write_text(dev.read_text().replace("4180", port))
    snippet = code_block_after("Try it from a second terminal").replace("4180", port)
    env = clean_env()
    server = subprocess.Popen([str(sandbox / ".venv/bin/gateway"), "serve", "--config", "config/dev.toml"],
                              cwd=sandbox, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        # POSIX sh, as a reader's /bin/sh may be: dash (Debian's sh) when installed, so bash-only syntax fails.
        result = subprocess.run([shutil.which("dash") or "sh", "-eu", "-c", snippet], cwd=sandbox, env=env,
                                capture_output=True, text=True, timeout=60, check=False)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(20)
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
