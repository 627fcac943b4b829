"""The gateway behind real nginx or HAProxy, for deployment tests: processes, generated configs, a small HTTP
client, and what every proxy's site must do (the ``assert_*`` functions at the end).

:func:`start_stack` runs three real processes on free loopback ports and stops them on exit:

- the echo app (:mod:`tests.deploy.echo_app`), standing in for the protected app;
- ``gateway serve`` with a temporary TOML config: SQLite in the test's directory, the ``dev`` sign-in
  upstream, plain-http cookies, ``public_url`` = the nginx URL and an access rule denying
  ``/forbidden/**`` and ``/api/forbidden/**``;
- nginx, configured from ``deploy/nginx/protect-app.conf`` itself (only the placeholders substituted) inside
  a minimal main ``nginx.conf`` whose pid, logs and temp files live in the test's directory.

:func:`start_haproxy_stack` does the same with HAProxy running ``deploy/haproxy/haproxy.cfg`` and its Lua
action. Without the proxy the tests skip, or fail under ``GATEWAY_TEST_STRICT=1``. A test module uses it
like this::

    @pytest.fixture(scope="module")
    def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
        with start_stack(tmp_path_factory.mktemp("stack")) as running:
            yield running

    def test_something(stack: Stack) -> None:
        token = stack.sign_in("ada@example.com")
        reply = http("GET", stack.url + "/hello", [("Cookie", f"{COOKIE}={token}")])
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote, urlencode, urljoin, urlsplit

import pytest

from gateway.sealing import new_key
from gateway.settings import DatabaseSettings
from gateway.store import make_store
from gateway.tokens import hash_token
from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[2]
NGINX_CONFIGS = REPO / "deploy" / "nginx"
COOKIE = "gw_session"
STARTUP_TIMEOUT = 30.0

DEFAULT_ACCESS_TOML = """
[access]
default = "allow"

