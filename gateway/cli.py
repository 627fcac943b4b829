"""The ``gateway`` command line: ``serve``, ``check-config``, ``migrate`` and the admin subcommands.

Thin by design: parse arguments, load settings, call :mod:`gateway.admin` (through
:mod:`gateway.admincommands`), format the result (:mod:`gateway.console`). Exit codes:
0 success, 1 the operation failed (unknown user, database unavailable, nothing to revoke or unblock, a
blocked identity, bad config in ``check-config``), 2 the command was given bad input (usage, settings
problems, a malformed token or key).
Results go to stdout, messages to stderr; no token is ever printed except the one ``tokens mint`` returns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from gateway import __version__, admin, admincommands
from gateway.admincommands import StoreCommand
from gateway.console import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Console
from gateway.errors import StoreUnavailable
from gateway.logging import configure_logging
from gateway.redaction import scrub, url_secrets
from gateway.settings import Settings, env_name, load_settings, parse_duration, redacted
from gateway.store import make_store, revocation_retention
from gateway.store.base import Store

T = TypeVar("T")

Handler = Callable[[argparse.Namespace, Console], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line (``argv`` defaults to ``sys.argv[1:]``) and return the process exit code."""
    args = build_parser().parse_args(argv)
    console = Console(out=sys.stdout, err=sys.stderr, inp=sys.stdin)
    handler: Handler = args.handler
    try:
        return handler(args, console)
    except KeyboardInterrupt:
        console.note("interrupted")
        return EXIT_INTERRUPTED


