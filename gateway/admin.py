"""Admin operations behind ``gateway`` subcommands: plain async functions on a Store that return data.

Nothing here prints, parses arguments or exits; :mod:`gateway.cli` does that. Every change made here is
attributed to the actor ``cli`` in the audit log, and no function returns a token except
:func:`mint_api_token`, whose caller must show it exactly once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from gateway import tokens
from gateway.access import is_role_name
from gateway.errors import StoreUnavailable
from gateway.models import AuditEvent, SessionRecord, User
from gateway.sessions import start_session
from gateway.settings import SessionSettings
from gateway.store.administration import Administration
from gateway.store.base import (
    Audit,
    Block,
    BlockKey,
    BlockOutcome,
    Schema,
    SessionLookups,
    Sessions,
    Store,
    Users,
    normalise_email,
)

ACTOR = "cli"
"""The audit ``actor`` for every change made from the command line."""

LOCAL_UPSTREAM = "local"
"""The upstream of users enrolled by hand rather than by a login."""

REVOKE_REASON = "admin revoke"

REVOKE_ALL_REASON = "admin revoke-all"

HASH_PREFIX_LENGTH = 8
"""How many hex characters of a token hash are shown to people: enough to tell sessions apart."""


class AdminError(Exception):
    """An admin operation cannot be done as asked; the message is a sentence fit to show the operator."""


class UnknownUser(AdminError):
    """No user matches the given email or id."""


class AmbiguousEmail(AdminError):
    """Several users share the email; ``user_ids`` lists them so the operator can pick one by id."""

    def __init__(self, email: str, user_ids: Sequence[int]) -> None:
        ids = ", ".join(str(i) for i in user_ids)
        super().__init__(f"email {email!r} matches several users (ids {ids})")
        self.user_ids = tuple(user_ids)


class UserExists(AdminError):
    """A user with the same ``(upstream, subject)`` is already enrolled."""


class RoleNotHeld(AdminError):
    """A token was asked for roles its user does not have."""


class MalformedToken(AdminError):
    """The text given is not shaped like a gateway token (it is never echoed back)."""


class UnknownSession(AdminError):
    """No active session has the given id (the short token hash ``gateway sessions list`` shows)."""


class AmbiguousSession(AdminError):
    """Several active sessions share the given id; nothing was revoked."""


class InvalidInput(AdminError):
    """An argument is empty or malformed (an email without ``@``, a blank role...)."""


class Blocked(AdminError):
    """The identity or email is blocked (an admin removed it): lift the block before enrolling it or
    giving it a token."""


@dataclass(frozen=True, slots=True)
class DatabaseStatus:
    """What :func:`check_database` found: the database answers, and these migrations are pending."""

    pending_migrations: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UserDetails:
    """A user with their active sessions (newest first), recent audit rows (newest first) and whether they
    are blocked (by their identity key or their email)."""

    user: User
    sessions: tuple[SessionRecord, ...]
    audit: tuple[AuditEvent, ...]
    blocked: bool = False


@dataclass(frozen=True, slots=True)
class MintedToken:
    """The result of :func:`mint_api_token`. ``token`` is the only copy: show it once, never log it."""

    token: str
    user: User
    session: SessionRecord
    user_created: bool


def user_key(user: User) -> str:
    """The audit key of a user, ``upstream:subject``, which outlives the user row."""
    return f"{user.upstream}:{user.subject}"


def short_hash(token_hash: str) -> str:
    """The first few hex characters of a token hash, the only form shown to people."""
    return token_hash[:HASH_PREFIX_LENGTH]


def iso_time(ts: float) -> str:
    """Unix seconds as ISO 8601 in UTC to the second, e.g. ``2030-01-02T03:04:05Z``."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def session_state(session: SessionRecord, now: float) -> str:
    """``active``, ``revoked``, ``expired`` (absolute lifetime over) or ``idle`` (idle deadline passed)."""
    if session.revoked_at is not None:
        return "revoked"
    if now >= session.expires_at:
        return "expired"
    if session.idle_expires_at is not None and now >= session.idle_expires_at:
        return "idle"
    return "active"


def _clean_email(email: str) -> str:
    cleaned = email.strip()
    if "@" not in cleaned or any(ch.isspace() for ch in cleaned):
        raise InvalidInput(f"not an email address: {email!r}")
    return cleaned


def identity_key(text: str) -> BlockKey:
    """``upstream:subject`` (split at the first colon) as a block key; InvalidInput unless both are there."""
    upstream, colon, subject = text.strip().partition(":")
    if not colon or not upstream.strip() or not subject.strip():
        raise InvalidInput(f"expected upstream:subject (as in `gateway users list`), got {text!r}")
    return BlockKey.for_identity(upstream.strip(), subject.strip())


