"""deploy/caddy/Caddyfile against a REAL Caddy, the gateway (`gateway serve`) and an app that echoes its request.

The Caddy configuration is generated from deploy/caddy/Caddyfile by substituting its placeholders, so what
is tested is what users copy. Caddy, the gateway and the echo app each run as a subprocess on a free port of
127.0.0.1; every wait is bounded and every process is stopped in ``finally``.

Needs the ``caddy`` binary (Debian: ``apt-get install caddy``); skipped without it, failed under
GATEWAY_TEST_STRICT=1.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from tests.deploy.stack import Reply as StackReply
from tests.deploy.stack import (
    assert_api_tokens_are_the_gateways,
    assert_device_grant_is_the_gateways,
    assert_renewed_cookie_reaches_the_browser,
    http,
    refresh_toml,
    unavailable,
)
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
CADDYFILE = ROOT / "deploy" / "caddy" / "Caddyfile"
COOKIE = "gw_session"
HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
IDENTITY = ("X-Auth-Request-User", "X-Auth-Request-Email", "X-Auth-Request-Groups", "X-Auth-Request-User-Id")
SPOOFED = [("X-Auth-Request-User", "mallory"), ("X-Auth-Request-Email", "mallory@evil.example"),
           ("X-Auth-Request-Groups", "admin"), ("X-Auth-Request-User-Id", "1"),
           ("x-auth-request-user", "mallory-lowercase"), ("X-Auth-Request-Admin", "true")]
# The placeholders in deploy/caddy/Caddyfile: (pattern, what the test puts there).
PLACEHOLDERS = {"site": r"(?<![\w.-])app\.example\.com(?![\w.-])", "gateway": r"(?<![\w.-])gateway:4180\b",
                "app": r"(?<![\w.-])app:8080\b"}
WAIT = 30.0

ECHO_APP = r'''
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

seen, lock = [], threading.Lock()


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        if self.path == "/__seen":
            with lock:
                out = json.dumps(seen).encode()
        else:
            record = {"method": self.command, "path": self.path, "body": body,
                      "headers": [[k, v] for k, v in self.headers.items()]}
            with lock:
                seen.append(record)
            out = json.dumps(record).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = answer

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
'''


# --- HTTP: the stack's exact client (no redirects, no jar), with a stricter header() ----------------------

class Reply(StackReply):
    """A reply whose ``header`` insists the header came at most once (duplicates would hide spoofing)."""

    def header(self, name: str) -> str | None:
        values = self.all(name)
        assert len(values) <= 1, f"{name} sent {len(values)} times: {values}"
        return values[0] if values else None


def http_request(port: int, method: str, target: str, headers: Sequence[tuple[str, str]] = (),
                 body: bytes | None = None) -> Reply:
    reply = http(method, f"http://127.0.0.1:{port}{target}", headers, body, timeout=15)
    return Reply(reply.status, list(reply.headers), reply.body)


def app_headers(reply: Reply) -> list[tuple[str, str]]:
    """The headers the echo app received, from its JSON answer."""
    record = reply.json()
    assert isinstance(record["headers"], list)
    return [(str(k), str(v)) for k, v in record["headers"]]


def auth_headers_seen(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower().startswith("x-auth-request-")]


# --- the stack: echo app, gateway, Caddy --------------------------------------------------------------

@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)


def start(name: str, argv: Sequence[str], env: dict[str, str], workdir: Path) -> Proc:
    log = workdir / f"{name}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(list(argv), env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=workdir)
    return Proc(name, proc, log)


def wait_until_ok(proc: Proc, port: int, path: str, deadline: float) -> None:
    while True:
        try:
            if http_request(port, "GET", path).status == 200:
                return
        except OSError:
            pass
        assert proc.proc.poll() is None, f"{proc.name} exited ({proc.proc.returncode}):\n{proc.text()}"
        assert time.monotonic() < deadline, f"{proc.name} never answered 200 on {path}:\n{proc.text()}"
        time.sleep(0.1)


def render_caddyfile(source: str, *, caddy_port: int, gateway_port: int, app_port: int, workdir: Path) -> str:
    """deploy/caddy/Caddyfile with its placeholders filled in, behind test-only global options."""
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("#"))
    assert not code.lstrip().startswith("{"), "the deploy Caddyfile must not carry a global options block"
    for name, pattern in PLACEHOLDERS.items():
        assert re.search(pattern, code), f"placeholder {name} ({pattern}) missing from {CADDYFILE}"
    values = {"site": f"http://127.0.0.1:{caddy_port}", "gateway": f"127.0.0.1:{gateway_port}",
              "app": f"127.0.0.1:{app_port}"}
    rendered = source
    for name, pattern in PLACEHOLDERS.items():
        rendered = re.sub(pattern, values[name], rendered)
    rendered_code = [line for line in rendered.splitlines() if not line.lstrip().startswith("#")]
    leftovers = [line for line in rendered_code if re.search(r"example\.com|gateway:4180|app:8080", line)]
    assert not leftovers, f"unsubstituted placeholders: {leftovers}"
    # Test-only global options: no admin endpoint, plain http, loopback only, state under the temp dir.
    global_options = ("{\n\tadmin off\n\tauto_https off\n\tdefault_bind 127.0.0.1\n"
                      f"\tstorage file_system {workdir / 'caddy-data'}\n}}\n\n")
    return global_options + rendered


@dataclass
class Stack:
    caddy_port: int
    gateway_port: int
    app_port: int
    gateway_env: dict[str, str]
    procs: dict[str, Proc] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.caddy_port}"

    def get(self, target: str, *headers: tuple[str, str], method: str = "GET", body: bytes | None = None) -> Reply:
        """A request to Caddy (the site)."""
        return http_request(self.caddy_port, method, target, headers, body)

    def mint(self, email: str, *roles: str) -> str:
        argv = [sys.executable, "-m", "gateway", "tokens", "mint", "--email", email]
        for role in roles:
            argv += ["--role", role]
        done = subprocess.run(argv, env=self.gateway_env, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def gateway_says(self, token: str) -> dict[str, str]:
        """The identity headers the gateway itself answers for this token (asked directly, not via Caddy)."""
        reply = http_request(self.gateway_port, "GET", "/auth/check", [("Authorization", f"Bearer {token}")])
        assert reply.status == 200
        return {name: reply.header(name) or "" for name in IDENTITY}

    def app_saw(self, path_prefix: str) -> list[dict[str, object]]:
        """Requests the echo app received whose path starts with ``path_prefix`` (asked directly)."""
        seen = json.loads(http_request(self.app_port, "GET", "/__seen").body)
        return [r for r in seen if str(r["path"]).startswith(path_prefix)]

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.text()}" for p in self.procs.values())


GATEWAY_TOML = """\
listen = "127.0.0.1:{gateway_port}"
public_url = "http://127.0.0.1:{caddy_port}"
database_url = "sqlite:///{db}"
trusted_proxies = ["127.0.0.0/8", "::1/128"]
log_format = "json"
log_level = "debug"

