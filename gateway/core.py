"""The check core: ``(credential, request facts) -> Decision``, independent of any web framework.

One way in: :meth:`Checker.check`. Known tokens are answered at once from the in-process cache;
known-bad hashes are remembered briefly; concurrent misses for one token share one store lookup, and
every check waiting for it is finished from that lookup's own callback. Revocations evict locally at
once and reach other processes through the store's revocation feed. Last use is written back by
:mod:`gateway.lastseen`, off the request path. Of the store, the core uses only
:class:`~gateway.store.SessionLookups` (look up, note use, revoke).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, TypeVar

import structlog

from gateway import tokens
from gateway.access import Policy
from gateway.cache import CacheEntry, SessionCache
from gateway.credentials import Credential, CredentialProblem, CredentialSource
from gateway.errors import StoreUnavailable
from gateway.facts import RequestFacts
from gateway.lastseen import LastSeenWriter
from gateway.metrics import Metrics
from gateway.models import ActiveSession, Revocation
from gateway.store.base import SessionLookups

log = structlog.get_logger("gateway.core")

C = TypeVar("C")
T = TypeVar("T")

_REFRESH_ASKED = object()
"""Key in a cache entry's memo: the refresher was told this cached copy's session is due."""

_RETRY_DATABASE_AFTER = 0.5
"""After a failed lookup, misses fail fast for this long instead of each waiting on the database."""


class Outcome(enum.Enum):
    """Every way a check can end; the value is what logs and metrics say."""

    ALLOW = "allow"
    MISSING = "missing"
    MALFORMED = "malformed"
    OVERSIZED = "oversized"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    REVOKED = "revoked"
    FORBIDDEN = "forbidden"
    BAD_ORIGINAL_REQUEST = "bad_original_request"
    UNAVAILABLE = "unavailable"


JwtVerifier = Callable[[str, str, float], Awaitable[ActiveSession | None]]
"""``(jwt, its hash, now) -> session`` for a verified, enrolled bearer JWT, else None."""

RefreshDue = Callable[[str, ActiveSession], None]
"""``(token hash, session)``: told that a checked browser session is due for a refresh with its upstream
(:meth:`gateway.refresh.SessionRefresher.due`); must return at once."""

# Decision, like Credential and RequestFacts, is a named tuple: one is built on every check, and a
# frozen dataclass costs several times more to build (see gateway.models).
class Decision(NamedTuple):
    """The answer to one check. ``active`` is set for ALLOW and FORBIDDEN (the caller's identity)."""

    outcome: Outcome
    active: ActiveSession | None = None
    memo: dict[Any, Any] | None = None
    """The cached session's scratch space (see :class:`CacheEntry`), for front-ends to keep renderings."""

    @property
    def allowed(self) -> bool:
        """True only for ALLOW."""
        return self.outcome is Outcome.ALLOW


DENY_BAD_ORIGINAL_REQUEST = Decision(Outcome.BAD_ORIGINAL_REQUEST)
_DENY_UNKNOWN = Decision(Outcome.UNKNOWN)
_DENY_PROBLEM = {
    CredentialProblem.MISSING: Decision(Outcome.MISSING),
    CredentialProblem.MALFORMED: Decision(Outcome.MALFORMED),
    CredentialProblem.OVERSIZED: Decision(Outcome.OVERSIZED),
}

Then = Callable[[Decision, C], T]
"""What a front-end does with a decision: ``then(decision, context) -> its answer``."""


class _Waiting(NamedTuple):
    """A check waiting for a lookup in flight: what :meth:`Checker.check` needs to finish it."""

    token_hash: str
    facts: RequestFacts | None
    then: Then[Any, Any]
    context: Any
    out: asyncio.Future[Any]


class Checker:
    """Decides checks and manages the session cache; one per process, built by ``create_app``."""

    def __init__(self, *, store: SessionLookups, cache: SessionCache, policy: Policy, metrics: Metrics,
                 last_seen_grain: float, clock: Callable[[], float]) -> None:
        self._store = store
        self.cache = cache
        self._policy = policy
        self._metrics = metrics
        self._counts = metrics.hot.cache
        self._grain = last_seen_grain
        self._clock = clock
        self._last_seen = LastSeenWriter(store, metrics)
        self._inflight: dict[str, asyncio.Future[ActiveSession | None]] = {}
        # Checks waiting for each lookup in flight, finished in the lookup's own callback: no callback
        # (and no turn of the event loop) per waiting check.
        self._waiting: dict[asyncio.Future[ActiveSession | None], list[_Waiting]] = {}
        self._database_down_until = 0.0
        self.jwt_verifier: JwtVerifier | None = None
        """Turns an upstream-issued bearer JWT into a session (set when ``check.jwt_upstreams`` is)."""
        self._refresh_every = 0.0
        self._refresh_due: RefreshDue | None = None

    def refresh_sessions(self, every: float, due: RefreshDue) -> None:
        """Have browser sessions refreshed with their upstream (``session.refresh``): a check of one whose
        sign-in or last renewal is ``every`` seconds old or more calls ``due`` (which must return at once;
        the check is decided as usual meanwhile)."""
        self._refresh_every = every
        self._refresh_due = due

    def check(self, credential: Credential | CredentialProblem, facts: RequestFacts | None,
              then: Then[C, T], context: C) -> T | asyncio.Future[T]:
        """Judge one request and hand the decision to the front-end: ``then(decision, context)``.

        Its result is returned at once when the decision needs no I/O (a bad credential, a cached or
        known-bad token); otherwise a future of it is returned, completed from the store lookup's own
        callback (no task and no coroutine per check). ``facts`` is the original request the policy
        judges (None when the caller described none); ``context`` is whatever ``then`` needs besides
        the decision.

        Deciding never raises for bad input or an unreachable database: those are outcomes
        (UNAVAILABLE means the token could not be checked, and the front-end must fail closed). An
        exception from ``then`` (a bug) propagates, or becomes the future's exception. Cancelling the
        future never cancels the lookup: other checks for the same token may share it.
        """
        if not isinstance(credential, Credential):
            return then(_DENY_PROBLEM[credential], context)
        token_hash = tokens.hash_token(credential.token)
        now = self._clock()
        entry = self.cache.get(token_hash, now)
        if entry is not None:
            self._counts["hit"] += 1
            return then(self._judge(token_hash, entry, entry.active, entry.last_seen, now, facts), context)
        if self.cache.is_known_bad(token_hash, now):
            self._counts["negative_hit"] += 1
            return then(_DENY_UNKNOWN, context)
        out: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        waiting = _Waiting(token_hash, facts, then, context, out)
        lookup = self._lookup(credential, token_hash)
        queue = self._waiting.get(lookup)
        if queue is not None:  # finished by _loaded, right after the cache is filled
            queue.append(waiting)
        else:  # a lookup that failed before it started
            lookup.add_done_callback(functools.partial(self._finish, waiting))
        return out

    async def decide(self, credential: Credential | CredentialProblem, facts: RequestFacts | None) -> Decision:
        """:meth:`check` for callers that await (the sign-in pages): the decision itself."""
        answer = self.check(credential, facts, _decision, None)
        return answer if isinstance(answer, Decision) else await answer

    def _lookup(self, credential: Credential, token_hash: str) -> asyncio.Future[ActiveSession | None]:
        """The lookup of a token the cache could not answer for: started now, or the one in flight.

        The future fails with StoreUnavailable when the store cannot answer. It is shared by every check
        for the token and is never cancelled.
        """
        lookup = self._inflight.get(token_hash)
        if lookup is not None:
            self._counts["coalesced"] += 1
            return lookup
        if time.monotonic() < self._database_down_until:
            # Fail fast while the database is known to be down, instead of queueing on timeouts.
            return _failed(StoreUnavailable("database unavailable (recent failure)"))
        self._counts["miss"] += 1
        now = self._clock()
        try:
            if credential.source is CredentialSource.JWT:
                lookup = asyncio.ensure_future(self.jwt_verifier(credential.token, token_hash, now)
                                               if self.jwt_verifier else _nobody())
            else:
                lookup = asyncio.ensure_future(self._store.lookup_session(token_hash))
        except StoreUnavailable as exc:
            lookup = _failed(exc)
        self._inflight[token_hash] = lookup
        self._waiting[lookup] = []
        # Registered first, so the cache is filled before any waiting check is finished.
        lookup.add_done_callback(functools.partial(self._loaded, token_hash, now, self.cache.generation))
        return lookup

    def _loaded(self, token_hash: str, now: float, generation: int,
                lookup: asyncio.Future[ActiveSession | None]) -> None:
        """Cache what a lookup found (or that it found nobody, or note that the database failed), then
        finish every check left waiting for it."""
        waiting = self._waiting.pop(lookup, ())
        if self._inflight.get(token_hash) is lookup:
            del self._inflight[token_hash]
        error = None if lookup.cancelled() else lookup.exception()
        if isinstance(error, StoreUnavailable):
            self._metrics.db_errors.labels("lookup_session").inc()
            self._database_down_until = time.monotonic() + _RETRY_DATABASE_AFTER
            log.error("session lookup failed: database unavailable", error=str(error))
        elif error is None and not lookup.cancelled():
            active = lookup.result()
            if active is None or not active.session.is_active(now):
                self.cache.put_bad(token_hash, now)
            else:
                self.cache.put(token_hash, active, now, generation)
        for check in waiting:
            self._finish(check, lookup)

    def _finish(self, waiting: _Waiting, lookup: asyncio.Future[ActiveSession | None]) -> None:
        """Complete a waiting check's future with ``then(decision, context)`` now that its lookup is
        done; a bug in ``then`` (or a lookup failure other than StoreUnavailable) becomes its exception,
        and the front-end fails closed."""
        out = waiting.out
        if out.done():  # cancelled by its caller
            return
        try:
            result = waiting.then(self._looked_up(waiting.token_hash, lookup, waiting.facts), waiting.context)
        except Exception as exc:
            out.set_exception(exc)
        else:
            out.set_result(result)

    def _looked_up(self, token_hash: str, lookup: asyncio.Future[ActiveSession | None],
                   facts: RequestFacts | None) -> Decision:
        """The decision once a token's lookup is done.

        A database that could not answer gives the stale cached session if one is kept, else
        UNAVAILABLE. Any other failure of the lookup is a bug and is raised.
        """
        now = self._clock()
        error = StoreUnavailable("lookup interrupted") if lookup.cancelled() else lookup.exception()
        if error is None:
            active = lookup.result()
            if active is None:
                return _DENY_UNKNOWN
            if active.session.revoked_at is not None:
                return Decision(Outcome.REVOKED)
            if not active.session.is_active(now):
                return Decision(Outcome.EXPIRED)
        elif isinstance(error, StoreUnavailable):
            stale = self.cache.get_stale(token_hash, now)
            if stale is None:
                return Decision(Outcome.UNAVAILABLE)
            self._counts["stale_hit"] += 1
            active = stale.active
        else:
            raise error
        entry = self.cache.peek(token_hash)
        last_seen = entry.last_seen if entry is not None else active.session.last_seen_at
        return self._judge(token_hash, entry, active, last_seen, now, facts)

    def _judge(self, token_hash: str, entry: CacheEntry | None, active: ActiveSession, last_seen: float,
               now: float, facts: RequestFacts | None) -> Decision:
        """The tail shared by hits and lookups: note the use, have a due refresh started, apply the policy.

        Both side effects are cheap on purpose (this runs on every check): noting the use is a comparison
        and, once per grain, a dict write; the refresh test is one comparison when ``session.refresh`` is
        on (nothing when off), and a due session is handed to the refresher once per cached copy.
        """
        if self._refresh_every:
            session = active.session
            # Once per cached copy (at most every cache.ttl): asking the refresher again, which would only
            # find its own memo saying "not now", cost ~0.5 us on every check of such a session.
            if ((session.renewed_at or session.created_at) + self._refresh_every <= now and session.kind == "browser"
                    and (entry is None or _REFRESH_ASKED not in entry.memo)):
                if entry is not None:
                    entry.memo[_REFRESH_ASKED] = True
                self._refresh_due(token_hash, active)  # type: ignore[misc]  # set with _refresh_every
        if now - last_seen >= self._grain:
            if entry is not None:
                entry.last_seen = now
                idle_timeout = active.session.idle_timeout
                if idle_timeout > 0:
                    entry.idle_deadline = now + idle_timeout
            self._last_seen.note(token_hash, now)
        outcome = Outcome.ALLOW if self._policy.allows(active, facts) else Outcome.FORBIDDEN
        return Decision(outcome, active, entry.memo if entry is not None else None)

    async def revoke_token(self, token: str, *, actor: str, reason: str) -> bool:
        """Revoke a session by its token: evict here at once, then in the database and everywhere else."""
        if not tokens.is_well_formed(token):
            return False
        token_hash = tokens.hash_token(token)
        self.cache.evict(token_hash)
        return await self._store.revoke_session(token_hash, actor=actor, reason=reason)

    def on_revocation(self, revocation: Revocation) -> None:
        """Apply a revocation broadcast by any process (this one included)."""
        self._metrics.revocations_received.inc()
        if revocation.token_hash is not None:
            self.cache.evict(revocation.token_hash)
        if revocation.user_id is not None:
            self.cache.evict_user(revocation.user_id)
        if revocation.everything:
            self.cache.flush()

    def on_feed_state(self, live: bool) -> None:
        """Track the revocation feed: while down, cache briefly; when it comes back, forget everything."""
        self._metrics.revocation_feed_up.set(1 if live else 0)
        if live:
            if self.cache.degraded:
                log.info("revocation feed live; cached sessions will be re-checked")
            self.cache.degraded = False
            # The feed just reached the database: lookups need not wait out a recent failure's pause.
            self._database_down_until = 0.0
        elif not self.cache.degraded:
            log.warning("revocation feed lost; caching sessions briefly until it returns")
            self.cache.degraded = True
        # Revocations may have been missed while the feed was down (or before it started).
        self.cache.mark_all_stale(self._clock())

    async def drain(self) -> None:
        """Write pending uses now and stop the batch writer (at shutdown, and in tests)."""
        await self._last_seen.drain()


def _decision(decision: Decision, context: None) -> Decision:
    """The ``then`` of :meth:`Checker.decide`: the decision itself."""
    return decision


def _failed(error: StoreUnavailable) -> asyncio.Future[ActiveSession | None]:
    """A lookup that has already failed."""
    lookup: asyncio.Future[ActiveSession | None] = asyncio.get_running_loop().create_future()
    lookup.set_exception(error)
    return lookup


async def _nobody() -> None:
    """The lookup of a bearer JWT when no verifier is configured: it admits nobody."""
    return None