def email_key(email: str) -> BlockKey:
    """The block key of every identity presenting ``email``; InvalidInput for a malformed email."""
    return BlockKey.for_email(_clean_email(email))


def _clean_roles(roles: Sequence[str]) -> tuple[str, ...]:
    cleaned = tuple(dict.fromkeys(role.strip() for role in roles))
    if any(not role for role in cleaned):
        raise InvalidInput("role names must not be empty")
    return cleaned


async def check_database(store: Schema) -> DatabaseStatus:
    """Ping the database and list pending migrations; raise StoreUnavailable when it cannot be reached."""
    await store.ping()
    return DatabaseStatus(pending_migrations=tuple(await store.pending_migrations()))


async def apply_migrations(store: Schema) -> list[str]:
    """Apply pending migrations and return the versions applied (empty when the schema was current)."""
    return await store.migrate()


async def add_user(store: Store, *, email: str, name: str = "", roles: Sequence[str] = (),
                   upstream: str = LOCAL_UPSTREAM, subject: str | None = None) -> User:
    """Enrol a user keyed by ``(upstream, subject)``; ``subject`` defaults to the lower-cased email.

    Audits ``user_add``. Raises UserExists when that key is already enrolled (this never silently
    rewrites an existing user's roles), Blocked when the key or the email is blocked (re-admitting a
    removed user is an explicit :func:`unblock_subject`, never a side effect) and InvalidInput for a malformed
    email, upstream or role.
    """
    email = _clean_email(email)
    roles = _clean_roles(roles)
    upstream = upstream.strip()
    subject = (email.lower() if subject is None else subject).strip()
    if not upstream or not subject:
        raise InvalidInput("upstream and subject must not be empty")
    await _refuse_blocked(store, upstream, subject, email)
    for existing in await store.list_users():
        if existing.upstream == upstream and existing.subject == subject:
            raise UserExists(f"user {upstream}:{subject} already exists (id {existing.id})")
    user = await store.upsert_user(upstream, subject, email=email, name=name.strip(), roles=roles)
    await store.record_audit("user_add", user_id=user.id, user_key=user_key(user), actor=ACTOR,
                             detail={"email": user.email, "roles": ",".join(user.roles)})
    return user


async def list_users(store: Users) -> list[User]:
    """Every enrolled user, oldest first."""
    return await store.list_users()


async def find_user(store: Users, *, email: str | None = None, user_id: int | None = None) -> User:
    """The one user with this id, or else with this email (case-insensitive).

    Raises UnknownUser when none matches and AmbiguousEmail when several users share the email.
    """
    if user_id is not None:
        user = await store.get_user(user_id)
        if user is None:
            raise UnknownUser(f"no user with id {user_id}")
        return user
    if email is None:
        raise InvalidInput("give an email or a user id")
    matches = await store.find_users_by_email(email)
    if not matches:
        raise UnknownUser(f"no user with email {email.strip()!r}")
    if len(matches) > 1:
        raise AmbiguousEmail(email.strip(), [u.id for u in matches])
    return matches[0]


async def user_details(store: Store, user: User, *, audit_limit: int = 20,
                       now: float | None = None) -> UserDetails:
    """The user with their active sessions, their ``audit_limit`` most recent audit rows and whether they
    are blocked."""
    now = time.time() if now is None else now
    sessions = await store.list_sessions(user.id, now=now)
    audit = await store.list_audit(user_id=user.id, limit=audit_limit)
    return UserDetails(user=user, sessions=tuple(sessions), audit=tuple(audit),
                       blocked=await is_blocked(store, user))


async def delete_user(store: Users, user: User, *, block: bool = True, reason: str = "") -> None:
    """Unenrol: revoke and delete the user's sessions, devices and user row; audit rows are kept.

    With ``block`` (the default) the user's identity (``upstream:subject``) is blocked in the same
    transaction, so no credential brings them back: not a sign-in through the upstream, not a bearer
    JWT, not a token minted here, until :func:`unblock_subject`. Without it they may sign in again and are then
    enrolled afresh (with no roles but what the upstream's groups map to). Raises UnknownUser when the
    user vanished in the meantime, InvalidInput for a reason over 512 characters.
    """
    try:
        deleted = await store.delete_user(user.id, actor=ACTOR, block=block, reason=reason.strip())
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    if not deleted:
        raise UnknownUser(f"user {user.id} no longer exists")