[[access.rules]]
action = "deny"
paths = ["/forbidden/**", "/api/forbidden/**"]
"""
"""The access policy :func:`start_stack` gives the gateway unless told otherwise."""


def unavailable(reason: str) -> NoReturn:
    """Skip a test whose tools are missing, or fail it when GATEWAY_TEST_STRICT=1 demands every test run."""
    if os.environ.get("GATEWAY_TEST_STRICT") == "1":
        pytest.fail(f"{reason} (GATEWAY_TEST_STRICT=1)", pytrace=False)
    pytest.skip(reason)


def find_nginx() -> str | None:
    """The nginx binary (on PATH, or Debian's /usr/sbin/nginx, which is not on a normal user's PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def wait_until(ready: Callable[[], bool], what: str, *, timeout: float = STARTUP_TIMEOUT,
               proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    """Poll ``ready`` every 0.1 s; fail (with the log) after ``timeout`` or when ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{_tail(log)}", pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready after {timeout:.0f} s:\n{_tail(log)}", pytrace=False)
        time.sleep(0.1)


def _tail(log: Path | None, lines: int = 40) -> str:
    if log is None:
        return ""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def port_open(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Send ``sig``, wait, then kill the process's own group (it was started in a new session)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):  # its group: nginx workers outlive a killed master
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)


@contextlib.contextmanager
def running(args: Sequence[str], log: Path, *, env: Mapping[str, str] | None = None,
            stop_signal: int = signal.SIGTERM) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``args`` with stdout and stderr in ``log`` (in its own session); stop it on exit."""
    with log.open("ab") as sink:
        proc = subprocess.Popen(list(args), env=dict(env) if env is not None else None, cwd=REPO,
                                stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        yield proc
    finally:
        stop_process(proc, stop_signal)


# ---- a small HTTP client: exact control over header names, case and duplicates ------------------------

@dataclass
class Reply:
    """One HTTP response, headers in arrival order."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (any case), or None."""
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        """Every header called ``name`` (any case)."""
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    @property
    def text(self) -> str:
        """The body as text."""
        return self.body.decode("utf-8", "replace")

    def cookies(self) -> dict[str, str]:
        """``name -> value`` of every Set-Cookie (attributes dropped)."""
        out: dict[str, str] = {}
        for line in self.all("Set-Cookie"):
            name, _, value = line.split(";", 1)[0].partition("=")
            out[name.strip()] = value.strip()
        return out


def http(method: str, url: str, headers: Sequence[tuple[str, str]] = (), body: bytes | None = None,
         timeout: float = 10.0) -> Reply:
    """Send one request exactly as given (no redirects followed, no headers added but Host)."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn = HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return Reply(response.status, response.getheaders(), response.read())
    finally:
        conn.close()


def cookie_header(cookies: Mapping[str, str]) -> tuple[str, str]:
    """A ``Cookie`` request header for these cookies."""
    return ("Cookie", "; ".join(f"{k}={v}" for k, v in cookies.items()))


# ---- the processes ---------------------------------------------------------------------------------------

@dataclass
class Gateway:
    """A running ``gateway serve`` and the means to run its admin CLI against the same database."""

    url: str
    config: Path
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def port(self) -> int:
        """The port the gateway listens on (127.0.0.1)."""
        return int(self.url.rsplit(":", 1)[1])

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``gateway ARGS...`` with this gateway's config; fails the test on a non-zero exit."""
        result = subprocess.run([sys.executable, "-m", "gateway", *args], env=self.env, input=stdin, cwd=REPO,
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, f"gateway {' '.join(args)} failed:\n{result.stderr}"
        return result

    def mint(self, email: str, *roles: str, ttl: str = "1h") -> str:
        """A fresh API token for ``email`` (enrolled with ``roles`` if new)."""
        role_args = [arg for role in roles for arg in ("--role", role)]
        return self.cli("tokens", "mint", "--email", email, "--ttl", ttl, *role_args).stdout.strip()

    def metrics(self) -> str:
        """The Prometheus text of ``/metrics``, read directly from the gateway."""
        reply = http("GET", self.url + "/metrics")
        assert reply.status == 200, reply
        return reply.text

    def metric(self, name: str, **labels: str) -> float:
        """The sum of every sample called ``name`` whose labels include ``labels``."""
        return metric_sum(self.metrics(), name, **labels)

    def log_text(self) -> str:
        """Everything the gateway logged so far."""
        return self.log.read_text(errors="replace")


_SAMPLE_RE = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum the samples of ``name`` in Prometheus text format whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        match = _SAMPLE_RE.match(line)
        if not match or match.group(1) != name:
            continue
        found = dict(_LABEL_RE.findall(match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def gateway_toml(*, port: int, public_url: str, database: Path, redirect_hosts: Sequence[str],
                 access_toml: str = DEFAULT_ACCESS_TOML, extra_toml: str = "") -> str:
    """The gateway's config: dev sign-in, plain-http cookies, generous login rate limit, ``access_toml``.

    ``extra_toml`` is appended at the end, so it must start with a ``[table]`` header.
    """
    hosts = ", ".join(json.dumps(h) for h in redirect_hosts)
    return f"""\
listen = "127.0.0.1:{port}"
public_url = {json.dumps(public_url)}
database_url = {json.dumps(f"sqlite:///{database}")}
log_format = "json"
log_level = "info"

[cookie]
secure = false                  # plain http on loopback

[login]
redirect_hosts = [{hosts}]
rate_limit = 10000              # tests sign in often from 127.0.0.1

[upstreams.dev]
type = "dev"
{access_toml}
{extra_toml}
"""


def gateway_env(config: Path) -> dict[str, str]:
    """The environment for gateway processes: this one minus any GATEWAY_* setting, plus the config file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_CONFIG"] = str(config)
    return env


@contextlib.contextmanager
def start_gateway(directory: Path, *, port: int, public_url: str, redirect_hosts: Sequence[str],
                  access_toml: str = DEFAULT_ACCESS_TOML, extra_toml: str = "",
                  database: Path | None = None, env: Mapping[str, str] | None = None,
                  command: Sequence[str] | None = None) -> Iterator[Gateway]:
    """Run ``gateway serve`` (one worker; SQLite ``database``, default in ``directory``) until the block ends,
    returning once ``/readyz`` answers 200.

    ``env``: extra environment variables (``GATEWAY_*`` settings) on top of the config file; ``command``:
    another way to start the process than ``python -m gateway serve``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "gateway.toml"
    config.write_text(gateway_toml(port=port, public_url=public_url, database=database or directory / "gateway.db",
                                   redirect_hosts=redirect_hosts, access_toml=access_toml,
                                   extra_toml=extra_toml))
    env = {**gateway_env(config), **(env or {})}
    log = directory / "gateway.log"
    with running(command or [sys.executable, "-m", "gateway", "serve"], log, env=env) as proc:
        gateway = Gateway(f"http://127.0.0.1:{port}", config, env, log, proc)

        def ready() -> bool:
            try:
                return http("GET", gateway.url + "/readyz", timeout=1).status == 200
            except OSError:
                return False

        wait_until(ready, "gateway", proc=proc, log=log)
        yield gateway


@dataclass
class Echo:
    """The running echo app."""

    url: str
    port: int
    log: Path
    record: Path

    def requests(self) -> list[dict[str, str]]:
        """Every request the app has received so far, oldest first: ``{"method", "path", "raw"}``."""
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines() if line]


@contextlib.contextmanager
def start_echo(directory: Path, port: int | None = None) -> Iterator[Echo]:
    """Run the echo app as a subprocess until the block ends; it records every request it receives."""
    port = port or free_port()
    log = directory / "echo.log"
    record = directory / "echo-requests.jsonl"
    with running([sys.executable, "-m", "tests.deploy.echo_app", "--port", str(port), "--record", str(record)],
                 log) as proc:
        wait_until(lambda: port_open(port), "echo app", proc=proc, log=log)
        yield Echo(f"http://127.0.0.1:{port}", port, log, record)


# ---- nginx -----------------------------------------------------------------------------------------------

def render_site(name: str, substitutions: Mapping[str, str]) -> str:
    """``deploy/nginx/<name>`` with each placeholder replaced; every placeholder must occur exactly as often
    as :data:`PLACEHOLDER_COUNTS` says (once unless listed)."""
    text = (NGINX_CONFIGS / name).read_text()
    for placeholder, value in substitutions.items():
        count, expected = text.count(placeholder), PLACEHOLDER_COUNTS.get(placeholder, 1)
        assert count == expected, f"{name}: expected {placeholder!r} {expected} time(s), found it {count} times"
        text = text.replace(placeholder, value)
    return text


PLACEHOLDER_COUNTS = {"server 127.0.0.1:4180;": 2}
"""The gateway is named twice in each site: ``upstream gateway`` (checks) and ``gateway_pages`` (sign-in)."""


def site_substitutions(*, listen_port: int, gateway_port: int, app_port: int) -> dict[str, str]:
    """The placeholders of ``protect-app.conf`` / ``hasura.conf`` mapped to loopback test values."""
    return {
        "listen 80;": f"listen 127.0.0.1:{listen_port};",
        "server_name app.example.com;": "server_name 127.0.0.1 localhost;",
        "server 127.0.0.1:4180;": f"server 127.0.0.1:{gateway_port};",
        "server 127.0.0.1:8080;": f"server 127.0.0.1:{app_port};",
    }


def _nginx_version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10, check=False)
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out.stderr + out.stdout)
    return tuple(int(g) for g in match.groups()) if match else (0, 0, 0)


def main_conf(directory: Path, site: Path) -> str:
    """A minimal main nginx.conf: foreground, every file in ``directory``, ``site`` included in http {}."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must reach the test's 0700 directories
    temp = "\n".join(f"    {kind}_temp_path {directory / 'temp' / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""\
{user}daemon off;
master_process on;
worker_processes 1;
pid {directory / 'nginx.pid'};
lock_file {directory / 'nginx.lock'};
error_log {directory / 'error.log'} info;

events {{
    worker_connections 1024;
}}

http {{
    access_log {directory / 'access.log'};
    default_type application/octet-stream;
{temp}
    include {site};
}}
"""


@dataclass
class Nginx:
    """A running nginx."""

    url: str
    port: int
    directory: Path
    site: Path
    proc: subprocess.Popen[bytes]

    def error_log(self) -> str:
        """nginx's error log so far."""
        return _tail(self.directory / "error.log", lines=10_000)


def nginx_command(binary: str, directory: Path, *extra: str) -> list[str]:
    """``nginx -p DIR -c DIR/nginx.conf [-e DIR/error.log] EXTRA...``."""
    command = [binary, "-p", str(directory), "-c", str(directory / "nginx.conf")]
    if _nginx_version(binary) >= (1, 19, 5):  # -e: early messages too go to our log, not /var/log/nginx
        command += ["-e", str(directory / "error.log")]
    return [*command, *extra]


def prepare_nginx(directory: Path, site_text: str) -> tuple[str, Path]:
    """Write the main config and the site into ``directory`` and check them with ``nginx -t``.

    Returns the nginx binary and the site file. Skips (or fails under strict mode) without nginx.
    """
    binary = find_nginx()
    if binary is None:
        unavailable("nginx not found (apt-get install nginx)")
    directory.mkdir(parents=True, exist_ok=True)
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (directory / "temp" / kind).mkdir(parents=True, exist_ok=True)
    site = directory / "site.conf"
    site.write_text(site_text)
    (directory / "nginx.conf").write_text(main_conf(directory, site))
    test = subprocess.run(nginx_command(binary, directory, "-t"), capture_output=True, text=True, timeout=30,
                          check=False)
    if test.returncode != 0:
        pytest.fail(f"nginx -t rejected the configuration:\n{test.stderr}{test.stdout}", pytrace=False)
    return binary, site


@contextlib.contextmanager
def start_nginx(directory: Path, site_text: str, port: int) -> Iterator[Nginx]:
    """Run nginx in the foreground with ``site_text`` (listening on ``port``) until the block ends."""
    binary, site = prepare_nginx(directory, site_text)
    log = directory / "nginx.out"
    # SIGQUIT: graceful stop (open keep-alive connections are closed, in-flight requests finish)
    with running(nginx_command(binary, directory), log, stop_signal=signal.SIGQUIT) as proc:
        wait_until(lambda: port_open(port), "nginx", proc=proc, log=directory / "error.log")
        yield Nginx(f"http://127.0.0.1:{port}", port, directory, site, proc)


# ---- HAProxy ---------------------------------------------------------------------------------------------

HAPROXY_CONFIGS = REPO / "deploy" / "haproxy"


def find_haproxy() -> str | None:
    """The haproxy binary (on PATH, or Debian's /usr/sbin/haproxy)."""
    found = shutil.which("haproxy")
    if found:
        return found
    for candidate in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def render_haproxy(*, listen_port: int, gateway_url: str, gateway_port: int, app_port: int) -> str:
    """``deploy/haproxy/haproxy.cfg`` with each placeholder (each occurring exactly once) replaced: loopback
    ports, the Lua file where it lies in this checkout, and ``gateway_url`` as the check's base URL (another
    server than the pages' gateway, for tests that make the check misbehave)."""
    text = (HAPROXY_CONFIGS / "haproxy.cfg").read_text()
    substitutions = {
        "\n    bind :80\n": f"\n    bind 127.0.0.1:{listen_port}\n",
        "lua-load /etc/haproxy/auth-request.lua": f"lua-load {HAPROXY_CONFIGS / 'auth-request.lua'}",
        "lua.auth_request http://127.0.0.1:4180/auth/check": f"lua.auth_request {gateway_url}/auth/check",
        "server gateway 127.0.0.1:4180": f"server gateway 127.0.0.1:{gateway_port}",
        "server app 127.0.0.1:8080": f"server app 127.0.0.1:{app_port}",
    }
    for placeholder, value in substitutions.items():
        count = text.count(placeholder)
        assert count == 1, f"haproxy.cfg: expected {placeholder!r} once, found it {count} times"
        text = text.replace(placeholder, value)
    return text


@dataclass
class HAProxy:
    """A running haproxy."""

    url: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes]

    def log_text(self) -> str:
        """What haproxy wrote to stdout and stderr so far (alerts, warnings, the Lua action's warnings)."""
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def start_haproxy(directory: Path, config_text: str, port: int) -> Iterator[HAProxy]:
    """Check ``config_text`` with ``haproxy -c``, then run haproxy in the foreground until the block ends.

    Skips (or fails under strict mode) without haproxy.
    """
    binary = find_haproxy()
    if binary is None:
        unavailable("haproxy not found (apt-get install haproxy)")
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "haproxy.cfg"
    config.write_text(config_text)
    test = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True, timeout=30, check=False)
    if test.returncode != 0:
        pytest.fail(f"haproxy -c rejected the configuration:\n{test.stderr}{test.stdout}", pytrace=False)
    log = directory / "haproxy.log"
    # -db: stay in the foreground; SIGUSR1 is a soft stop (listeners closed, requests in flight finish)
    with running([binary, "-db", "-f", str(config)], log, stop_signal=signal.SIGUSR1) as proc:
        wait_until(lambda: port_open(port), "haproxy", proc=proc, log=log)
        yield HAProxy(f"http://127.0.0.1:{port}", port, log, proc)


# ---- the whole stack -------------------------------------------------------------------------------------

@dataclass
class Site:
    """A proxy's site (``url``) in front of the echo app, checking with ``gateway``; processes logged under
    ``directory``."""

    gateway: Gateway
    echo: Echo
    directory: Path

    @property
    def url(self) -> str:
        """The site's base URL (through the proxy), e.g. ``http://127.0.0.1:41234``."""
        raise NotImplementedError

    def get(self, path: str, headers: Sequence[tuple[str, str]] = (), *, token: str | None = None,
            browser: bool = False) -> Reply:
        """GET ``path`` through the proxy as a browser (HTML ``Accept``) or an API client, ``token`` as cookie."""
        sent = list(headers)
        sent.append(("Accept", "text/html,application/xhtml+xml" if browser else "application/json"))
        if token is not None:
            sent.append(cookie_header({COOKIE: token}))
        return http("GET", self.url + path, sent)

    def sign_in(self, email: str, *, groups: str = "", rd: str | None = None) -> SignIn:
        """Sign in through the proxy with the dev upstream, as a browser would; see :func:`sign_in`."""
        return sign_in(self.url, email, groups=groups, rd=rd)


@dataclass
class Stack(Site):
    """nginx (from ``deploy/nginx/protect-app.conf``) in front of the echo app, checking with the gateway."""

    nginx: Nginx

    @property
    def url(self) -> str:
        """The site's base URL (through nginx), e.g. ``http://127.0.0.1:41234``."""
        return self.nginx.url


@dataclass
class SignIn:
    """The outcome of a browser sign-in."""

    token: str
    cookies: dict[str, str]
    location: str
    set_cookie: str


def sign_in(base_url: str, email: str, *, groups: str = "", rd: str | None = None) -> SignIn:
    """Sign in through ``base_url`` with the ``dev`` upstream: /login -> the form -> /callback/dev.

    Cookies are carried between the steps like a browser's jar; the form is read from the page, so its
    action and hidden ``state`` are exercised as served. Returns the session token and where the final
    redirect went.
    """
    rd = rd or base_url + "/"
    browser = [("Accept", "text/html")]
    jar: dict[str, str] = {}

    start = http("GET", f"{base_url}/login?rd={quote(rd, safe='')}", browser)
    assert start.status == 302, (start.status, start.text)
    jar.update(start.cookies())
    form_url = urljoin(base_url + "/login", start.header("Location") or "")
    assert form_url.startswith(base_url + "/login/dev/"), form_url

    form = http("GET", form_url, [*browser, cookie_header(jar)])
    assert form.status == 200, (form.status, form.text)
    action = re.search(r'<form[^>]*action="([^"]+)"', form.text)
    state = re.search(r'name="state" value="([^"]*)"', form.text)
    assert action and state, form.text
    params = {"state": html.unescape(state.group(1)), "email": email, "name": "", "groups": groups}
    callback_url = urljoin(form_url, html.unescape(action.group(1))) + "?" + urlencode(params)

    done = http("GET", callback_url, [*browser, cookie_header(jar)])
    assert done.status == 302, (done.status, done.text)
    jar.update(done.cookies())
    session_lines = [c for c in done.all("Set-Cookie") if c.startswith(COOKIE + "=")]
    assert jar.get(COOKIE) and session_lines, done.headers
    return SignIn(jar[COOKIE], jar, done.header("Location") or "", session_lines[0])


@contextlib.contextmanager
def start_stack(directory: Path, *, access_toml: str = DEFAULT_ACCESS_TOML, extra_toml: str = "",
                site: str = "protect-app.conf") -> Iterator[Stack]:
    """Start the echo app, the gateway and nginx (configured from ``deploy/nginx/<site>``); stop them after.

    nginx is looked for first, so a machine without it skips (or fails under strict mode) before anything
    starts.
    """
    if find_nginx() is None:
        unavailable("nginx not found (apt-get install nginx)")
    nginx_port = free_port()
    with contextlib.ExitStack() as stack:
        echo, gateway = _app_and_gateway(stack, directory, nginx_port, access_toml=access_toml, extra_toml=extra_toml)
        site_text = render_site(site, site_substitutions(listen_port=nginx_port, gateway_port=gateway.port,
                                                   app_port=echo.port))
        nginx = stack.enter_context(start_nginx(directory / "nginx", site_text, nginx_port))
        yield Stack(gateway=gateway, echo=echo, directory=directory, nginx=nginx)


def _app_and_gateway(stack: contextlib.ExitStack, directory: Path, site_port: int, *, access_toml: str,
                     extra_toml: str = "") -> tuple[Echo, Gateway]:
    """The echo app and a gateway whose public_url is the proxy's site on ``site_port``, run in ``stack``."""
    echo = stack.enter_context(start_echo(directory))
    gateway = stack.enter_context(start_gateway(
        directory, port=free_port(), public_url=f"http://127.0.0.1:{site_port}",
        redirect_hosts=[f"127.0.0.1:{site_port}", f"localhost:{site_port}"],
        access_toml=access_toml, extra_toml=extra_toml))
    return echo, gateway


@dataclass
class HAProxyStack(Site):
    """HAProxy (from ``deploy/haproxy/``) in front of the echo app, checking with the gateway."""

    haproxy: HAProxy

    @property
    def url(self) -> str:
        """The site's base URL (through HAProxy)."""
        return self.haproxy.url


@contextlib.contextmanager
def start_haproxy_stack(directory: Path, *, access_toml: str = DEFAULT_ACCESS_TOML,
                        extra_toml: str = "") -> Iterator[HAProxyStack]:
    """Start the echo app, the gateway and HAProxy (``deploy/haproxy/haproxy.cfg``); stop them after.

    HAProxy is looked for first, so a machine without it skips (or fails under strict mode) before anything
    starts. ``extra_toml`` is appended to the gateway's configuration (see :func:`gateway_toml`).
    """
    if find_haproxy() is None:
        unavailable("haproxy not found (apt-get install haproxy)")
    haproxy_port = free_port()
    with contextlib.ExitStack() as stack:
        echo, gateway = _app_and_gateway(stack, directory, haproxy_port, access_toml=access_toml,
                                         extra_toml=extra_toml)
        config = render_haproxy(listen_port=haproxy_port, gateway_url=gateway.url, gateway_port=gateway.port,
                                app_port=echo.port)
        haproxy = stack.enter_context(start_haproxy(directory / "haproxy", config, haproxy_port))
        yield HAProxyStack(gateway=gateway, echo=echo, directory=directory, haproxy=haproxy)


# ---- what a site must do, whichever proxy: helpers shared by the proxy tests ----------------------------

IDENTITY = ("X-Auth-Request-User", "X-Auth-Request-Email", "X-Auth-Request-Groups", "X-Auth-Request-User-Id")
"""The identity headers the gateway answers and the proxy sets on the request to the app."""

LOOKALIKES = ("x-user", "x-email", "x-groups", "remote-user", "x-remote-user", "x-forwarded-user",
              "x-forwarded-email", "x-forwarded-groups", "x-forwarded-preferred-username",
              "x-auth-request-preferred-username", "x-auth-request-access-token", "x-auth-request-role")
"""Names apps and frameworks often read a user from: a client must never get them to the app."""

SPOOFS = [
    ("X-Auth-Request-User", "SPOOFED-admin"),
    ("x-auth-request-user", "SPOOFED-admin"),
    ("X-AUTH-REQUEST-EMAIL", "SPOOFED@evil.example"),
    ("X-Auth-Request-Groups", "SPOOFED-admin"),
    ("x-Auth-request-user-ID", "SPOOFED-0"),
    ("X_Auth_Request_User", "SPOOFED-admin"),
    ("X-User", "SPOOFED-admin"),
    ("x-user", "SPOOFED-admin"),
    ("X-Email", "SPOOFED@evil.example"),
    ("X-Groups", "SPOOFED-admin"),
    ("X-Remote-User", "SPOOFED-admin"),
    ("Remote-User", "SPOOFED-admin"),
    ("X-Forwarded-User", "SPOOFED-admin"),
    ("X-Forwarded-Email", "SPOOFED@evil.example"),
    ("X-Forwarded-Groups", "SPOOFED-admin"),
    ("X-Forwarded-Preferred-Username", "SPOOFED-admin"),
    ("X-Auth-Request-Preferred-Username", "SPOOFED-admin"),
    ("X-Auth-Request-Access-Token", "SPOOFED-token"),
    ("X-Auth-Request-Role", "SPOOFED-admin"),
]
"""Identity headers a client sends itself, in every letter case, with underscores, and lookalikes."""


def seen_by_app(reply: Reply) -> list[tuple[str, str]]:
    """The headers the echo app received, from its JSON answer."""
    assert reply.status == 200, (reply.status, reply.text)
    return [(name, value) for name, value in reply.json()["headers"]]


def named(headers: list[tuple[str, str]], name: str) -> list[str]:
    """Every value of the header ``name`` (any case)."""
    return [v for k, v in headers if k.lower() == name.lower()]


def assert_only_the_gateways_identity(seen: list[tuple[str, str]], email: str) -> None:
    """The app was sent each identity header once, the gateway's (for ``email``), and none of :data:`SPOOFS`."""
    assert "SPOOFED" not in json.dumps(seen)
    names = [name.lower() for name, _ in seen]
    for header in IDENTITY:
        assert names.count(header.lower()) == 1, (header, seen)
    assert named(seen, "X-Auth-Request-Email") == [email]
    assert not any("_" in name for name in names)
    for lookalike in LOOKALIKES:
        assert lookalike not in names


def raw_exchange(port: int, request: bytes, timeout: float = 2.0) -> bytes:
    """Send ``request`` bytes to 127.0.0.1:``port`` as they are; everything answered until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(request)
        chunks = []
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := conn.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def app_paths(site: Site, since: int) -> list[str]:
    """Paths the echo app was asked for after its ``since``-th request."""
    return [entry["path"] for entry in site.echo.requests()[since:]]


def refused_within(site: Site, token: str, deadline: float, started: float) -> tuple[Reply, Reply]:
    """Poll a browser and an API request with ``token`` until both are refused; fail after ``deadline`` s.

    The revocation may land between the two requests of one round; once one request is refused, every
    later one must be (one gateway process: a revocation never comes undone).
    """
    refused = False
    while True:
        page = site.get("/dashboard", token=token, browser=True)
        assert page.status in ((302,) if refused else (200, 302)), page.status
        refused = refused or page.status == 302
        api = site.get("/api/me", token=token)
        assert api.status in ((401,) if refused else (200, 401)), api.status
        refused = refused or api.status == 401
        if page.status == 302 and api.status == 401:
            return page, api
        elapsed = time.monotonic() - started
        assert elapsed < deadline, f"the session still works {elapsed:.2f} s after it was revoked"
        time.sleep(0.05)


def sign_out_form(site: Site, token: str, rd: str) -> dict[str, str]:
    """``GET /logout`` through the proxy: the confirmation page's form fields (asking changes nothing)."""
    page = site.get(f"/logout?rd={quote(rd, safe='')}", token=token, browser=True)
    assert page.status == 200 and not page.all("Set-Cookie"), (page.status, page.text)
    assert re.search(r'<form method="post" action="/logout">', page.text), page.text
    return {name: html.unescape(value)
            for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page.text)}


