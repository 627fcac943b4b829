"""A throwaway PgBouncer (Debian's ``pgbouncer``) in front of a test PostgreSQL cluster, and the admin CLI.

:func:`start_pgbouncer` writes an ini and a userlist into a directory of its own, runs ``pgbouncer`` in the
foreground (as the ``postgres`` OS user when the tests run as root: PgBouncer refuses root) on a free port
of 127.0.0.1, and stops it when the block ends. Every database name is forwarded to the cluster
(``* = host=… port=…``), so databases created by the tests need no entry. A machine without PgBouncer
skips, or fails under ``GATEWAY_TEST_STRICT=1``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.deploy.stack import REPO, unavailable
from tests.helpers import PostgresCluster, free_port


def find_pgbouncer() -> str | None:
    """The pgbouncer binary (on PATH, or Debian's /usr/sbin/pgbouncer)."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    return "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None


@dataclass
class PgBouncer:
    """A running PgBouncer: its port, log and pool mode."""

    port: int
    pool_mode: str
    log: Path
    proc: subprocess.Popen[bytes]

    def url(self, cluster: PostgresCluster, database_url: str) -> str:
        """``database_url`` (a URL of ``cluster``) sent through this PgBouncer instead."""
        return database_url.replace(f"@127.0.0.1:{cluster.port}/", f"@127.0.0.1:{self.port}/", 1)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextlib.contextmanager
def start_pgbouncer(cluster: PostgresCluster, *, pool_mode: str = "transaction",
                    pool_size: int = 20) -> Iterator[PgBouncer]:
    """Run PgBouncer in ``pool_mode`` in front of ``cluster`` until the block ends (trust authentication:
    the cluster trusts its superuser on 127.0.0.1), with ``pool_size`` server connections per database."""
    binary = find_pgbouncer()
    if binary is None:
        unavailable("pgbouncer is not installed (apt-get install pgbouncer)")
    assert binary is not None
    root = Path(tempfile.mkdtemp(prefix="gw-pgbouncer-"))
    port = free_port()
    log = root / "pgbouncer.log"
    (root / "userlist.txt").write_text(f'"{cluster.superuser}" ""\n')
    (root / "pgbouncer.ini").write_text(f"""\
[databases]
* = host=127.0.0.1 port={cluster.port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {root / "userlist.txt"}
pool_mode = {pool_mode}
max_client_conn = 500
default_pool_size = {pool_size}
logfile = {log}
pidfile = {root / "pgbouncer.pid"}
""")
    as_postgres = os.geteuid() == 0
    if as_postgres:
        shutil.chown(root, "postgres", "postgres")
        for path in root.iterdir():
            shutil.chown(path, "postgres", "postgres")
    command = [*(["runuser", "-u", "postgres", "--"] if as_postgres else []), binary, str(root / "pgbouncer.ini")]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    bouncer = PgBouncer(port, pool_mode, log, proc)
    try:
        deadline = time.monotonic() + 15
        while not _accepts(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"pgbouncer did not start (exit {proc.poll()}):\n{bouncer.log_text()}")
            time.sleep(0.05)
        yield bouncer
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: runuser and pgbouncer
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def gateway_cli(database_url: str, *args: str, stdin: str | None = None,
                env: Mapping[str, str] | None = None) -> str:
    """Run ``gateway <args>`` (the admin CLI) on ``database_url``; its stdout (asserting exit 0)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    full_env.update({"GATEWAY_DATABASE_URL": database_url, "GATEWAY_LOG_FORMAT": "json", **(env or {})})
    result = subprocess.run([sys.executable, "-m", "gateway", *args], env=full_env, cwd=REPO, input=stdin,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, (args, result.returncode, result.stdout, result.stderr)
    return result.stdout


def dev_sign_in_config(directory: Path) -> Path:
    """A config file with the dev sign-in, for :func:`tests.deploy.stack.sign_in` (the database and the rest
    come from the environment); shared by the PgBouncer and failover tests."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "gateway.toml"
    config.write_text('[cookie]\nsecure = false\n\n[login]\nredirect_hosts = ["127.0.0.1"]\n'
                      'rate_limit = 10000\n\n[upstreams.dev]\ntype = "dev"\n')
    return config