# --- argument parsing -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The full ``gateway`` parser; each leaf command stores its function under ``handler``."""
    # Global options are accepted before the command and after it. Leaf parsers default to SUPPRESS so
    # that an option given before the command is not overwritten by the leaf's own default.
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="gateway", description="Forward-auth gateway: serve it, check its configuration, administer it.",
        epilog=_SETTINGS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser, default=None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="run the gateway HTTP server",
                                epilog=_SETTINGS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--listen", metavar="HOST:PORT", help=_setting_help("address to listen on", "listen"))
    serve.add_argument("--workers", type=_positive_int, metavar="N",
                       help=_setting_help("number of worker processes", "workers"))
    serve.add_argument("--public-url", metavar="URL",
                       help=_setting_help("the URL browsers reach the gateway at", "public_url"))
    serve.set_defaults(handler=_serve)

    check = commands.add_parser(
        "check-config", parents=[common], epilog=_SETTINGS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        help="list every configuration problem, or print the effective settings",
        description="List every configuration problem, one per line on stderr, and exit 1; or print\n"
                    "'configuration OK' and the effective settings (NAME = JSON value, passwords\n"
                    "masked) on stdout and exit 0.")
    check.add_argument("--connect", action="store_true",
                       help="also connect to the database and check its schema")
    check.set_defaults(handler=_check_config)

    reference = commands.add_parser(
        "config-reference", help="print the configuration reference (every setting and upstream key) as Markdown",
        description="Print the configuration reference as Markdown: every setting with its TOML key, "
                    "environment variable, type, default and meaning, and every key of every upstream type. "
                    "The repository's docs/configuration.md is this output.")
    reference.set_defaults(handler=_config_reference)

    migrate = commands.add_parser("migrate", parents=[common], help="apply pending database migrations")
    migrate.set_defaults(handler=_store_command(admincommands.migrate))

    users = commands.add_parser(
        "users", help="enrol, list, show, delete and block users, change their roles").add_subparsers(
        dest="users_command", required=True, metavar="COMMAND")
    add = users.add_parser("add", parents=[common], help="enrol a user by hand")
    add.add_argument("--email", required=True)
    add.add_argument("--name", default="", help="display name")
    add.add_argument("--role", dest="roles", action="append", default=[], metavar="ROLE",
                     help="grant a role (repeat for several)")
    add.add_argument("--upstream", default=admin.LOCAL_UPSTREAM, help="identity source (default: %(default)s)")
    add.add_argument("--subject", help="stable id at the upstream (default: the lower-cased email)")
    add.set_defaults(handler=_store_command(admincommands.users_add))
    listing = users.add_parser("list", parents=[common], help="list every user")
    _add_json_option(listing)
    listing.set_defaults(handler=_store_command(admincommands.users_list))
    show = users.add_parser("show", parents=[common],
                            help="a user with their active sessions and recent audit rows")
    _add_user_selector(show)
    _add_json_option(show)
    show.set_defaults(handler=_store_command(admincommands.users_show))
    delete = users.add_parser(
        "delete", parents=[common],
        help="unenrol a user: revoke their sessions and block them from coming back (audit is kept)",
        description="Unenrol a user: revoke and delete their sessions (browser sessions and API tokens, on "
                    "every replica within a second), delete the user, and block their identity "
                    "(upstream:subject), so that neither a sign-in through the upstream nor a bearer JWT "
                    "enrols them again. They stay out until `gateway users unblock`. With --allow-return "
                    "nothing is blocked: they may sign in again and are then enrolled afresh.")
    _add_user_selector(delete)
    delete.add_argument("--allow-return", action="store_true",
                        help="do not block: the user may sign in again (and is then enrolled afresh)")
    delete.add_argument("--reason", default="", help="why, recorded with the block and in the audit log")
    delete.set_defaults(handler=_store_command(admincommands.users_delete))
    block = users.add_parser(
        "block", parents=[common], help="keep an identity or an email out, enrolled or not",
        description="Block one identity (an enrolled user by --id, or any upstream:subject by --key, even "
                    "one that never signed in) or every identity presenting an email (--email). Active "
                    "sessions of the users it matches are revoked at once on every replica; sign-ins, "
                    "bearer JWTs and new tokens are refused until `gateway users unblock`. The user row is "
                    "kept (use `gateway users delete` to remove it too).")
    _add_block_selector(block, email_help="block every identity presenting this email (case-insensitive), "
                                          "enrolled users and future sign-ins alike")
    block.add_argument("--reason", default="", help="why, recorded with the block and in the audit log")
    block.set_defaults(handler=_store_command(admincommands.users_block))
    unblock = users.add_parser("unblock", parents=[common],
                               help="lift a block: the identity (or email) may sign in again")
    _add_block_selector(unblock, email_help="lift the block on this email")
    unblock.set_defaults(handler=_store_command(admincommands.users_unblock))
    roles = users.add_parser(
        "roles", parents=[common], help="set, add or remove a user's roles",
        description="Change a user's roles (audited). Their sessions are not revoked: every replica "
                    "re-reads the user within a second. A user of an upstream gets roles from its groups "
                    "again at their next sign-in (roles.map); local users keep what is set here.")
    _add_user_selector(roles)
    change = roles.add_mutually_exclusive_group(required=True)
    change.add_argument("--set", metavar="ROLE,ROLE", help="the roles to hold, comma-separated ('' for none)")
    change.add_argument("--add", action="append", default=[], metavar="ROLE", help="grant a role (repeatable)")
    change.add_argument("--remove", action="append", default=[], metavar="ROLE",
                        help="take a role away (repeatable)")
    roles.set_defaults(handler=_store_command(admincommands.users_roles))
    blocked = users.add_parser("blocked", parents=[common], help="list every block")
    _add_json_option(blocked)
    blocked.set_defaults(handler=_store_command(admincommands.users_blocked))

    token_commands = commands.add_parser("tokens", help="mint and revoke API tokens").add_subparsers(
        dest="tokens_command", required=True, metavar="COMMAND")
    mint = token_commands.add_parser(
        "mint", parents=[common],
        help="mint an API token; prints only the token on stdout",
        description="Mint an API token for a user (enrolling a local user if the email is unknown). "
                    "Only the token is printed on stdout; everything else goes to stderr.")
    _add_user_selector(mint)
    mint.add_argument("--ttl", type=_positive_duration, metavar="DURATION",
                      help="lifetime such as 12h or 30d (default: session.api_token_lifetime)")
    mint.add_argument("--role", dest="roles", action="append", default=[], metavar="ROLE",
                      help="roles for a new user; for an existing user, roles they must hold")
    mint.add_argument("--name", default="", help="display name of a user enrolled by this command")
    mint.set_defaults(handler=_store_command(admincommands.tokens_mint))
    revoke = token_commands.add_parser("revoke", parents=[common], help="revoke one API or browser token")
    revoke.add_argument("token", metavar="TOKEN",
                        help="the token, or - to read it from stdin (keeps it out of shell history)")
    revoke.set_defaults(handler=_store_command(admincommands.tokens_revoke))

    session_commands = commands.add_parser("sessions", help="list and revoke sessions").add_subparsers(
        dest="sessions_command", required=True, metavar="COMMAND")
    sessions_list = session_commands.add_parser("list", parents=[common], help="a user's sessions")
    _add_user_selector(sessions_list)
    sessions_list.add_argument("--all", action="store_true", help="include revoked and expired sessions")
    _add_json_option(sessions_list)
    sessions_list.set_defaults(handler=_store_command(admincommands.sessions_list))
    sessions_revoke = session_commands.add_parser(
        "revoke", parents=[common], help="revoke every active session of a user, or one session by its id",
        description="Revoke every active session of a user (--email or --id), or with --session the one "
                    "active session with that id (the SESSION column of `gateway sessions list`), of that "
                    "user when one is named too. Every replica drops it within a second.")
    _add_user_selector(sessions_revoke, required=False)
    sessions_revoke.add_argument("--session", metavar="ID",
                                 help="the session's id as `gateway sessions list` shows it (8 or more hex digits)")
    sessions_revoke.set_defaults(handler=_store_command(admincommands.sessions_revoke))
    revoke_all = session_commands.add_parser(
        "revoke-all", parents=[common], help="revoke every active session of every user (needs --yes)",
        description="Revoke every active session of every user, browser sessions and API tokens alike, in "
                    "one transaction (for example after a key leak): everyone signs in again, every script "
                    "needs a new token. Every replica forgets its cached sessions within a second. Does "
                    "nothing without --yes.")
    revoke_all.add_argument("--yes", action="store_true", help="really sign everyone out")
    revoke_all.set_defaults(handler=_store_command(admincommands.sessions_revoke_all))
    return parser