def post_sign_out(site: Site, token: str, fields: dict[str, str], origin: str) -> Reply:
    """Press the form's button: a same-origin POST through the proxy, as Chromium sends it."""
    return http("POST", site.url + "/logout",
                [("Accept", "text/html"), ("Cookie", f"{COOKIE}={token}"), ("Origin", origin),
                 ("Sec-Fetch-Site", "same-origin"), ("Content-Type", "application/x-www-form-urlencoded")],
                urlencode(fields).encode())


REVOCATION_DEADLINE = 1.0
"""Seconds within which a sign-out or an admin revocation must refuse the session through a proxy."""


def assert_anonymous_browser_sent_to_sign_in(site: Site) -> None:
    """A browser without a session is sent to the gateway's sign-in on the same host, with the whole
    original URL as ``rd`` (encoded by the gateway: ``X-Auth-Request-Login``), and that page starts a real
    attempt."""
    reply = site.get("/reports/2024?year=2024&q=a%26b&x=1", browser=True)
    assert reply.status == 302
    original = f"{site.url}/reports/2024?year=2024&q=a%26b&x=1"
    assert reply.header("Location") == f"{site.url}/login?rd={quote(original, safe='')}"
    assert reply.header("Cache-Control") == "no-store"

    start = site.get((reply.header("Location") or "").removeprefix(site.url), browser=True)
    assert start.status == 302
    assert (start.header("Location") or "").startswith(site.url + "/login/dev/dev?state=")
    assert any(name.startswith("gw_login_") for name in start.cookies())


