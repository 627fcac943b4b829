"""The ``gateway`` command line, run for real in a subprocess (``python -m gateway``) against SQLite."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway import tokens
from gateway.models import ActiveSession
from tests.harness import GatewayFactory
from tests.helpers import free_port, make_settings, store_for

TOKEN_LINE = re.compile(r"gwt_[A-Za-z0-9_-]{43}\n")
SHORT_HASH = re.compile(r"\b[0-9a-f]{8}\b")
PASSWORD = "sekrit-pw-123"


@dataclass
class Cli:
    """Runs ``python -m gateway`` with a clean GATEWAY_* environment pointing at one database."""

    database_url: str
    cwd: Path

    def __call__(self, *args: str, stdin: str | None = None,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        environ["GATEWAY_DATABASE_URL"] = self.database_url
        environ.update(env or {})
        result = subprocess.run([sys.executable, "-m", "gateway", *args], input=stdin, capture_output=True,
                                text=True, env=environ, cwd=self.cwd, timeout=60, check=False)
        assert "Traceback" not in result.stderr, result.stderr
        return result

    def ok(self, *args: str, stdin: str | None = None) -> str:
        """Run a command that must succeed; return its stdout."""
        result = self(*args, stdin=stdin)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout

    def mint(self, *args: str) -> str:
        """Mint a token and return it (checking stdout holds exactly that token)."""
        out = self.ok("tokens", "mint", *args)
        assert TOKEN_LINE.fullmatch(out), out
        return out.strip()


@pytest.fixture
def cli(sqlite_url: str, tmp_path: Path) -> Cli:
    return Cli(sqlite_url, tmp_path)


@pytest.fixture
def migrated(cli: Cli) -> Cli:
    cli.ok("migrate")
    return cli


async def lookup(database_url: str, token: str) -> ActiveSession | None:
    """The session of ``token`` read straight from the store, by hash."""
    store = store_for(make_settings(database_url=database_url))
    await store.open()
    try:
        return await store.lookup_session(tokens.hash_token(token))
    finally:
        await store.close()


# --- check-config ---------------------------------------------------------------------------------------


def test_check_config_lists_every_problem_at_once(cli: Cli, tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('surprise = 1\n[cookie]\nname = "bad name"\n')
    result = cli("check-config", "--config", str(config), env={
        "GATEWAY_LISTEN": "no-port-here",
        "GATEWAY_SESSION_LIFETIME": "forever",
        "GATEWAY_DATABASE_URL": f"postgresql://gw:{PASSWORD}@db.internal:5432/gateway",
    })
    assert result.returncode == 1
    assert result.stdout == ""
    errors = result.stderr.splitlines()
    assert all(line.startswith("error: ") for line in errors)
    for expected in ("surprise", "cookie.name", "GATEWAY_SESSION_LIFETIME", "listen"):
        assert sum(expected in line for line in errors) == 1, (expected, errors)
    assert PASSWORD not in result.stdout + result.stderr


def test_check_config_ok_prints_settings_with_secrets_masked(cli: Cli) -> None:
    result = cli("check-config", "--database-url", f"postgresql://gw:{PASSWORD}@db.internal:5432/gateway",
                 env={"GATEWAY_COOKIE_NAME": "my_session"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "configuration OK"
    assert 'cookie.name = "my_session"' in lines
    assert 'database_url = "postgresql://gw:***@db.internal:5432/gateway"' in lines
    assert PASSWORD not in result.stdout + result.stderr


def test_check_config_connect_reports_an_unreachable_database(cli: Cli) -> None:
    url = f"postgresql://gw:{PASSWORD}@127.0.0.1:{free_port()}/gateway"
    result = cli("check-config", "--connect", env={"GATEWAY_DATABASE_URL": url,
                                                  "GATEWAY_DATABASE_CONNECT_TIMEOUT": "2s"})
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("error: database: cannot connect")
    assert PASSWORD not in result.stdout + result.stderr


def test_check_config_connect_reports_the_schema(cli: Cli) -> None:
    before = cli.ok("check-config", "--connect")
    assert "database: reachable; migrations to apply at start" in before
    cli.ok("migrate")
    assert "database: reachable, schema current" in cli.ok("check-config", "--connect")
    pending = cli("check-config", "--connect", "--database-url", cli.database_url.replace("gateway.db", "new.db"),
                  env={"GATEWAY_MIGRATE_ON_START": "false"})
    assert pending.returncode == 1
    assert "gateway migrate" in pending.stderr


def test_check_config_output_is_clean_when_piped(cli: Cli, tmp_path: Path) -> None:
    """Piped (as ``capture_output`` does), both streams carry plain lines a script can read: problems one
    per ``error:`` line in a stable order, even when a key or value holds a newline or an escape sequence
    (escaped, never written raw), and no colour codes or progress output anywhere."""
    config = tmp_path / "bad.toml"
    config.write_text('log_format = "console"\n"list\\u001b[31mn" = "x"\n[upstreams."a\\nb"]\ntype = "dev"\n'
                      '[upstreams.ok]\ntype = "dev"\n"gr\\noups" = ["x"]\n')
    env = {"GATEWAY_COOKIE_SAMESITE": "La\nx"}
    runs = [cli("check-config", "--config", str(config), env=env) for _ in range(2)]
    assert runs[0].stderr == runs[1].stderr
    result = runs[0]
    assert result.returncode == 1
    assert result.stdout == ""
    errors = result.stderr.splitlines()
    assert len(errors) == 4, errors
    assert all(line.startswith("error: ") for line in errors), errors
    assert "\x1b" not in result.stderr
    assert "error: config file: unknown setting 'list\\x1b[31mn'; did you mean 'listen'?" in errors
    assert "error: upstreams.a\\x0ab: names are lower-case letters, digits and dashes" in errors
    assert "error: upstreams.ok.gr\\x0aoups: unknown setting; did you mean 'groups'?" in errors

    good = tmp_path / "good.toml"
    good.write_text('log_format = "console"\nlog_level = "warning"\n')
    ok = cli("check-config", "--connect", "--config", str(good))
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr == ""
    lines = ok.stdout.splitlines()
    assert lines[:3] == ["configuration OK", lines[1], ""] and lines[1].startswith("database: reachable")
    for line in lines[3:]:
        name, sep, value = line.partition(" = ")
        assert sep and re.fullmatch(r"[a-z_.]+", name), line
        json.loads(value)
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f]", ok.stdout)


@pytest.mark.parametrize(("args", "variables"), [
    pytest.param([], ["GATEWAY_CONFIG", "GATEWAY_DATABASE_URL[_FILE]"], id="gateway"),
    pytest.param(["serve"], ["GATEWAY_CONFIG", "GATEWAY_DATABASE_URL[_FILE]", "GATEWAY_LISTEN", "GATEWAY_WORKERS",
                             "GATEWAY_PUBLIC_URL"], id="serve"),
    pytest.param(["check-config"], ["GATEWAY_CONFIG", "GATEWAY_DATABASE_URL[_FILE]"], id="check-config"),
])
def test_help_names_the_environment_variables(cli: Cli, args: list[str], variables: list[str]) -> None:
    """Each flag that sets a setting names its variable, and the help points at the full reference."""
    result = cli(*args, "--help", env={"COLUMNS": "100"})
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for variable in variables:
        assert f"env {variable}" in text, (variable, result.stdout)
    assert "docs/configuration.md" in text and "`gateway config-reference`" in text
    flags = set(re.findall(r"^  (--[a-z-]+)", result.stdout, re.M)) - {"--help", "--version", "--connect"}
    assert len(flags) == len(variables), flags


# --- settings problems and an unreachable database ----------------------------------------------------


@pytest.mark.parametrize("args", [
    pytest.param(["users", "list"], id="users-list"),
    pytest.param(["migrate"], id="migrate"),
    pytest.param(["serve"], id="serve"),
])
def test_commands_refuse_to_run_with_settings_problems(cli: Cli, args: list[str]) -> None:
    result = cli(*args, env={"GATEWAY_LISTEN": "no-port-here", "GATEWAY_WORKERS": "many"})
    assert result.returncode == 2
    assert "listen" in result.stderr and "GATEWAY_WORKERS" in result.stderr


def test_serve_flags_are_validated_like_settings(cli: Cli) -> None:
    result = cli("serve", "--listen", "nowhere", "--public-url", "ftp://example.com")
    assert result.returncode == 2
    assert "listen" in result.stderr and "public_url" in result.stderr


@pytest.mark.parametrize("args", [
    pytest.param(["migrate"], id="migrate"),
    pytest.param(["users", "list"], id="users-list"),
    pytest.param(["sessions", "revoke", "--email", "ada@example.com"], id="sessions-revoke"),
])
def test_unreachable_database_is_one_line_and_exit_1(cli: Cli, tmp_path: Path, args: list[str]) -> None:
    result = cli(*args, "--database-url", f"sqlite:///{tmp_path}/no/such/dir/gw.db")
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and "unavailable" in line


def test_global_options_work_before_and_after_the_command(cli: Cli, tmp_path: Path) -> None:
    other = f"sqlite:///{tmp_path}/other.db"
    assert cli.ok("--database-url", other, "migrate").startswith("applied ")
    assert cli.ok("migrate", "--database-url", other) == "schema is current\n"


# --- migrate --------------------------------------------------------------------------------------------


def test_migrate_applies_once(cli: Cli) -> None:
    first = cli.ok("migrate").splitlines()
    assert first and all(re.fullmatch(r"applied \d{4}_\w+", line) for line in first)
    assert cli.ok("migrate") == "schema is current\n"


# --- users ----------------------------------------------------------------------------------------------


def test_users_add_list_show_delete(migrated: Cli) -> None:
    cli = migrated
    added = cli.ok("users", "add", "--email", "Ada@Example.com", "--name", "Ada Lovelace",
                   "--role", "admin", "--role", "dev")
    assert added.startswith("added user 1: Ada@Example.com (local:ada@example.com)")
    cli.ok("users", "add", "--email", "bob@example.com", "--upstream", "github", "--subject", "4242")

    table = cli.ok("users", "list").splitlines()
    assert table[0].split()[:3] == ["ID", "EMAIL", "NAME"]
    assert "Ada Lovelace" in table[1] and "admin, dev" in table[1]
    assert "github" in table[2] and "4242" in table[2]
    listed = json.loads(cli.ok("users", "list", "--json"))
    assert [(u["id"], u["email"], u["roles"]) for u in listed] == [
        (1, "Ada@Example.com", ["admin", "dev"]), (2, "bob@example.com", [])]

    token = cli.mint("--email", "ada@example.com")
    shown = json.loads(cli.ok("users", "show", "--email", "ADA@example.com", "--json"))
    assert shown["user"]["subject"] == "ada@example.com"
    [session] = shown["sessions"]
    assert session["kind"] == "api" and session["state"] == "active"
    assert [a["event"] for a in shown["audit"]] == ["token_mint", "user_add"]
    human = cli.ok("users", "show", "--id", "1")
    assert "Ada Lovelace" in human and "active sessions: 1" in human and "token_mint" in human
    assert token not in human and tokens.hash_token(token) not in human

    assert cli.ok("users", "delete", "--email", "ada@example.com").startswith("deleted user 1")
    assert [u["id"] for u in json.loads(cli.ok("users", "list", "--json"))] == [2]
    assert cli("users", "show", "--id", "1").returncode == 1


async def test_users_delete_blocks_until_unblocked(migrated: Cli) -> None:
    cli = migrated
    cli.ok("users", "add", "--email", "ada@example.com")
    token = cli.mint("--email", "ada@example.com")
    deleted = cli.ok("users", "delete", "--email", "ada@example.com", "--reason", "left")
    assert deleted == ("deleted user 1: ada@example.com (sessions revoked, audit kept); blocked "
                       "local:ada@example.com; `gateway users unblock --key local:ada@example.com` lets them back\n")
    assert await lookup(cli.database_url, token) is None

    for args in (["users", "add", "--email", "ada@example.com"], ["tokens", "mint", "--email", "ada@example.com"]):
        refused = cli(*args)
        assert (refused.returncode, refused.stdout) == (1, ""), args
        assert "is blocked" in refused.stderr and "gateway users unblock --key local:ada@example.com" in refused.stderr

    table = cli.ok("users", "blocked").splitlines()
    assert table[0].split() == ["KIND", "BLOCKED", "SINCE", "BY", "REASON"]
    assert table[1].split()[:2] == ["identity", "local:ada@example.com"] and table[1].split()[-2:] == ["cli", "left"]
    [block] = json.loads(cli.ok("users", "blocked", "--json"))
    assert (block["kind"], block["upstream"], block["subject"], block["reason"]) == (
        "identity", "local", "ada@example.com", "left")

    assert cli.ok("users", "unblock", "--key", "local:ada@example.com") == "unblocked local:ada@example.com\n"
    again = cli("users", "unblock", "--key", "local:ada@example.com")
    assert (again.returncode, again.stdout) == (1, "not blocked: local:ada@example.com\n")
    assert cli.ok("users", "blocked") == "no blocks\n"
    assert cli.ok("users", "add", "--email", "ada@example.com").startswith("added user 2:")


def test_users_delete_allow_return(migrated: Cli) -> None:
    migrated.ok("users", "add", "--email", "ada@example.com")
    out = migrated.ok("users", "delete", "--id", "1", "--allow-return")
    assert out.endswith("; not blocked: they may sign in again\n")
    assert migrated.ok("users", "blocked") == "no blocks\n"
    migrated.ok("users", "add", "--email", "ada@example.com")


def test_users_block_by_id_key_and_email(migrated: Cli) -> None:
    cli = migrated
    cli.ok("users", "add", "--email", "ada@example.com", "--upstream", "corp", "--subject", "8f14")
    cli.ok("users", "add", "--email", "bob@example.com")
    cli.mint("--email", "ada@example.com")
    assert cli.ok("users", "block", "--id", "1") == "blocked corp:8f14 (1 session revoked)\n"
    assert cli.ok("users", "block", "--id", "1") == "corp:8f14 was already blocked (0 sessions revoked)\n"
    assert cli.ok("users", "block", "--key", "github:583231", "--reason", "never again") == (
        "blocked github:583231 (0 sessions revoked)\n")
    assert cli.ok("users", "block", "--email", " Bob@Example.com") == "blocked bob@example.com (0 sessions revoked)\n"

    listed = json.loads(cli.ok("users", "list", "--json"))
    assert [(u["email"], u["blocked"]) for u in listed] == [("ada@example.com", True), ("bob@example.com", True)]
    assert cli.ok("users", "list").splitlines()[0].split()[-1] == "BLOCKED"
    assert "blocked:    yes" in cli.ok("users", "show", "--id", "1")
    assert json.loads(cli.ok("users", "show", "--id", "1", "--json"))["user"]["blocked"] is True
    assert [b["kind"] for b in json.loads(cli.ok("users", "blocked", "--json"))] == ["identity", "identity", "email"]

    assert cli.ok("users", "unblock", "--email", "BOB@example.com") == "unblocked bob@example.com\n"
    assert cli.ok("users", "unblock", "--id", "1") == "unblocked corp:8f14\n"
    assert "blocked:    no" in cli.ok("users", "show", "--id", "1")


@pytest.mark.parametrize(("args", "code", "message"), [
    pytest.param(["users", "block", "--key", "no-colon"], 2, "expected upstream:subject", id="malformed-key"),
    pytest.param(["users", "block", "--email", "nope"], 2, "not an email address", id="malformed-email"),
    pytest.param(["users", "block", "--id", "9"], 1, "no user with id 9", id="unknown-id"),
    pytest.param(["users", "block", "--key", "a:b", "--email", "a@b.c"], 2, "not allowed with", id="two-keys"),
    pytest.param(["users", "block"], 2, "one of the arguments", id="no-key"),
])
def test_users_block_rejects_bad_input(migrated: Cli, args: list[str], code: int, message: str) -> None:
    result = migrated(*args)
    assert (result.returncode, result.stdout) == (code, "")
    assert message in result.stderr
    assert migrated.ok("users", "blocked") == "no blocks\n"


def test_users_add_twice_fails(migrated: Cli) -> None:
    migrated.ok("users", "add", "--email", "ada@example.com")
    result = migrated("users", "add", "--email", "ADA@example.com")
    assert result.returncode == 1
    assert "already exists (id 1)" in result.stderr


@pytest.mark.parametrize("args", [
    pytest.param(["users", "show", "--email", "nobody@example.com"], id="users-show"),
    pytest.param(["users", "delete", "--email", "nobody@example.com"], id="users-delete"),
    pytest.param(["sessions", "list", "--email", "nobody@example.com"], id="sessions-list"),
    pytest.param(["sessions", "revoke", "--email", "nobody@example.com"], id="sessions-revoke"),
])
def test_unknown_email_is_a_clear_error(migrated: Cli, args: list[str]) -> None:
    result = migrated(*args)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == "error: no user with email 'nobody@example.com'\n"


def test_unknown_id_is_a_clear_error(migrated: Cli) -> None:
    result = migrated("tokens", "mint", "--id", "77")
    assert (result.returncode, result.stdout, result.stderr) == (1, "", "error: no user with id 77\n")


def test_shared_email_lists_the_user_ids(migrated: Cli) -> None:
    migrated.ok("users", "add", "--email", "ada@example.com")
    migrated.ok("users", "add", "--email", "ada@example.com", "--upstream", "github", "--subject", "7")
    result = migrated("users", "delete", "--email", "ada@example.com")
    assert result.returncode == 1
    assert "ids 1, 2" in result.stderr and "--id" in result.stderr
    assert len(json.loads(migrated.ok("users", "list", "--json"))) == 2


# --- tokens ---------------------------------------------------------------------------------------------


async def test_tokens_mint_prints_only_the_token_and_it_works(migrated: Cli) -> None:
    before = time.time()
    result = migrated("tokens", "mint", "--email", "Bot@Example.com", "--ttl", "2h", "--role", "deploy")
    after = time.time()
    assert result.returncode == 0, result.stderr
    assert TOKEN_LINE.fullmatch(result.stdout), result.stdout
    token = result.stdout.strip()
    assert token not in result.stderr
    assert "enrolled user 1" in result.stderr

    found = await lookup(migrated.database_url, token)
    assert found is not None
    assert found.session.kind == "api" and found.session.is_active(time.time())
    assert found.user.email == "Bot@Example.com" and found.user.roles == ("deploy",)
    assert before + 7200 - 1 <= found.session.expires_at <= after + 7200 + 1


def test_tokens_mint_checks_roles_of_an_existing_user(migrated: Cli) -> None:
    migrated.ok("users", "add", "--email", "ada@example.com", "--role", "dev")
    migrated.mint("--email", "ada@example.com", "--role", "dev")
    result = migrated("tokens", "mint", "--email", "ada@example.com", "--role", "admin")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "admin" in result.stderr


@pytest.mark.parametrize("ttl", ["forever", "0", "-5m"])
def test_tokens_mint_rejects_a_bad_ttl(migrated: Cli, ttl: str) -> None:
    result = migrated("tokens", "mint", "--email", "ada@example.com", f"--ttl={ttl}")
    assert result.returncode == 2
    assert result.stdout == ""


async def test_tokens_revoke_reads_the_token_from_stdin(migrated: Cli) -> None:
    token = migrated.mint("--email", "ada@example.com")
    assert migrated.ok("tokens", "revoke", "-", stdin=token + "\n") == "revoked\n"
    found = await lookup(migrated.database_url, token)
    assert found is not None and found.session.revoked_at is not None

    again = migrated("tokens", "revoke", "-", stdin=token + "\n")
    assert (again.returncode, again.stdout) == (1, "not active\n")
    unknown = migrated("tokens", "revoke", tokens.mint_token())
    assert (unknown.returncode, unknown.stdout) == (1, "not active\n")


def test_tokens_revoke_rejects_malformed_text_without_echoing_it(migrated: Cli) -> None:
    almost = "gwt_" + "x" * 40
    result = migrated("tokens", "revoke", "-", stdin=almost)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "not a gateway token" in result.stderr and almost not in result.stderr


# --- sessions -------------------------------------------------------------------------------------------


def test_sessions_list_and_revoke(migrated: Cli) -> None:
    cli = migrated
    first = cli.mint("--email", "ada@example.com")
    second = cli.mint("--email", "ada@example.com", "--ttl", "1d")
    hashes = {tokens.hash_token(first), tokens.hash_token(second)}

    table = cli.ok("sessions", "list", "--email", "ada@example.com")
    rows = table.splitlines()[1:]
    assert len(rows) == 2
    assert {row.split()[0] for row in rows} == {h[:8] for h in hashes}
    listed = json.loads(cli.ok("sessions", "list", "--email", "ada@example.com", "--json"))
    assert {s["session"] for s in listed} == {h[:8] for h in hashes}
    for output in (table, json.dumps(listed)):
        assert not any(h in output for h in hashes)
        assert first not in output and second not in output

    assert cli.ok("sessions", "revoke", "--email", "ada@example.com") == "revoked 2 sessions\n"
    assert cli.ok("sessions", "list", "--email", "ada@example.com") == "no active sessions\n"
    everything = json.loads(cli.ok("sessions", "list", "--id", "1", "--all", "--json"))
    assert [s["state"] for s in everything] == ["revoked", "revoked"]
    assert cli.ok("sessions", "revoke", "--email", "ada@example.com") == "revoked 0 sessions\n"


# --- PostgreSQL -----------------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_tokens_mint_and_sessions_revoke_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    cli = Cli(postgres_url, tmp_path)
    assert cli.ok("migrate").startswith("applied ")
    token = cli.mint("--email", "ada@example.com", "--ttl", "30m")
    found = await lookup(postgres_url, token)
    assert found is not None and found.session.is_active(time.time())
    assert found.session.expires_at - found.session.created_at == pytest.approx(1800)

    assert cli.ok("sessions", "revoke", "--email", "ada@example.com") == "revoked 1 session\n"
    found = await lookup(postgres_url, token)
    assert found is not None and found.session.revoked_at is not None
    assert SHORT_HASH.search(cli.ok("sessions", "list", "--email", "ada@example.com", "--all"))


# --- sessions revoke --session, sessions revoke-all, users roles ---------------------------------------


def session_ids(cli: Cli, *args: str) -> list[str]:
    return [s["session"] for s in json.loads(cli.ok("sessions", "list", *args, "--json"))]


async def test_sessions_revoke_one_session_by_its_id(migrated: Cli) -> None:
    cli = migrated
    first, second = cli.mint("--email", "ada@example.com"), cli.mint("--email", "ada@example.com")
    other = cli.mint("--email", "bob@example.com")
    target = tokens.hash_token(first)[:8]
    assert set(session_ids(cli, "--email", "ada@example.com")) == {target, tokens.hash_token(second)[:8]}

    # naming another user narrows the search: not found there, nothing revoked
    wrong = cli("sessions", "revoke", "--session", target, "--email", "bob@example.com")
    assert (wrong.returncode, wrong.stdout) == (1, "")
    assert wrong.stderr == f"error: no active session of user 2 with id {target}\n"
    assert cli.ok("sessions", "revoke", "--session", target.upper()) == f"revoked session {target}\n"
    assert (await lookup(cli.database_url, first)).session.revoked_at is not None  # type: ignore[union-attr]
    for token in (second, other):
        found = await lookup(cli.database_url, token)
        assert found is not None and found.session.revoked_at is None
    again = cli("sessions", "revoke", "--session", target)
    assert (again.returncode, again.stderr) == (1, f"error: no active session with id {target}\n")
    hashed = tokens.hash_token(other)
    assert cli.ok("sessions", "revoke", "--id", "2", "--session", hashed) == f"revoked session {hashed[:8]}\n"
    audit = json.loads(cli.ok("users", "show", "--id", "1", "--json"))["audit"]
    assert audit[0]["event"] == "revoke" and audit[0]["detail"]["session"].startswith(target)


@pytest.mark.parametrize(("args", "message"), [
    pytest.param(["--session", "abc1234"], "8 to 64 lower-case hex digits", id="shorter-than-listed"),
    pytest.param(["--session", "zzzzzzzz"], "8 to 64 lower-case hex digits", id="not-hex"),
    pytest.param([], "name a user (--email or --id), a session (--session), or both", id="nothing-named"),
])
def test_sessions_revoke_refuses_a_malformed_id(migrated: Cli, args: list[str], message: str) -> None:
    token = migrated.mint("--email", "ada@example.com")
    result = migrated("sessions", "revoke", *args)
    assert (result.returncode, result.stdout) == (2, "")
    assert message in result.stderr
    assert session_ids(migrated, "--email", "ada@example.com") == [tokens.hash_token(token)[:8]]


async def test_sessions_revoke_all_needs_yes(migrated: Cli) -> None:
    cli = migrated
    minted = [cli.mint("--email", email) for email in ("ada@example.com", "bob@example.com", "ada@example.com")]
    refused = cli("sessions", "revoke-all")
    assert (refused.returncode, refused.stdout) == (2, "")
    assert "--yes" in refused.stderr
    assert len(session_ids(cli, "--id", "1")) == 2

    out = cli.ok("sessions", "revoke-all", "--yes")
    assert out == "revoked 3 sessions of every user; every gateway forgets its cached sessions within a second\n"
    for token in minted:
        found = await lookup(cli.database_url, token)
        assert found is not None and found.session.revoked_at is not None
    assert cli.ok("sessions", "revoke-all", "--yes").startswith("revoked 0 sessions ")


def test_users_roles_set_add_remove(migrated: Cli) -> None:
    cli = migrated
    cli.ok("users", "add", "--email", "ada@example.com", "--role", "dev")
    assert cli.ok("users", "roles", "--email", "ada@example.com", "--add", "admin", "--add", "ops") == (
        "user 1 (local:ada@example.com) roles: dev, admin, ops (were: dev)\n")
    assert cli.ok("users", "roles", "--id", "1", "--remove", "dev") == (
        "user 1 (local:ada@example.com) roles: admin, ops (were: dev, admin, ops)\n")
    assert cli.ok("users", "roles", "--id", "1", "--set", "viewer, editor") == (
        "user 1 (local:ada@example.com) roles: viewer, editor (were: admin, ops)\n")
    assert cli.ok("users", "roles", "--id", "1", "--set", "") == (
        "user 1 (local:ada@example.com) roles: none (were: viewer, editor)\n")
    audit = json.loads(cli.ok("users", "show", "--id", "1", "--json"))["audit"]
    assert [a["event"] for a in audit[:4]] == ["user_roles"] * 4
    assert audit[0]["detail"] == {"previous": "viewer,editor", "roles": ""}

    cli.ok("users", "add", "--email", "bob@example.com", "--upstream", "github", "--subject", "42")
    result = cli("users", "roles", "--id", "2", "--set", "admin")
    assert result.returncode == 0 and "next sign-in sets their roles from its groups again" in result.stderr


@pytest.mark.parametrize(("args", "code", "message"), [
    pytest.param(["--id", "1", "--add", "has space"], 2, "not a role name: 'has space'", id="space"),
    pytest.param(["--id", "1", "--set", "a,,b;c\x1b"], 2, "not a role name", id="control-character"),
    pytest.param(["--id", "1", "--add", "a", "--set", "b"], 2, "not allowed with", id="set-and-add"),
    pytest.param(["--id", "1"], 2, "one of the arguments", id="no-change"),
    pytest.param(["--id", "7", "--add", "a"], 1, "no user with id 7", id="unknown-user"),
])
def test_users_roles_rejects_bad_input(migrated: Cli, args: list[str], code: int, message: str) -> None:
    migrated.ok("users", "add", "--email", "ada@example.com", "--role", "dev")
    result = migrated("users", "roles", *args)
    assert (result.returncode, result.stdout) == (code, "")
    assert message in result.stderr
    assert json.loads(migrated.ok("users", "list", "--json"))[0]["roles"] == ["dev"]


@pytest.mark.postgres
async def test_a_second_replica_sees_every_change_within_a_second(
        postgres_url: str, tmp_path: Path, gateway_factory: GatewayFactory) -> None:
    """The CLI runs against PostgreSQL while a gateway replica has the sessions cached: each change reaches it
    through the revocation feed within a second, without a database read forced on it by the test."""
    cli = Cli(postgres_url, tmp_path)
    cli.ok("migrate")
    replica = await gateway_factory(database_url=postgres_url)
    while replica.metric("gateway_revocation_feed_up") != 1:
        await asyncio.sleep(0.02)

    async def run(*args: str) -> str:
        return await asyncio.to_thread(cli.ok, *args)

    async def status(token: str, path: str = "/auth/check") -> int:
        return (await replica.client.get(path, headers={"Authorization": f"Bearer {token}"})).status

    async def within_a_second(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
        deadline = time.monotonic() + 1.0
        while not await predicate():
            assert time.monotonic() < deadline, f"the replica still {what} a second later"
            await asyncio.sleep(0.02)

    ada = [await asyncio.to_thread(cli.mint, "--email", "ada@example.com", "--role", "dev") for _ in range(2)]
    bob = await asyncio.to_thread(cli.mint, "--email", "bob@example.com")
    assert [await status(t) for t in (*ada, bob)] == [200, 200, 200]  # all three cached now

    async def roles() -> list[str]:
        resp = await replica.client.get("/auth/userinfo", headers={"Authorization": f"Bearer {ada[0]}"})
        return list((await resp.json())["roles"])

    assert await roles() == ["dev"]
    await run("users", "roles", "--email", "ada@example.com", "--add", "admin")
    await within_a_second(lambda: _eq(roles(), ["dev", "admin"]), "shows the old roles")
    assert await status(ada[1]) == 200  # a roles change revokes nothing

    await run("sessions", "revoke", "--session", tokens.hash_token(ada[1])[:8])
    await within_a_second(lambda: _eq(status(ada[1]), 401), "admits the session revoked by its id")
    assert await status(ada[0]) == 200

    assert (await run("sessions", "revoke-all", "--yes")).startswith("revoked 2 sessions ")
    await within_a_second(lambda: _eq(status(ada[0]), 401), "admits a session after revoke-all")
    assert await status(bob) == 401


async def _eq(value: Awaitable[object], expected: object) -> bool:
    return await value == expected