[cookie]
secure = false

[upstreams.dev]
type = "dev"

# Signed-in users without the admin role are refused under /admin (403), to prove the path Caddy
# reports is the one judged.
[[access.rules]]
action = "allow"
paths = ["/admin"]
groups = ["admin"]
[[access.rules]]
action = "deny"
paths = ["/admin"]
"""


@contextlib.contextmanager
def running_stack(workdir: Path, extra_toml: str = "") -> Iterator[Stack]:
    """Caddy (from deploy/caddy/Caddyfile), the gateway (GATEWAY_TOML, then ``extra_toml``) and the echo app,
    run under ``workdir`` until the block ends."""
    caddy = shutil.which("caddy")
    if caddy is None:
        unavailable("the caddy binary is not installed (Debian: apt-get install caddy)")
    assert caddy is not None
    ports: set[int] = set()
    while len(ports) < 3:
        ports.add(free_port())
    caddy_port, gateway_port, app_port = sorted(ports)

    config = workdir / "gateway.toml"
    config.write_text(GATEWAY_TOML.format(gateway_port=gateway_port, caddy_port=caddy_port,
                                          db=workdir / "gateway.db") + extra_toml)
    gateway_env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    gateway_env["GATEWAY_CONFIG"] = str(config)
    caddy_env = {**{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
                 "HOME": str(workdir / "home"), "XDG_DATA_HOME": str(workdir / "xdg-data"),
                 "XDG_CONFIG_HOME": str(workdir / "xdg-config")}
    caddyfile = workdir / "Caddyfile"
    caddyfile.write_text(render_caddyfile(CADDYFILE.read_text(), caddy_port=caddy_port, gateway_port=gateway_port,
                                          app_port=app_port, workdir=workdir))
    (workdir / "echo_app.py").write_text(ECHO_APP)

    result = Stack(caddy_port, gateway_port, app_port, gateway_env)
    try:
        deadline = time.monotonic() + WAIT
        result.procs["app"] = start("app", [sys.executable, str(workdir / "echo_app.py"), str(app_port)],
                                    dict(os.environ), workdir)
        result.procs["gateway"] = start("gateway", [sys.executable, "-m", "gateway", "serve"], gateway_env, workdir)
        result.procs["caddy"] = start("caddy", [caddy, "run", "--config", str(caddyfile), "--adapter", "caddyfile"],
                                      caddy_env, workdir)
        wait_until_ok(result.procs["app"], app_port, "/__seen", deadline)
        wait_until_ok(result.procs["gateway"], gateway_port, "/readyz", deadline)
        wait_until_ok(result.procs["caddy"], caddy_port, "/public/ready", deadline)
        yield result
    finally:
        for proc in reversed(list(result.procs.values())):
            with contextlib.suppress(Exception):
                proc.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("caddy-stack")) as running:
        yield running


def unique(prefix: str) -> str:
    return f"{prefix}/{uuid.uuid4().hex[:12]}"


# --- the tests ----------------------------------------------------------------------------------------

def test_deploy_caddyfile_is_formatted_and_adapts(stack: Stack, tmp_path: Path) -> None:
    """`caddy fmt` would not change it (Caddy warns about unformatted files) and it adapts as shipped."""
    caddy = shutil.which("caddy")
    assert caddy is not None
    env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    formatted = subprocess.run([caddy, "fmt", str(CADDYFILE)], capture_output=True, text=True, timeout=30,
                               env=env, check=False)
    assert formatted.returncode == 0, formatted.stderr
    assert formatted.stdout == CADDYFILE.read_text()
    adapted = subprocess.run([caddy, "adapt", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
                             capture_output=True, text=True, timeout=30, env=env, check=False)
    assert adapted.returncode == 0, adapted.stderr
    assert "/auth/check?mode=redirect" in adapted.stdout


def test_browser_without_session_gets_302_to_sign_in_with_the_original_url(stack: Stack) -> None:
    path = unique("/reports") + "?year=2026&q=a%20b"
    reply = stack.get(path, ("Accept", HTML))
    assert reply.status == 302, stack.logs()
    location = urlsplit(reply.header("Location") or "")
    assert f"{location.scheme}://{location.netloc}{location.path}" == stack.url + "/login"
    assert parse_qs(location.query) == {"rd": [stack.url + path]}
    assert stack.app_saw(path.split("?")[0]) == []


@pytest.mark.parametrize(("headers", "status"), [
    ([("Accept", "application/json")], 401),
    ([("Accept", HTML), ("X-Requested-With", "XMLHttpRequest")], 401),
    ([], 401),
    ([("Accept", "application/json"), ("Authorization", "Bearer not-a-token")], 401),
    ([("Accept", "application/json"), ("Cookie", f"{COOKIE}=gwt_{'A' * 43}")], 401),
    ([("Accept", HTML), ("Cookie", f"{COOKIE}=gwt_{'A' * 43}")], 302),  # a dead cookie: sign in again
], ids=["json", "xhr", "no-accept", "bad-bearer", "unknown-token-api", "unknown-token-browser"])
def test_api_and_xhr_callers_get_401(stack: Stack, headers: list[tuple[str, str]], status: int) -> None:
    path = unique("/api/items")
    for method, body in (("GET", None), ("POST", b'{"x": 1}')):
        reply = stack.get(path, *headers, method=method, body=body)
        assert reply.status == status, stack.logs()
        if status == 401:
            assert reply.body == b""
    assert stack.app_saw(path) == []


def test_signed_in_requests_reach_the_app_with_the_identity_headers(stack: Stack) -> None:
    token = stack.mint("ada@example.com", "user", "editor")
    expected = stack.gateway_says(token)
    assert expected["X-Auth-Request-Email"] == "ada@example.com"
    assert expected["X-Auth-Request-Groups"] == "user,editor"
    assert expected["X-Auth-Request-User-Id"].isdigit()
    path = unique("/dashboard") + "?tab=1"
    for credential in (("Cookie", f"theme=dark; {COOKIE}={token}"), ("Authorization", f"Bearer {token}")):
        reply = stack.get(path, ("Accept", HTML), credential)
        assert reply.status == 200, stack.logs()
        record = reply.json()
        assert (record["method"], record["path"]) == ("GET", path)
        seen = auth_headers_seen(app_headers(reply))
        assert sorted(seen) == sorted(expected.items())
    # The method and body reach the app untouched (forward_auth only sends a GET to the gateway).
    reply = stack.get(path, ("Cookie", f"{COOKIE}={token}"), ("Content-Type", "application/json"),
                      method="POST", body=b'{"x": 1}')
    assert reply.status == 200
    assert (reply.json()["method"], reply.json()["body"]) == ("POST", '{"x": 1}')


def test_spoofed_identity_headers_never_reach_the_app(stack: Stack) -> None:
    # anonymous, on a path the Caddyfile leaves public
    path = unique("/public/page")
    reply = stack.get(path, ("Accept", HTML), *SPOOFED)
    assert reply.status == 200
    assert auth_headers_seen(app_headers(reply)) == []
    # anonymous, on a protected path: refused, and nothing reaches the app
    protected = unique("/private")
    assert stack.get(protected, ("Accept", "application/json"), *SPOOFED).status == 401
    assert stack.app_saw(protected) == []
    # signed in: exactly the gateway's values, once each, and nothing else X-Auth-Request-*
    token = stack.mint("grace@example.com", "user")
    expected = stack.gateway_says(token)
    for credential in (("Cookie", f"{COOKIE}={token}"), ("Authorization", f"Bearer {token}")):
        reply = stack.get(protected, credential, *SPOOFED)
        assert reply.status == 200
        assert sorted(auth_headers_seen(app_headers(reply))) == sorted(expected.items())


def test_a_client_cannot_choose_the_url_the_gateway_judges(stack: Stack) -> None:
    """X-Original-* sent by the client are stripped; X-Forwarded-* are replaced by Caddy."""
    spoof = [("X-Original-URL", "https://evil.example.net/public/x"), ("X-Original-URI", "/public/x"),
             ("X-Original-Method", "GET"), ("X-Forwarded-Host", "evil.example.net"),
             ("X-Forwarded-Uri", "/public/x"), ("X-Forwarded-Proto", "https")]
    path = unique("/admin/settings")
    reply = stack.get(path, ("Accept", HTML), *spoof)
    assert reply.status == 302
    assert parse_qs(urlsplit(reply.header("Location") or "").query) == {"rd": [stack.url + path]}
    # the access rules judge the real path: a signed-in non-admin is refused under /admin
    token = stack.mint("bob@example.com", "user")
    assert stack.get(path, ("Cookie", f"{COOKIE}={token}"), *spoof).status == 403
    assert stack.get(path, ("Cookie", f"{COOKIE}={token}"), ("X-Original-Method", "GET"),
                     method="DELETE").status == 403
    assert stack.app_saw(path) == []
    admin = stack.mint("root@example.com", "admin")
    assert stack.get(path, ("Cookie", f"{COOKIE}={admin}")).status == 200


def _cookies(reply: Reply) -> dict[str, str]:
    jar = SimpleCookie()
    for value in reply.all("Set-Cookie"):
        jar.load(value)
    return {name: morsel.value for name, morsel in jar.items()}


def _local(location: str, stack: Stack) -> str:
    """A Location on the Caddy site, as a request target."""
    parts = urlsplit(location)
    assert parts.netloc in {"", f"127.0.0.1:{stack.caddy_port}"}, location
    return parts.path + ("?" + parts.query if parts.query else "")


def test_back_channel_logouts_reach_the_gateway_not_the_app(stack: Stack) -> None:
    """The dev upstream sends no back-channel logouts: the gateway itself answers 404, the app never sees it."""
    reply = http_request(stack.caddy_port, "POST", "/backchannel-logout/dev",
                         [("Content-Type", "application/x-www-form-urlencoded"), ("Accept", "application/json")],
                         b"logout_token=not-a-token")
    assert reply.status == 404 and reply.json()["error"] == "not_found"
    assert stack.app_saw("/backchannel-logout") == []


def test_sign_in_and_out_through_caddy_with_the_development_form(stack: Stack) -> None:
    """The gateway's own pages (/login, /login/dev/..., /callback/..., /auth/userinfo, /logout) live on the site."""
    path = unique("/notes") + "?draft=1"
    reply = stack.get(path, ("Accept", HTML))
    assert reply.status == 302
    reply = stack.get(_local(reply.header("Location") or "", stack), ("Accept", HTML))
    assert reply.status == 302, reply.body[:500]
    attempt = _cookies(reply)
    form_target = _local(reply.header("Location") or "", stack)
    assert form_target.startswith("/login/dev/dev?")
    state = parse_qs(urlsplit(form_target).query)["state"][0]
    cookie_header = "; ".join(f"{k}={v}" for k, v in attempt.items())
    reply = stack.get(form_target, ("Accept", HTML), ("Cookie", cookie_header))
    assert reply.status == 200 and b"<form" in reply.body
    query = urlencode({"state": state, "email": "linus@example.com", "name": "Linus"})
    reply = stack.get(f"/callback/dev?{query}", ("Accept", HTML), ("Cookie", cookie_header))
    assert reply.status == 302, reply.body[:500]
    assert _local(reply.header("Location") or "", stack) == path
    token = _cookies(reply)[COOKIE]
    assert token

    reply = stack.get(path, ("Accept", HTML), ("Cookie", f"{COOKIE}={token}"))
    assert reply.status == 200
    seen = dict(auth_headers_seen(app_headers(reply)))
    assert seen["X-Auth-Request-Email"] == "linus@example.com"
    reply = stack.get("/auth/userinfo", ("Accept", "application/json"), ("Cookie", f"{COOKIE}={token}"))
    assert reply.status == 200 and reply.json()["email"] == "linus@example.com"
    assert stack.app_saw("/auth/userinfo") == [] and stack.app_saw("/login") == []
    assert stack.app_saw("/callback") == []

    # /logout asks (and signs nobody out); its button posts the session's token back, same-origin
    reply = stack.get("/logout", ("Accept", HTML), ("Cookie", f"{COOKIE}={token}"))
    assert reply.status == 200 and not reply.all("Set-Cookie"), reply.body[:500]
    fields = {name: html.unescape(value)
              for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', reply.text)}
    assert fields["csrf_token"]
    reply = stack.get("/logout", ("Accept", HTML), ("Cookie", f"{COOKIE}={token}"), method="POST", body=b"")
    assert reply.status == 403  # no token: nothing revoked
    assert stack.get(path, ("Accept", HTML), ("Cookie", f"{COOKIE}={token}")).status == 200
    reply = stack.get("/logout", ("Accept", HTML), ("Cookie", f"{COOKIE}={token}"), ("Origin", stack.url),
                      ("Sec-Fetch-Site", "same-origin"), ("Content-Type", "application/x-www-form-urlencoded"),
                      method="POST", body=urlencode(fields).encode())
    assert reply.status == 303
    assert _cookies(reply).get(COOKIE) == ""
    reply = stack.get(path, ("Accept", HTML), ("Cookie", f"{COOKIE}={token}"))
    assert reply.status == 302
    assert stack.get("/auth/userinfo", ("Accept", "application/json"),
                     ("Cookie", f"{COOKIE}={token}")).status == 401


def test_people_mint_use_and_revoke_their_own_api_tokens_through_caddy(stack: Stack) -> None:
    assert_api_tokens_are_the_gateways(stack.url, lambda: [str(r["path"]) for r in stack.app_saw("/")])


def test_a_cli_signs_in_with_a_device_code_through_caddy(stack: Stack) -> None:
    assert_device_grant_is_the_gateways(stack.url, lambda: [str(r["path"]) for r in stack.app_saw("/")])


def test_a_renewed_sessions_cookie_reaches_the_browser_and_only_from_an_allowed_check(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """With session.refresh on: the Caddyfile's own handle_response passes the check's Set-Cookie on a 2xx."""
    workdir = tmp_path_factory.mktemp("caddy-refresh")
    with running_stack(workdir, refresh_toml()) as refreshing:
        assert_renewed_cookie_reaches_the_browser(refreshing.url, workdir / "gateway.db",
                                                  email="renewed@example.com", forbidden_path="/admin")
