"""Test helpers shared across suites: settings built from overrides, and a throwaway PostgreSQL cluster."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg2
from psycopg2 import sql

from gateway.settings import Settings, load_or_raise
from gateway.store import Store, make_store, revocation_retention


def make_settings(overrides: Mapping[str, Any] | None = None, /, **kwargs: Any) -> Settings:
    """Build validated Settings from defaults plus overrides, ignoring the real environment.

    Overrides use dotted names (``{"database.query_timeout": 1}``); as keyword arguments a double
    underscore stands for the dot (``database__query_timeout=1``). Raises SettingsError on bad values.
    """
    merged: dict[str, Any] = dict(overrides or {})
    merged.update({key.replace("__", "."): value for key, value in kwargs.items()})
    return load_or_raise(env={}, overrides=merged)


def store_for(settings: Settings) -> Store:
    """The store (not opened) for ``settings``: its database URL and section, and the revocation retention
    its cache section asks for, as the app passes them."""
    return make_store(settings.database_url, settings.database,
                      revocation_retention=revocation_retention(settings.cache))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_postgres_bindir() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``, or None when not installed."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True,
                                 timeout=10)
            candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.SubprocessError):
            pass

    def version_key(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    candidates.extend(Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key,
                                              reverse=True))
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


class PostgresCluster:
    """A private PostgreSQL cluster in a temporary directory, on a free port of 127.0.0.1.

    Trust authentication for the superuser ``gateway``; the role ``pwuser`` (password ``pwsecret``)
    must authenticate with a password, to test what errors reveal. When the tests run as root, every
    server command runs as the ``postgres`` OS user (``initdb`` refuses root).
    """

    superuser = "gateway"
    password_user = "pwuser"
    password = "pwsecret"

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="gw-pg-"))
        self.datadir = self.root / "data"
        self.sockdir = self.root / "sock"
        self.logfile = self.root / "postgres.log"
        self.running = False
        self._as_postgres = os.geteuid() == 0

    def _run(self, args: Sequence[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        command = [*(["runuser", "-u", "postgres", "--"] if self._as_postgres else []), *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n"
                               f"{result.stderr}\n{self.log_tail()}")
        return result

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server log, for failure messages."""
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def init(self) -> None:
        """Create the data directory (``initdb``) and the password-authenticated test role."""
        self.sockdir.mkdir()
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.sockdir, "postgres", "postgres")
        self._run([str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", self.superuser,
                   "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"])
        # scram for the password role first, then trust for everyone else (first match wins)
        hba = self.datadir / "pg_hba.conf"
        hba.write_text(
            f"local all {self.password_user} scram-sha-256\n"
            f"host all {self.password_user} 127.0.0.1/32 scram-sha-256\n"
            "local all all trust\n"
            "host all all 127.0.0.1/32 trust\n"
        )
        self.start()
        self._admin(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(self.password_user), sql.Literal(self.password)))

    def _admin(self, statement: sql.Composable) -> None:
        """Run one statement as the superuser on the ``postgres`` database, outside a transaction."""
        conn = psycopg2.connect(self.url("postgres"), connect_timeout=10)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()

    def start(self) -> None:
        """Start the server (same port, same data directory) and wait until it accepts connections."""
        options = (f"-k {self.sockdir} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
                   "-o", options, "-w", "-t", "60", "start"])
        self.running = True

    def stop(self) -> None:
        """Stop the server at once (fast shutdown: clients are disconnected)."""
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "-t", "60",
                   "stop"])
        self.running = False

    def url(self, dbname: str = "postgres", *, user: str | None = None, password: str | None = None,
            port: int | None = None) -> str:
        """``postgresql://user[:password]@127.0.0.1:PORT/dbname`` for this cluster."""
        auth = quote(user or self.superuser, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        return f"postgresql://{auth}@127.0.0.1:{port or self.port}/{dbname}"

    def create_database(self) -> str:
        """Create a fresh, uniquely named database and return its URL."""
        name = "gw_" + uuid.uuid4().hex[:16]
        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def destroy(self) -> None:
        """Stop the server if it runs and delete every file of the cluster."""
        try:
            if self.running:
                self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

