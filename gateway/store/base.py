"""The store's protocols by role (schema, lookups, sessions, provider logouts, revocations, users, login, audit,
session secrets).

``Store`` composes them into the one object a backend implements; a consumer asks for the roles it uses
(the check core: :class:`SessionLookups`). Implementations (``sqlite.SQLiteStore``,
``postgres.PostgresStore``) pass one conformance suite (``tests/store/test_conformance.py``). Rules every
implementation keeps:

- Times cross the interface as Unix epoch seconds (float).
- Only SHA-256 hex hashes of tokens are stored or passed in; a token never reaches the store.
- Any failure to reach the database (refused, dropped, timed out) raises
  :class:`gateway.errors.StoreUnavailable`; nothing else leaks driver exceptions.
- Revocations are broadcast to every process watching the same database (:meth:`Store.watch_revocations`)
  and appended to a revocation log in the same transaction, each with a sequence number (increasing, and
  visible in that order), so a watcher that missed a broadcast catches up from the log.
- The audit log is append-only; deleting a user keeps their audit rows.
- Login attempts and login-failure counters live in the database, so every replica sees the same ones;
  the operations that must not race (consuming an attempt, counting a failure) are single statements.
- Blocks (identities an admin removed) and login devices live in the database too. Blocking revokes the
  sessions of every user it matches in the same transaction, so no session of a blocked identity
  outlives the block; nothing on the check path reads blocks.
- A browser session remembers the provider session it began in (only as a hash), so an upstream's
  back-channel logout can end it; the logout token's id is claimed in the same transaction as the
  revocation, so a replayed token revokes nothing.
- What a session keeps of its upstream (the ID token) is stored only sealed, by the caller, and goes with
  the session (its role, :class:`gateway.store.sessionsecrets.SessionSecrets`, lives beside this module).
- Device codes of the OAuth 2.0 Device Authorization Grant (:class:`gateway.store.devicerole.DeviceGrants`)
  are stored only as hashes; a poll is judged and recorded in one transaction, so an approved code's token
  is claimed once, whatever the replicas.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from gateway.models import (
    ActiveSession,
    AuditEvent,
    LoginAttempt,
    Revocation,
    SessionKind,
    SessionRecord,
    User,
)
from gateway.store.administration import Administration
from gateway.store.devicerole import DeviceGrants
from gateway.store.sessionsecrets import SessionSecrets
from gateway.store.tokensrole import ApiTokens

RevocationHandler = Callable[[Revocation], None]
"""Called for every revocation seen by the watcher, in any process (including this one); at least once
per revocation (a user's revocation may be delivered twice), so handlers must be idempotent."""

WatchStateHandler = Callable[[bool], None]
"""Called with True when the revocation feed is live, False when it is lost (so caches can flush)."""


@dataclass(frozen=True, slots=True)
class LoggedRevocation:
    """One row of the revocation log: its sequence number, when it was written, and what it revoked."""

    seq: int
    at: float
    revocation: Revocation


@dataclass(frozen=True, slots=True)
class BlockKey:
    """Who a block is about: one identity (``upstream`` and ``subject``, exactly as users are keyed), or
    else every identity presenting ``email``. Build one with :meth:`for_identity` or :meth:`for_email`.

    Exactly one form is set: an identity key has an empty ``email``; an email key has empty ``upstream``
    and ``subject`` and holds the email trimmed and lower-cased (emails compare case-insensitively).
    """

    upstream: str = ""
    subject: str = ""
    email: str = ""

    @classmethod
    def for_identity(cls, upstream: str, subject: str) -> BlockKey:
        """The key of the identity ``(upstream, subject)`` (taken as given: subjects are case-sensitive)."""
        return cls(upstream=upstream, subject=subject)

    @classmethod
    def for_email(cls, email: str) -> BlockKey:
        """The key of every identity presenting ``email`` (trimmed, lower-cased)."""
        return cls(email=normalise_email(email))

    @property
    def is_email(self) -> bool:
        """True for an email key."""
        return bool(self.email)

    def __str__(self) -> str:
        """``upstream:subject`` (the audit log's user key), or the email."""
        return self.email if self.email else f"{self.upstream}:{self.subject}"


def normalise_email(email: str) -> str:
    """An email as blocks compare it: surrounding space removed, lower-cased."""
    return email.strip().lower()


@dataclass(frozen=True, slots=True)
class Block:
    """One blocked identity or email, when and by whom it was blocked, and why (free text, maybe empty)."""

    key: BlockKey
    created_at: float
    actor: str
    reason: str


class BlockOutcome(NamedTuple):
    """What :meth:`Store.block_subject` did: whether the block is new, and how many sessions it revoked."""

    created: bool
    sessions_revoked: int


@dataclass(frozen=True, slots=True)
class Device:
    """A browser someone signed in with: ``device_hash`` is SHA-256 hex of its device cookie's value.

    The cookie exempts the browser from its address's login lockout (its own failures count against the
    device instead) until ``expires_at``. It belongs to the user who signed in, and goes with them.
    """

    device_hash: str
    user_id: int
    created_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class ProviderLogout:
    """A verified back-channel logout, as the store acts on it: end the browser sessions of ``upstream``
    that began in the provider session ``provider_session``, or that belong to the user ``subject``, or
    (both set) that match both. At least one of the two is set.

    ``provider_session`` and ``token_id`` are SHA-256 hex (see :func:`gateway.sessions.provider_session_key`
    and :func:`gateway.sessions.logout_token_key`); ``token_id`` is single use until ``token_expires_at``.
    """

    upstream: str
    subject: str
    provider_session: str
    token_id: str
    token_expires_at: float


class LogoutTokenReused(Exception):
    """The logout token's id was already used: a replay. Nothing was revoked."""


class Schema(Protocol):
    """The database's lifecycle and schema: connecting, closing, probing, migrating."""

    async def open(self) -> None:
        """Connect (pool or file). Must not fail if the database is down: later calls raise instead."""

    async def close(self) -> None:
        """Release every connection and stop background work. Safe to call twice."""

    async def ping(self) -> None:
        """Return when the database answers a trivial query; raise StoreUnavailable otherwise."""

    async def migrate(self) -> list[str]:
        """Apply pending schema migrations in order, each in one transaction; return the versions applied.

        Concurrent callers (several replicas starting at once) are serialised; existing rows are kept.
        """

    async def pending_migrations(self) -> list[str]:
        """Versions not yet applied (empty when the schema is current)."""


class SessionLookups(Protocol):
    """What the check core needs: a session by its hash, batched last-use writes, one revocation."""

    def lookup_session(self, token_hash: str) -> Awaitable[ActiveSession | None]:
        """The session with this hash joined with its user, whatever its state; None when unknown.

        The caller judges revocation and expiry (:meth:`SessionRecord.is_active`). Returns a coroutine or
        a future (the hot path's lookups may be answered in batches without a task each); awaiting it
        raises StoreUnavailable when the database cannot answer.
        """

    async def touch_sessions(self, touches: Mapping[str, tuple[float, float]]) -> None:
        """Record batched uses in one round trip: ``token_hash -> (first use, last use)`` since the last write.

        For each session, ``last_seen_at`` moves to the last use (never backwards) and the idle deadline
        (when the session has one) moves with it, provided the session was still alive at the *first* use
        (the writer saw every use in between, each within the idle timeout). A revoked session, or one whose
        idle deadline had passed by the first use, is left alone: a late write never resurrects a session.
        Unknown hashes are ignored.
        """

    async def revoke_session(self, token_hash: str, *, actor: str, reason: str) -> bool:
        """Revoke one session, audit it and broadcast it; True if it was active until now."""


class Sessions(Protocol):
    """Sessions made and ended outside the check path: sign-in, admin commands, health metrics."""

    async def create_session(self, *, token_hash: str, user_id: int, kind: SessionKind, now: float,
                             expires_at: float, idle_timeout: float, client_addr: str = "",
                             user_agent: str = "", mfa: bool = False, provider_session: str = "") -> SessionRecord:
        """Insert a new session (``idle_timeout`` 0 means none) and return it.

        ``mfa`` records whether the login used a second factor; it is returned by :meth:`lookup_session`
        and :meth:`list_sessions`. ``provider_session``, when not empty, is the SHA-256 hex of the provider
        session the sign-in began in (:func:`gateway.sessions.provider_session_key`), which a back-channel
        logout names (:meth:`ProviderLogouts.revoke_provider_sessions`). Raises ValueError for a malformed
        hash (either), kind or idle timeout, or a hash already in use, and NotFound when the user does not
        exist.
        """

    async def revoke_user_sessions(self, user_id: int, *, actor: str, reason: str) -> int:
        """Revoke every active session of a user, audit and broadcast it; return how many."""

    async def list_sessions(self, user_id: int, *, include_inactive: bool = False,
                            now: float | None = None) -> list[SessionRecord]:
        """A user's sessions, newest first; only active ones unless ``include_inactive``."""

    async def count_active_sessions(self, now: float) -> int:
        """How many sessions are active at ``now``."""


class ProviderLogouts(Protocol):
    """Sessions ended by the upstream that signed them in (OpenID Connect Back-Channel Logout 1.0)."""

    async def revoke_provider_sessions(self, logout: ProviderLogout, *, actor: str, reason: str,
                                       now: float) -> list[str]:
        """Claim ``logout.token_id`` and revoke the browser sessions the logout names, in one transaction.

        Revoked: the sessions of kind ``browser`` active at ``now`` of users of ``logout.upstream`` that
        began in ``logout.provider_session`` (when set) and belong to the user ``logout.subject`` (when
        set). API tokens are never revoked. Each revoked session is audited (one ``revoke`` row per user,
        with ``reason`` and the count; one row with count 0 when nothing matched) and appended to the
        revocation log like :meth:`SessionLookups.revoke_session`, so every replica evicts it. Returns the
        token hashes revoked (maybe none).

        The token id is claimed until ``logout.token_expires_at``; when it is already claimed and not
        expired (a replay, also one racing the first use on another replica), nothing is revoked and
        LogoutTokenReused is raised. Expired claims are deleted on the side. Raises ValueError for a
        logout no schema would accept (malformed hashes, neither subject nor provider session, empty
        upstream, NUL, an upstream over 128 or a subject over 1024 characters, non-finite times).
        """


class Revocations(Protocol):
    """The revocation log and the live feed over it, which keep every replica's cache honest."""

    async def revocations_since(self, seq: int, *, limit: int = 1000) -> list[LoggedRevocation]:
        """The logged revocations with a sequence number above ``seq``, oldest first, at most ``limit``.

        Sequence numbers only grow and become visible in order: once a caller has read ``n``, no
        revocation numbered below ``n`` appears later (numbers may be skipped). Rows are kept at least
        :func:`gateway.store.revocation_retention` seconds.
        """

    async def prune_revocations(self, *, before: float) -> int:
        """Delete logged revocations written before ``before`` (epoch seconds); return how many.

        The store also prunes by itself, keeping :func:`gateway.store.revocation_retention` seconds.
        """

    async def watch_revocations(self, on_revoke: RevocationHandler, on_state: WatchStateHandler) -> None:
        """Deliver every revocation made by any process on this database, until cancelled or closed.

        Never ends on its own while the store is open: it reconnects by itself, with backoff, whatever
        broke the feed, calling ``on_state(False)`` when the feed is lost and ``on_state(True)`` each time
        it is (re-)established. Nothing is lost in between: on every (re)connect, and at least every
        second while live, it reads the revocation log past the last sequence number it saw, so every
        revocation logged after the watch began (less a few seconds, for clocks that disagree) reaches
        ``on_revoke``, also those made while the feed was down or whose broadcast never arrived. A
        revocation reaches it within about a second while the feed is live. Returns when the store is
        closed; handler errors are logged, never raised.
        """


class Users(Protocol):
    """Users and blocks: who is enrolled, who may not enrol again."""

    async def upsert_user(self, upstream: str, subject: str, *, email: str, name: str = "",
                          username: str = "", groups: Sequence[str] = (), roles: Sequence[str] = (),
                          login_at: float | None = None) -> User:
        """Create the user keyed by ``(upstream, subject)`` or refresh its fields; return the row.

        Safe under concurrency: simultaneous calls for one key yield exactly one row. ``login_at``, when
        given, sets ``last_login_at``.
        """

    async def get_user(self, user_id: int) -> User | None:
        """The user with this id, or None."""

    async def get_user_by_key(self, upstream: str, subject: str) -> User | None:
        """The user keyed by ``(upstream, subject)``, or None."""

    async def find_users_by_email(self, email: str) -> list[User]:
        """Users whose email matches case-insensitively after trimming, oldest first."""

    async def list_users(self) -> list[User]:
        """Every user, oldest first."""

    async def delete_user(self, user_id: int, *, actor: str, block: bool = False, reason: str = "") -> bool:
        """Unenrol: revoke and delete the user's sessions and devices, delete the user, audit it; False if unknown.

        The revocation is broadcast like :meth:`revoke_user_sessions`; audit rows are kept. With ``block``,
        the user's identity key is blocked in the same transaction (see :meth:`block_subject`; ``reason``
        is recorded with it), so no sign-in or bearer JWT can enrol them again until it is unblocked.
        """

    async def block_subject(self, key: BlockKey, *, actor: str, reason: str = "") -> BlockOutcome:
        """Block an identity or an email, revoke the sessions of every user it matches, audit and broadcast.

        Users matched: the one keyed by an identity key, or every user whose email equals an email key
        (ignoring case and surrounding space). Their active sessions are revoked in the same
        transaction (audited ``revoke`` with reason ``user_block``), and a revocation of each user is
        broadcast, so cached sessions (bearer JWTs included) end on every replica. A new block is audited
        ``user_block``. Blocking again is not an error: the block is kept as it was (``created`` False)
        and any active session of a matched user is still revoked. Raises ValueError for a malformed key
        (both forms or neither, empty parts, NUL, ``upstream`` over 256, ``subject`` over 1024 or
        ``email`` over 512 characters) or a ``reason`` over 512 characters.
        """

    async def unblock_subject(self, key: BlockKey, *, actor: str) -> bool:
        """Lift the block on ``key`` and audit it (``user_unblock``); False when it was not blocked."""

    async def is_blocked(self, upstream: str, subject: str, *, emails: Sequence[str] = ()) -> bool:
        """True when the identity ``(upstream, subject)`` is blocked, or any of ``emails`` is.

        Emails are compared trimmed and lower-cased; empty ones are ignored. One round trip.
        """

    async def list_blocked_subjects(self) -> list[Block]:
        """Every block, oldest first."""


class LoginState(Protocol):
    """Sign-in state shared by every replica: logins in progress, failure counters and locks, devices."""

    async def create_login_attempt(self, *, attempt_hash: str, upstream: str, state: str, nonce: str,
                                   code_verifier: str, return_to: str, client_addr: str, now: float,
                                   expires_at: float) -> None:
        """Store a login in progress under ``attempt_hash`` until :meth:`consume_login_attempt` or expiry.

        ``attempt_hash`` is SHA-256 hex (64 lower-case characters) of the browser-binding cookie value.
        Raises ValueError for a malformed hash, a hash already in use, a value containing NUL or longer
        than its column (``return_to`` up to 2048 characters, ``upstream`` 128, ``state`` and ``nonce``
        512, ``code_verifier`` 256, ``client_addr`` 256; see :data:`gateway.store.LOGIN_ATTEMPT_LIMITS`),
        or a non-finite time. Also deletes (some of) the attempts that expired before ``now``, so
        abandoned logins do not pile up.
        """

    async def consume_login_attempt(self, attempt_hash: str, *, now: float) -> LoginAttempt | None:
        """Atomically delete the attempt and return it; None when unknown, already consumed or expired.

        An attempt is expired when ``now >= expires_at``; an expired attempt is deleted as well. Of
        several concurrent calls for one attempt (in any processes) at most one gets it. A malformed
        hash is simply unknown.
        """

    async def record_login_failure(self, client_addr: str, *, now: float, window: float, threshold: int,
                                   lock_for: float) -> float | None:
        """Count one failed login callback from ``client_addr``; return the lock's end if now locked.

        ``client_addr`` keys the counter: a client address, or any other text naming who failed (the
        login code counts a browser with a device cookie under ``device:<device hash>``).

        Failures are counted in a fixed window: when more than ``window`` seconds have passed since the
        window started, it restarts at ``now`` with this failure as its first. When the count in the
        window reaches ``threshold`` (and for every further failure in the window), the address is
        locked until ``now + lock_for`` (a lock is never shortened) and that end is returned; otherwise
        None. The count is one atomic statement: N concurrent failures (any processes) count N.
        Raises ValueError for an empty or over-long (256) address, ``threshold < 1``, a negative
        ``window``, a non-positive ``lock_for`` or a non-finite time.
        """

    async def locked_until(self, client_addr: str, *, now: float) -> float | None:
        """When the lock on ``client_addr`` ends, if it is locked at ``now`` (``now < end``); else None."""

    async def clear_login_failures(self, client_addr: str) -> None:
        """Forget the address's failures and any lock (after a successful login). No error if none."""

    async def remember_device(self, device_hash: str, *, user_id: int, now: float, expires_at: float) -> None:
        """Record the browser whose device cookie hashes to ``device_hash`` as ``user_id``'s, until ``expires_at``.

        A device already recorded for the same user lives on until the later of its expiry and
        ``expires_at``. Raises ValueError for a malformed hash, non-finite times, or a hash recorded for
        another user; NotFound when the user does not exist. Also deletes (some of) the devices that
        expired before ``now``.
        """

    async def find_device(self, device_hash: str, *, now: float) -> Device | None:
        """The device with this hash if it is recorded and ``now < expires_at``; else None (also for a
        malformed hash)."""


class Audit(Protocol):
    """The append-only audit log."""

    async def record_audit(self, event: str, *, user_id: int | None, user_key: str = "", actor: str,
                           detail: Mapping[str, str] | None = None) -> None:
        """Append one audit row (``login``, ``logout``, ``revoke``, ``token_mint``, ``user_delete``...)."""

    async def list_audit(self, *, user_id: int | None = None, limit: int = 100) -> list[AuditEvent]:
        """Newest audit rows first, optionally for one user id."""


class Store(Schema, SessionLookups, Sessions, ProviderLogouts, Revocations, Users, LoginState, Audit,
            ApiTokens, DeviceGrants,
            Administration, SessionSecrets, Protocol):
    """Persistent users, sessions, audit log and login state: every role in one object.

    Build one with :func:`gateway.store.make_store`. A consumer that needs only some roles should ask
    for those protocols, so it depends on the few methods it calls.
    """