def assert_anonymous_api_call_gets_json_401(site: Site) -> None:
    """Under /api/ a call without a session gets a plain JSON 401, whatever its Accept header says."""
    for accept_html in (False, True):
        reply = site.get("/api/items", browser=accept_html)
        assert reply.status == 401
        assert reply.header("Location") is None
        assert reply.header("Content-Type") == "application/json"
        assert reply.json()["error"] == "unauthenticated"


def assert_sign_in_returns_to_the_page(site: Site) -> None:
    """A browser sign-in through the proxy comes back to the page with a host-only session cookie, and the app
    then sees who signed in; /auth/userinfo is the gateway's, on the same host."""
    target = site.url + "/projects/7?tab=files"
    signed = site.sign_in("grace@example.com", groups="editors", rd=target)
    assert signed.location == target
    attributes = [a.strip().lower() for a in signed.set_cookie.split(";")[1:]]
    assert {"httponly", "path=/", "samesite=lax"} <= set(attributes)
    assert not any(a.startswith("domain=") for a in attributes)  # host-only: sign-in is on this host

    seen = seen_by_app(site.get("/projects/7?tab=files", token=signed.token, browser=True))
    assert named(seen, "X-Auth-Request-User") == ["grace"]
    assert named(seen, "X-Auth-Request-Email") == ["grace@example.com"]
    assert named(seen, "X-Auth-Request-Groups") == ["editors"]
    assert named(seen, "X-Auth-Request-User-Id")[0].isdigit()

    info = site.get("/auth/userinfo", token=signed.token)
    assert info.status == 200 and info.json()["email"] == "grace@example.com"


