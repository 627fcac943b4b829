"""The administration commands of the command line: ``migrate``, ``users``, ``tokens`` and ``sessions``.

Each is a :data:`StoreCommand`: it receives the parsed arguments, validated settings and an open store
(see :func:`gateway.cli.build_parser`, which wires them), calls :mod:`gateway.admin`, prints the result
and returns the exit code. Errors from :mod:`gateway.admin` propagate to the caller, which reports them.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable

from gateway import admin
from gateway.console import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    Console,
    audit_json,
    block_json,
    detail_text,
    print_json,
    print_sessions,
    print_table,
    printable,
    session_json,
    show_time,
    user_json,
)
from gateway.settings import Settings
from gateway.store.base import BlockKey, Store

StoreCommand = Callable[[argparse.Namespace, Settings, Store, Console], Awaitable[int]]
"""A command that needs the database: arguments, settings and an open store in, exit code out."""

_FROM_STDIN = "-"


async def migrate(args: argparse.Namespace, settings: Settings, store: Store, console: Console) -> int:
    """``gateway migrate``: apply pending migrations, print each version applied."""
    applied = await admin.apply_migrations(store)
    for version in applied:
        console.say(f"applied {version}")
    if not applied:
        console.say("schema is current")
    return EXIT_OK


async def users_add(args: argparse.Namespace, settings: Settings, store: Store, console: Console) -> int:
    """``gateway users add``: enrol a user by hand."""
    user = await admin.add_user(store, email=args.email, name=args.name, roles=args.roles,
                                upstream=args.upstream, subject=args.subject)
    console.say(f"added user {user.id}: {printable(user.email)} ({printable(admin.user_key(user))})")
    return EXIT_OK


async def users_list(args: argparse.Namespace, settings: Settings, store: Store, console: Console) -> int:
    """``gateway users list``: every user, as a table or JSON."""
    users = await admin.list_users(store)
    blocked = await admin.blocked_user_ids(store, users)
    if args.json:
        print_json(console, [user_json(user) | {"blocked": user.id in blocked} for user in users])
        return EXIT_OK
    rows = [[str(u.id), u.email, u.name, u.upstream, u.subject, ", ".join(u.roles), show_time(u.last_login_at),
             "yes" if u.id in blocked else ""] for u in users]
    print_table(console, ["ID", "EMAIL", "NAME", "UPSTREAM", "SUBJECT", "ROLES", "LAST LOGIN", "BLOCKED"], rows,
                empty="no users")
    return EXIT_OK


async def users_show(args: argparse.Namespace, settings: Settings, store: Store, console: Console) -> int:
    """``gateway users show``: one user, their active sessions and recent audit rows."""
    user = await admin.find_user(store, email=args.email, user_id=args.user_id)
    details = await admin.user_details(store, user)
    now = time.time()
    if args.json:
        print_json(console, {"user": user_json(user) | {"blocked": details.blocked},
                             "sessions": [session_json(s, now) for s in details.sessions],
                             "audit": [audit_json(a) for a in details.audit]})
        return EXIT_OK
    fields = [("id", str(user.id)), ("email", user.email), ("name", user.name), ("username", user.username),
              ("upstream", user.upstream), ("subject", user.subject), ("roles", ", ".join(user.roles)),
              ("groups", ", ".join(user.groups)), ("created", show_time(user.created_at)),
              ("updated", show_time(user.updated_at)), ("last login", show_time(user.last_login_at)),
              ("blocked", "yes" if details.blocked else "no")]
    for label, value in fields:
        console.say(f"{label + ':':<12}{printable(value) or '-'}")
    console.say()
    console.say(f"active sessions: {len(details.sessions)}")
    if details.sessions:
        print_sessions(console, details.sessions, now)
    console.say()
    console.say(f"recent audit: {len(details.audit)}")
    if details.audit:
        rows = [[show_time(a.at), a.event, a.actor, detail_text(a.detail)] for a in details.audit]
        print_table(console, ["AT", "EVENT", "ACTOR", "DETAIL"], rows)
    return EXIT_OK


async def users_delete(args: argparse.Namespace, settings: Settings, store: Store, console: Console) -> int:
    """``gateway users delete``: unenrol a user (sessions revoked, audit kept), blocking them unless told not to."""
    user = await admin.find_user(store, email=args.email, user_id=args.user_id)
    await admin.delete_user(store, user, block=not args.allow_return, reason=args.reason)
    key = printable(admin.user_key(user))
    outcome = ("not blocked: they may sign in again" if args.allow_return
               else f"blocked {key}; `gateway users unblock --key {key}` lets them back")
    console.say(f"deleted user {user.id}: {printable(user.email)} (sessions revoked, audit kept); {outcome}")
    return EXIT_OK


async def _block_key(args: argparse.Namespace, store: Store) -> BlockKey:
    """The block key named by --id (an enrolled user's identity), --key or --email."""
    if args.user_id is not None:
        user = await admin.find_user(store, user_id=args.user_id)
        return BlockKey.for_identity(user.upstream, user.subject)
    if args.key is not None:
        return admin.identity_key(args.key)
    return admin.email_key(args.email)


async def users_block(args: argparse.Namespace, settings: Settings, store: Store, console: Console) -> int:
    """``gateway users block``: block an identity or an email, revoking its sessions."""
    key = await _block_key(args, store)
    outcome = await admin.block_subject(store, key, reason=args.reason)
    count = outcome.sessions_revoked
    revoked = f"{count} session{'' if count == 1 else 's'} revoked"
    if outcome.created:
        console.say(f"blocked {printable(str(key))} ({revoked})")
    else:
        console.say(f"{printable(str(key))} was already blocked ({revoked})")
    return EXIT_OK


async def users_unblock(args: argparse.Namespace, settings: Settings, store: Store, console: Console) -> int:
    """``gateway users unblock``: lift a block; exit 1 when there was none."""
    key = await _block_key(args, store)
    if await admin.unblock_subject(store, key):
        console.say(f"unblocked {printable(str(key))}")
        return EXIT_OK
    console.say(f"not blocked: {printable(str(key))}")
    return EXIT_FAILURE


async def users_blocked(args: argparse.Namespace, settings: Settings, store: Store, console: Console) -> int:
    """``gateway users blocked``: every block, as a table or JSON."""
    blocks = await admin.list_blocked_subjects(store)
    if args.json:
        print_json(console, [block_json(b) for b in blocks])
        return EXIT_OK
    rows = [["email" if b.key.is_email else "identity", str(b.key), show_time(b.created_at), b.actor, b.reason]
            for b in blocks]
    print_table(console, ["KIND", "BLOCKED", "SINCE", "BY", "REASON"], rows, empty="no blocks")
    return EXIT_OK


async def tokens_mint(args: argparse.Namespace, settings: Settings, store: Store, console: Console) -> int:
    """``gateway tokens mint``: mint an API token and print it alone on stdout (the only place a token is printed)."""
    minted = await admin.mint_api_token(store, settings.session, email=args.email, user_id=args.user_id,
                                        roles=args.roles, name=args.name, lifetime=args.ttl)
    user = minted.user
    if minted.user_created:
        console.note(f"enrolled user {user.id}: {printable(user.email)} ({printable(admin.user_key(user))})")
    elif args.name:
        console.note("note: --name only applies to a user enrolled by this command; ignored")
    console.note(f"minted api token for user {user.id}, session {admin.short_hash(minted.session.token_hash)},"
                 f" expires {admin.iso_time(minted.session.expires_at)}")
    # The one place a token is printed: alone on stdout so `TOKEN=$(gateway tokens mint ...)` works.
    console.out.write(minted.token + "\n")
    console.out.flush()
    return EXIT_OK


async def tokens_revoke(args: argparse.Namespace, settings: Settings, store: Store, console: Console) -> int:
    """``gateway tokens revoke``: revoke one token (``-`` reads it from stdin); exit 1 when it was not active."""
    token = console.inp.readline() if args.token == _FROM_STDIN else args.token
    if await admin.revoke_token(store, token):
        console.say("revoked")
        return EXIT_OK
    console.say("not active")
    return EXIT_FAILURE


async def sessions_list(args: argparse.Namespace, settings: Settings, store: Store, console: Console) -> int:
    """``gateway sessions list``: a user's sessions, as a table or JSON."""
    user = await admin.find_user(store, email=args.email, user_id=args.user_id)
    sessions = await admin.list_sessions(store, user, include_inactive=args.all)
    now = time.time()
    if args.json:
        print_json(console, [session_json(s, now) for s in sessions])
        return EXIT_OK
    if not sessions:
        console.say("no sessions" if args.all else "no active sessions")
        return EXIT_OK
    print_sessions(console, sessions, now)
    return EXIT_OK


async def sessions_revoke(args: argparse.Namespace, settings: Settings, store: Store,
                           console: Console) -> int:
    """``gateway sessions revoke``: revoke every active session of a user, or with ``--session`` the one
    session with that id (of that user, when one is named too)."""
    if args.session is None and args.email is None and args.user_id is None:
        console.error("name a user (--email or --id), a session (--session), or both")
        return EXIT_USAGE
    named = args.email is not None or args.user_id is not None
    user = await admin.find_user(store, email=args.email, user_id=args.user_id) if named else None
    if args.session is not None:
        console.say(f"revoked session {await admin.revoke_session_by_id(store, args.session, user=user)}")
        return EXIT_OK
    count = await admin.revoke_user_sessions(store, await admin.find_user(store, email=args.email,
                                                                          user_id=args.user_id))
    console.say(f"revoked {count} session{'' if count == 1 else 's'}")
    return EXIT_OK


async def sessions_revoke_all(args: argparse.Namespace, settings: Settings, store: Store, console: Console) -> int:
    """``gateway sessions revoke-all --yes``: revoke every active session of everyone; refused without --yes."""
    if not args.yes:
        console.error("this signs out every user on every device (browser sessions and API tokens); "
                      "run again with --yes to do it")
        return EXIT_USAGE
    count = await admin.revoke_all_sessions(store)
    console.say(f"revoked {count} session{'' if count == 1 else 's'} of every user; every gateway forgets "
                "its cached sessions within a second")
    return EXIT_OK


async def users_roles(args: argparse.Namespace, settings: Settings, store: Store, console: Console) -> int:
    """``gateway users roles``: set, add or remove a user's roles (their sessions see it within a second)."""
    user = await admin.find_user(store, email=args.email, user_id=args.user_id)
    replace = None if args.set is None else [role for role in args.set.split(",") if role.strip()]
    updated = await admin.change_roles(store, user, replace=replace, add=args.add, remove=args.remove)
    console.say(f"user {updated.id} ({printable(admin.user_key(updated))}) roles: "
                f"{printable(', '.join(updated.roles)) or 'none'} (were: {printable(', '.join(user.roles)) or 'none'})")
    if updated.upstream != admin.LOCAL_UPSTREAM:
        console.note(f"note: this user signs in through {printable(updated.upstream)}; their next sign-in sets "
                     "their roles from its groups again (roles.map)")
    return EXIT_OK