async def block_subject(store: Users, key: BlockKey, *, reason: str = "") -> BlockOutcome:
    """Block an identity (``upstream:subject``, enrolled or not) or an email, on every replica at once.

    Every active session of the users it matches is revoked and their cached sessions (bearer JWTs
    included) are evicted everywhere; from then on sign-ins and bearer JWTs of that identity (or of any
    identity presenting that email) are refused and no token is minted for it. Blocking twice is not an
    error (``created`` is then False). Audited ``user_block``. Raises InvalidInput for a malformed key or
    a reason over 512 characters.
    """
    try:
        return await store.block_subject(key, actor=ACTOR, reason=reason.strip())
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


async def unblock_subject(store: Users, key: BlockKey) -> bool:
    """Lift a block (audited ``user_unblock``); False when ``key`` was not blocked.

    The identity may then sign in again (enrolled afresh when its user was deleted). Raises InvalidInput
    for a malformed key.
    """
    try:
        return await store.unblock_subject(key, actor=ACTOR)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


async def list_blocked_subjects(store: Users) -> list[Block]:
    """Every block, oldest first."""
    return await store.list_blocked_subjects()


async def is_blocked(store: Users, user: User) -> bool:
    """True when the user's identity or email is blocked."""
    return await store.is_blocked(user.upstream, user.subject, emails=(user.email,))


async def blocked_user_ids(store: Users, users: Iterable[User]) -> set[int]:
    """The ids of those ``users`` whose identity or email is blocked (one query for all of them)."""
    blocks = await store.list_blocked_subjects()
    keys = {(b.key.upstream, b.key.subject) for b in blocks if not b.key.is_email}
    emails = {b.key.email for b in blocks if b.key.is_email}
    return {u.id for u in users if (u.upstream, u.subject) in keys or normalise_email(u.email) in emails}


async def _refuse_blocked(store: Users, upstream: str, subject: str, email: str) -> None:
    """Raise Blocked, saying how to lift it, when the identity or the email is blocked."""
    if await store.is_blocked(upstream, subject):
        key = BlockKey.for_identity(upstream, subject)
        raise Blocked(f"{key} is blocked (an admin removed it); to let it back: gateway users unblock --key {key}")
    if email and await store.is_blocked(upstream, subject, emails=(email,)):
        raise Blocked(f"the email {normalise_email(email)} is blocked; to let it back: "
                      f"gateway users unblock --email {normalise_email(email)}")


async def mint_api_token(store: Store, sessions: SessionSettings, *, email: str | None = None,
                         user_id: int | None = None, roles: Sequence[str] = (), name: str = "",
                         lifetime: float | None = None, now: float | None = None) -> MintedToken:
    """Start an ``api`` session for a user and return its token, the only copy that will ever exist.

    The user is found by id or email; an unknown email enrols a ``local`` user with ``roles`` and
    ``name``. For an existing user, ``roles`` (when given) must all be held by the user, else RoleNotHeld;
    ``name`` is then ignored. A blocked user, or a blocked identity or email to enrol, is Blocked.
    ``lifetime`` defaults to ``session.api_token_lifetime``. Audits ``token_mint`` with the kind, expiry
    and hash prefix (never the token). If the audit row cannot be written, the session is revoked again
    before the error propagates, so no unaudited token lives.
    """
    roles = _clean_roles(roles)
    if lifetime is not None and not lifetime > 0:
        raise InvalidInput("the token lifetime must be positive")
    user_created = False
    try:
        user = await find_user(store, email=email, user_id=user_id)
    except UnknownUser:
        if email is None:
            raise
        user = await add_user(store, email=email, name=name, roles=roles)
        user_created = True
    else:
        await _refuse_blocked(store, user.upstream, user.subject, user.email)
        missing = [role for role in roles if role not in user.roles]
        if missing:
            raise RoleNotHeld(f"user {user.id} does not hold the role(s) {', '.join(missing)} "
                              f"(has: {', '.join(user.roles) or 'none'})")

    now = time.time() if now is None else now
    token, session = await start_session(store, sessions, user_id=user.id, kind="api", now=now,
                                         lifetime=lifetime)
    await audit_token_mint(store, user, session, actor=ACTOR, extra={"roles": ",".join(roles)} if roles else {})
    return MintedToken(token=token, user=user, session=session, user_created=user_created)


class _MintAudit(Audit, SessionLookups, Protocol):
    """What auditing a mint needs: the audit log, and revoking the token when the row cannot be written."""