_SETTINGS_EPILOG = """\
Every setting can also come from the TOML file (--config) or a GATEWAY_*
environment variable: the dotted name in capitals, cookie.name is
GATEWAY_COOKIE_NAME; add _FILE to read the value from a file. Flags win over
both. Every setting, variable and upstream key is listed in
docs/configuration.md, which `gateway config-reference` prints."""
"""Where to find every setting, under the help of the commands that read settings (kept as written, so
that no line breaks inside a variable or command name)."""


def _setting_help(text: str, setting: str) -> str:
    """A flag's help naming the setting it overrides and that setting's environment variable."""
    return f"{text} (setting {setting}, env {env_name(tuple(setting.split('.')))})"


def _add_global_options(parser: argparse.ArgumentParser, *, default: Any) -> None:
    parser.add_argument("--config", metavar="FILE", default=default,
                        help="TOML configuration file (env GATEWAY_CONFIG)")
    parser.add_argument("--database-url", metavar="URL", default=default,
                        help="database URL (setting database_url, env GATEWAY_DATABASE_URL[_FILE]; prefer the "
                             "variable: arguments are visible in ps)")


def _add_user_selector(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--email", help="the user's email (case-insensitive)")
    group.add_argument("--id", dest="user_id", type=_positive_int, metavar="N", help="the user's id")


def _add_block_selector(parser: argparse.ArgumentParser, *, email_help: str) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--id", dest="user_id", type=_positive_int, metavar="N",
                       help="the identity of the enrolled user with this id")
    group.add_argument("--key", metavar="UPSTREAM:SUBJECT",
                       help="an identity as `gateway users list` shows it, e.g. corp:8f14e45f or github:583231")
    group.add_argument("--email", help=email_help)


def _add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be longer than zero")
    return seconds


# --- settings, store and error plumbing ----------------------------------------------------------------


def _load(args: argparse.Namespace, **overrides: Any) -> tuple[Settings, list[str]]:
    overrides["database_url"] = getattr(args, "database_url", None)
    return load_settings(getattr(args, "config", None), os.environ, overrides)