def assert_policy_deny_pages(site: Site) -> None:
    """A signed-in user the rules refuse gets the 403 page (never a sign-in loop), or a JSON 403 under /api/."""
    token = site.gateway.mint("denied@example.com")
    page = site.get("/forbidden/payroll", token=token, browser=True)
    assert page.status == 403
    assert page.header("Location") is None
    assert (page.header("Content-Type") or "").startswith("text/html")
    assert "Access denied" in page.text and "/logout" in page.text

    api = site.get("/api/forbidden/payroll", token=token)
    assert api.status == 403 and api.json() == {"error": "forbidden"}
    assert site.get("/payroll", token=token).status == 200  # the rule is only for /forbidden/**


def assert_sign_out_refuses_the_cookie_at_once(site: Site) -> None:
    """Asking to sign out changes nothing; a POST from another origin is refused (the proxy passes Origin on);
    the site's own POST clears the cookie and the session is refused within :data:`REVOCATION_DEADLINE`."""
    signed = site.sign_in("leaving@example.com")
    assert site.get("/dashboard", token=signed.token, browser=True).status == 200
    fields = sign_out_form(site, signed.token, "/")
    assert fields["rd"] == "/" and fields["csrf_token"]
    assert site.get("/dashboard", token=signed.token, browser=True).status == 200  # still signed in

    forged = post_sign_out(site, signed.token, fields, "http://evil.example")
    assert forged.status == 403 and not forged.all("Set-Cookie"), (forged.status, forged.text)
    assert site.get("/dashboard", token=signed.token, browser=True).status == 200

    out = post_sign_out(site, signed.token, fields, site.url)  # the site's own origin: public_url's
    assert out.status == 303, (out.status, out.text)
    assert out.header("Location") == "/"
    cleared = [c for c in out.all("Set-Cookie") if c.startswith(COOKIE + "=")]
    assert cleared and "max-age=0" in cleared[0].lower()
    page, _ = refused_within(site, signed.token, REVOCATION_DEADLINE, time.monotonic())
    assert (page.header("Location") or "").startswith(site.url + "/login?rd=")