async def audit_token_mint(store: _MintAudit, user: User, session: SessionRecord, *, actor: str,
                           extra: Mapping[str, str]) -> None:
    """Audit ``token_mint`` for the API token ``session`` just minted for ``user`` (kind, expiry, hash prefix
    and ``extra``; never the token). If the row cannot be written the token is revoked again before the
    error propagates, so no unaudited token lives."""
    detail = {"kind": session.kind, "expires_at": iso_time(session.expires_at),
              "session": short_hash(session.token_hash), **extra}
    try:
        await store.record_audit("token_mint", user_id=user.id, user_key=user_key(user), actor=actor,
                                 detail=detail)
    except Exception:
        # If the database is gone the revocation fails too; the token then dies with this process unseen.
        with contextlib.suppress(StoreUnavailable):
            await store.revoke_session(session.token_hash, actor=actor, reason="token_mint audit failed")
        raise


async def revoke_token(store: SessionLookups, token: str) -> bool:
    """Revoke the session of ``token`` by its hash; True if it was active until now.

    Raises MalformedToken, without echoing the text, when it is not shaped like a gateway token.
    """
    token = token.strip()
    if not tokens.is_well_formed(token):
        raise MalformedToken("that is not a gateway token (expected gwt_ followed by 43 characters)")
    return await store.revoke_session(tokens.hash_token(token), actor=ACTOR, reason=REVOKE_REASON)


async def list_sessions(store: Sessions, user: User, *, include_inactive: bool = False,
                        now: float | None = None) -> list[SessionRecord]:
    """The user's sessions, newest first: active ones only, or every one with ``include_inactive``."""
    now = time.time() if now is None else now
    return await store.list_sessions(user.id, include_inactive=include_inactive, now=now)


async def revoke_user_sessions(store: Sessions, user: User) -> int:
    """Revoke every active session of the user (broadcast to all gateway processes); return how many."""
    return await store.revoke_user_sessions(user.id, actor=ACTOR, reason=REVOKE_REASON)


async def revoke_all_sessions(store: Administration) -> int:
    """Revoke every active session of every user, browser sessions and API tokens alike; return how many.

    One transaction, audited once (``revoke_all``); every gateway process forgets every cached session
    (bearer JWTs included) within about a second. For emergencies such as a leaked key: everyone signs in again.
    """
    return await store.revoke_all_sessions(actor=ACTOR, reason=REVOKE_ALL_REASON)


async def revoke_session_by_id(store: Administration, session_id: str, *, user: User | None = None) -> str:
    """Revoke the one active session whose id (token hash prefix, as ``gateway sessions list`` shows) is
    ``session_id``, of ``user`` when given; return its short id.

    Raises InvalidInput for an id shorter than the listed one or not hex, UnknownSession when no active
    session matches and AmbiguousSession when several do (nothing is revoked then).
    """
    prefix = session_id.strip().lower()
    try:
        matches = await store.revoke_session_by_prefix(prefix, user_id=None if user is None else user.id,
                                                       actor=ACTOR, reason=REVOKE_REASON)
    except ValueError as exc:
        raise InvalidInput(f"{exc}; got {session_id.strip()[:80]!r}") from None
    whose = f" of user {user.id}" if user is not None else ""
    if not matches:
        raise UnknownSession(f"no active session{whose} with id {prefix}")
    if len(matches) > 1:
        raise AmbiguousSession(f"id {prefix} matches several active sessions{whose}; nothing was revoked: "
                               "give more hex digits, or name the user with --email or --id")
    return short_hash(matches[0])


async def change_roles(store: Administration, user: User, *, replace: Sequence[str] | None = None,
                       add: Sequence[str] = (), remove: Sequence[str] = ()) -> User:
    """Set the user's roles to ``replace``, or add ``add`` to and take ``remove`` from those they hold; return
    the user as stored now.

    Audited ``user_roles``. Every gateway process re-reads the user within about a second; no session is
    revoked. A user of an upstream gets roles mapped from the upstream's groups again at their next
    sign-in. Raises InvalidInput for a name :func:`gateway.access.is_role_name` refuses (empty, spaces,
    commas...) and UnknownUser when the user vanished meanwhile.
    """
    if replace is not None:
        wanted: Sequence[str] = replace
    else:
        dropped = {role.strip() for role in remove}
        wanted = [*(role for role in user.roles if role not in dropped), *add]
    roles = _clean_roles(wanted)
    bad = [role for role in roles if not is_role_name(role)]
    if bad:
        raise InvalidInput(f"not a role name: {bad[0]!r} (no spaces, commas or control characters)")
    updated = await store.set_user_roles(user.id, roles, actor=ACTOR)
    if updated is None:
        raise UnknownUser(f"user {user.id} no longer exists")
    return updated