def _settings_or_report(args: argparse.Namespace, console: Console, **overrides: Any) -> Settings | None:
    """Settings with no problems, or None after printing every problem (the caller exits 2)."""
    settings, problems = _load(args, **overrides)
    for problem in problems:
        console.error(problem)
    if problems:
        console.note("fix the settings above (gateway check-config lists them) and try again")
        return None
    return settings


def _scrub(message: str, settings: Settings) -> str:
    """``message`` with the database passwords masked, in case a driver error repeated them."""
    return scrub(message, url_secrets(settings.database_url, settings.database.feed_url))


def _cli_log_level(level: str) -> str:
    # Admin commands report failures themselves in one line; store warnings would only repeat them.
    return "debug" if level.lower() == "debug" else "error"


async def _using_store(settings: Settings, action: Callable[[Store], Awaitable[T]]) -> T:
    store = make_store(settings.database_url, settings.database,
                       revocation_retention=revocation_retention(settings.cache))
    try:
        await store.open()
        return await action(store)
    finally:
        await store.close()


def _store_command(command: StoreCommand) -> Handler:
    """Wrap an async admin command: load settings (exit 2 on problems), open the store, close it after.

    StoreUnavailable becomes one line on stderr and exit 1; an AdminError its message and exit 1 (2 for
    bad input such as a malformed token). No traceback reaches the operator for either.
    """

    def run(args: argparse.Namespace, console: Console) -> int:
        settings = _settings_or_report(args, console)
        if settings is None:
            return EXIT_USAGE
        configure_logging(settings.log_format, _cli_log_level(settings.log_level))
        try:
            return asyncio.run(_using_store(settings, lambda store: command(args, settings, store, console)))
        except StoreUnavailable as exc:
            console.error(_scrub(exc.message, settings))
            return EXIT_FAILURE
        except admin.AdminError as exc:
            message = str(exc)
            if isinstance(exc, admin.AmbiguousEmail):
                message += "; choose one with --id"
            console.error(message)
            return EXIT_USAGE if isinstance(exc, admin.MalformedToken | admin.InvalidInput) else EXIT_FAILURE

    return run


# --- commands ------------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace, console: Console) -> int:
    settings = _settings_or_report(args, console, listen=args.listen, workers=args.workers,
                                   public_url=args.public_url)
    if settings is None:
        return EXIT_USAGE
    # Imported here so admin commands never load the HTTP server stack.
    from gateway.serving.server import serve

    return serve(settings)


def _config_reference(args: argparse.Namespace, console: Console) -> int:
    # Imported here: only this command reads the settings code's source to describe it.
    from gateway.settings.reference import render_reference

    console.out.write(render_reference())
    return EXIT_OK


def _check_config(args: argparse.Namespace, console: Console) -> int:
    settings, problems = _load(args)
    # Connecting with half-default settings could reach (or create) the wrong database, so the
    # connection is only tried once the settings themselves are sound.
    connect = args.connect and not problems
    database_lines: list[str] = []
    if connect:
        configure_logging(settings.log_format, _cli_log_level(settings.log_level))
        try:
            status = asyncio.run(_using_store(settings, admin.check_database))
        except StoreUnavailable as exc:
            problems.append(f"database: cannot connect: {_scrub(exc.message, settings)}")
        else:
            pending = ", ".join(status.pending_migrations)
            if not pending:
                database_lines.append("database: reachable, schema current")
            elif settings.migrate_on_start:
                database_lines.append(f"database: reachable; migrations to apply at start: {pending}")
            else:
                problems.append(f"database: migrations pending ({pending}) and migrate_on_start is off: "
                                "run gateway migrate")
    if problems:
        for problem in problems:
            console.error(problem)
        if args.connect and not connect:
            console.note("note: the database connection is checked once the settings have no problems")
        return EXIT_FAILURE
    console.say("configuration OK")
    for line in database_lines:
        console.say(line)
    console.say()
    for name, value in redacted(settings).items():
        console.say(f"{name} = {json.dumps(value)}")
    return EXIT_OK