def assert_session_revoke_refuses_within_a_second(site: Site) -> None:
    """``gateway sessions revoke`` refuses a browser session through the proxy within the deadline."""
    signed = site.sign_in("fired@example.com")
    assert site.get("/api/me", token=signed.token).status == 200
    site.gateway.cli("sessions", "revoke", "--email", "fired@example.com")
    refused_within(site, signed.token, REVOCATION_DEADLINE, time.monotonic())


def assert_back_channel_logouts_reach_the_gateway(site: Site) -> None:
    """An upstream's back-channel sign-out (``POST /backchannel-logout/<name>``, server to server, no cookie)
    is the gateway's, on the site's host: the dev upstream sends none, so the gateway itself answers 404 in
    JSON, and the app never sees the request."""
    before = len(site.echo.requests())
    reply = http("POST", site.url + "/backchannel-logout/dev",
                 [("Content-Type", "application/x-www-form-urlencoded"), ("Accept", "application/json")],
                 body=b"logout_token=not-a-token")
    assert reply.status == 404, (reply.status, reply.text)
    assert (reply.header("Content-Type") or "").startswith("application/json")
    assert not [r for r in site.echo.requests()[before:] if r["path"].startswith("/backchannel-logout")]


def assert_api_tokens_are_the_gateways(base_url: str, app_paths: Callable[[], list[str]]) -> None:
    """People's own API tokens (``/tokens``, ``/auth/tokens``) are the gateway's, on the site's host: a browser
    signed in through the proxy opens the page, mints a token through the JSON API with its CSRF token,
    uses it on the app, revokes it, and the app is refused it within a second. ``app_paths`` lists the
    paths the app was asked for: never these."""
    signed = sign_in(base_url, "scripts@example.com")
    cookie = cookie_header({COOKIE: signed.token})
    page = http("GET", base_url + "/tokens", [("Accept", "text/html"), cookie])
    assert page.status == 200 and "<h1>API tokens</h1>" in page.text, (page.status, page.text[:300])
    listed = http("GET", base_url + "/auth/tokens", [("Accept", "application/json"), cookie])
    assert listed.status == 200 and listed.json()["tokens"] == [], (listed.status, listed.text)
    minted = http("POST", base_url + "/auth/tokens",
                  [cookie, ("X-CSRF-Token", listed.json()["csrf_token"]), ("Content-Type", "application/json"),
                   ("Accept", "application/json")], json.dumps({"name": "through the proxy"}).encode())
    assert minted.status == 201, (minted.status, minted.text)
    token, token_id = minted.json()["token"], minted.json()["id"]
    bearer = ("Authorization", f"Bearer {token}")
    assert http("GET", base_url + "/api/me", [("Accept", "application/json"), bearer]).status == 200
    refused = http("POST", base_url + "/auth/tokens", [bearer, ("Content-Type", "application/json")], b'{"name": "x"}')
    assert refused.status == 403, (refused.status, refused.text)  # a token never mints tokens
    revoked = http("DELETE", f"{base_url}/auth/tokens/{token_id}",
                   [cookie, ("X-CSRF-Token", listed.json()["csrf_token"]), ("Accept", "application/json")])
    assert revoked.status == 200, (revoked.status, revoked.text)
    deadline = time.monotonic() + REVOCATION_DEADLINE
    while http("GET", base_url + "/api/me", [("Accept", "application/json"), bearer]).status != 401:
        assert time.monotonic() < deadline, "the revoked API token still works through the proxy"
        time.sleep(0.05)
    assert not [p for p in app_paths() if p.startswith(("/tokens", "/auth/tokens"))]


_DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
_FORM = ("Content-Type", "application/x-www-form-urlencoded")


def assert_device_grant_is_the_gateways(base_url: str, app_paths: Callable[[], list[str]]) -> None:
    """A CLI's sign-in (RFC 8628: ``/auth/device/code``, ``/auth/device/token``, ``/device``) is the gateway's,
    on the site's host: a CLI asks for a code and is told to wait, a browser signed in through the proxy
    approves it on the page (its form, its CSRF token), the CLI's next poll gets a token that works on the
    app, once. ``app_paths`` lists the paths the app was asked for: never these."""
    json_ = ("Accept", "application/json")
    asked = http("POST", base_url + "/auth/device/code", [_FORM, json_], b"client_id=through+the+proxy")
    assert asked.status == 200, (asked.status, asked.text)
    code = asked.json()
    poll = urlencode({"grant_type": _DEVICE_GRANT, "device_code": code["device_code"],
                      "client_id": "through the proxy"}).encode()
    waiting = http("POST", base_url + "/auth/device/token", [_FORM, json_], poll)
    assert (waiting.status, waiting.json()["error"]) == (400, "authorization_pending"), waiting.text
    anonymous = http("GET", f"{base_url}/device?user_code={code['user_code']}", [("Accept", "text/html")])
    assert anonymous.status == 302 and "/login?rd=%2Fdevice" in (anonymous.header("Location") or "")
    cookie = cookie_header({COOKIE: sign_in(base_url, "cli-owner@example.com").token})
    page = http("GET", f"{base_url}/device?user_code={code['user_code']}", [("Accept", "text/html"), cookie])
    csrf = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', page.text)
    assert page.status == 200 and csrf, (page.status, page.text[:300])
    for action, shows in (("look_up", "Approve this device?"), ("approve", "Device approved")):
        answer = http("POST", base_url + "/device", [_FORM, ("Accept", "text/html"), cookie], urlencode(
            {"csrf_token": csrf.group(1), "user_code": code["user_code"], "action": action}).encode())
        assert answer.status == 200 and shows in answer.text, (action, answer.status, answer.text[:300])
    time.sleep(code["interval"])
    granted = http("POST", base_url + "/auth/device/token", [_FORM, json_], poll)
    assert granted.status == 200, (granted.status, granted.text)
    bearer = ("Authorization", f"Bearer {granted.json()['access_token']}")
    assert http("GET", base_url + "/api/me", [json_, bearer]).status == 200
    again = http("POST", base_url + "/auth/device/token", [_FORM, json_], poll)
    assert (again.status, again.json()["error"]) == (400, "invalid_grant"), again.text
    assert not [p for p in app_paths() if p.startswith(("/device", "/auth/device"))]


# ---- sliding sessions (session.refresh) through a proxy ------------------------------------------------

RENEWED_LIFETIME = 24.0
"""Seconds a session renewed by :func:`renew_session_as_another_replica` still has to live."""


def refresh_toml(*, lifetime: str = "24s", interval: str = "8s") -> str:
    """A ``[session]`` table turning ``session.refresh`` on (with a fresh sealing key), for ``extra_toml``."""
    return (f'[session]\nrefresh = true\nlifetime = "{lifetime}"\nrefresh_interval = "{interval}"\n'
            f"sealing_key = {json.dumps(new_key())}\n")


def renew_session_as_another_replica(database: Path, token: str) -> None:
    """Renew ``token``'s session in the stack gateway's SQLite ``database`` as another replica does once the
    upstream vouched (the dev upstream issues no refresh tokens): its expiry moves to
    :data:`RENEWED_LIFETIME` from now, and the revocation feed makes the running gateway re-read it."""
    async def renew() -> bool:
        store = make_store(f"sqlite:///{database}", DatabaseSettings(), revocation_retention=60)
        await store.open()
        try:
            now = time.time()
            return await store.renew_session(hash_token(token), now=now, expires_at=now + RENEWED_LIFETIME,
                                             secrets={}, next_claim_at=now + RENEWED_LIFETIME / 3)
        finally:
            await store.close()

    assert asyncio.run(renew()), "the session to renew was not found"


def assert_renewed_cookie_reaches_the_browser(base_url: str, database: Path, *, email: str,
                                              forbidden_path: str) -> None:
    """With ``session.refresh`` on the stack's gateway: once a session is renewed, an allowed page answers with
    ``Set-Cookie`` for the same token and the renewed ``Max-Age`` (within about a second, the revocation
    feed's delay), and the app still gets the identity. No cookie ever comes from a denied check (no cookie,
    a dead token, refused by the rules) or a check by ``Authorization``, and a client's ``Set-Cookie``
    request header never reaches the response."""
    token = sign_in(base_url, email).token
    injected = ("Set-Cookie", f"{COOKIE}=injected-by-the-client; Max-Age=99999")
    browser = [("Accept", "text/html"), injected]
    signed_in = [*browser, cookie_header({COOKIE: token})]

    def page(path: str, headers: Sequence[tuple[str, str]]) -> Reply:
        return http("GET", f"{base_url}{path}", headers)

    before = page("/notes/before", signed_in)
    assert before.status == 200 and before.all("Set-Cookie") == [], before.headers

    renew_session_as_another_replica(database, token)
    deadline = time.monotonic() + 3.0
    while True:
        renewed = page("/notes/renewed", signed_in)
        assert renewed.status == 200, (renewed.status, renewed.text)
        if renewed.all("Set-Cookie") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    lines = renewed.all("Set-Cookie")
    assert len(lines) == 1, f"not one renewed cookie within 3 s: {renewed.headers}"
    line = lines[0]
    value, _, attributes = line.partition(";")
    assert value == f"{COOKIE}={token}", line
    fields = {k.strip().lower(): v.strip() for k, _, v in (a.partition("=") for a in attributes.split(";"))}
    assert 0 < int(fields["max-age"]) <= RENEWED_LIFETIME, line
    assert fields["path"] == "/" and "httponly" in fields, line
    seen = renewed.json()["headers"]
    assert [v for k, v in seen if k.lower() == "x-auth-request-email"] == [email], seen

    denied = {
        "no cookie": page("/notes/anonymous", browser),
        "no cookie, API": page("/api/notes", [("Accept", "application/json"), injected]),
        "dead token": page("/notes/dead", [*browser, cookie_header({COOKIE: "gwt_" + "A" * 43})]),
        "refused by the rules": page(forbidden_path, signed_in),
    }
    for why, reply in denied.items():
        assert reply.status in (302, 401, 403), (why, reply.status)
        assert reply.all("Set-Cookie") == [], (why, reply.headers)
    bearer = page("/api/notes", [("Accept", "application/json"), ("Authorization", f"Bearer {token}"), injected])
    assert bearer.status == 200 and bearer.all("Set-Cookie") == [], bearer.headers
