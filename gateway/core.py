"""The check core: ``(credential, request facts) -> Decision``, independent of any web framework.

Known tokens are answered from the in-process cache; concurrent misses for one token share one
database query; known-bad hashes are remembered briefly. Revocations evict locally at once and reach
other processes through the store's revocation feed. Last use is written back at a coarse grain, off
the request path, batched into one statement per half second.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from gateway.metrics import Metrics
from gateway.models import ActiveSession, Revocation
from gateway.store.base import Store

log = structlog.get_logger("gateway.core")

T = TypeVar("T")

_MAX_PENDING_TOUCHES = 10_000
_TOUCH_CHUNK = 500
"""Most uses one write-back statement carries: building a statement holds the event loop (~3 us a use)."""
_TOUCH_BATCH_DELAY = 0.5
"""Uses are written back in one batch per this many seconds (the grain is a minute: nothing is lost)."""
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

_PROBLEM_OUTCOMES = {
    CredentialProblem.MISSING: Outcome.MISSING,
    CredentialProblem.MALFORMED: Outcome.MALFORMED,
    CredentialProblem.OVERSIZED: Outcome.OVERSIZED,
}


# Decision and Miss, like Credential and RequestFacts, are named tuples: one of each is built on every
# check, and a frozen dataclass costs several times more to build (see gateway.models).
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


class Miss(NamedTuple):
    """A credential the cache could not answer for: :meth:`Checker.resolve` looks it up."""

    credential: Credential
    token_hash: str


DENY_MISSING = Decision(Outcome.MISSING)
DENY_BAD_ORIGINAL_REQUEST = Decision(Outcome.BAD_ORIGINAL_REQUEST)


class Checker:
    """Decides checks and manages the session cache; one per process, built by ``create_app``."""

    def __init__(self, *, store: Store, cache: SessionCache, policy: Policy, metrics: Metrics,
                 last_seen_grain: float, clock: Callable[[], float]) -> None:
        self._store = store
        self.cache = cache
        self._policy = policy
        self._metrics = metrics
        self._counts = metrics.hot.cache
        self._grain = last_seen_grain
        self._clock = clock
        self._inflight: dict[str, asyncio.Future[ActiveSession | None]] = {}
        # Checks waiting for each lookup in flight, finished in the lookup's own callback: no callback
        # (and no turn of the event loop) per waiting check.
        self._waiting: dict[asyncio.Future[ActiveSession | None], list[_Waiting[Any]]] = {}
        self._pending_touches: dict[str, tuple[float, float]] = {}  # hash -> (first, last) unwritten use
        self._flusher: asyncio.Task[None] | None = None
        self._database_down_until = 0.0
        self.jwt_verifier: JwtVerifier | None = None
        """Turns an upstream-issued bearer JWT into a session (set when ``check.jwt_upstreams`` is)."""

    def decide_now(self, credential: Credential | CredentialProblem,
                   facts: RequestFacts | None) -> Decision | Miss:
        """The decision when it needs no I/O (a bad credential, a cached or known-bad token), else a
        :class:`Miss` to pass to :meth:`resolve`.

        Front-ends that can answer without scheduling anything call this first; together the two give
        exactly what :meth:`decide` gives.
        """
        if not isinstance(credential, Credential):
            return Decision(_PROBLEM_OUTCOMES[credential])
        token_hash = tokens.hash_token(credential.token)
        now = self._clock()
        entry = self.cache.get(token_hash, now)
        if entry is None:
            if self.cache.is_known_bad(token_hash, now):
                self._counts["negative_hit"] += 1
                return Decision(Outcome.UNKNOWN)
            return Miss(credential, token_hash)
        self._counts["hit"] += 1
        return self._conclude(token_hash, entry, entry.active, entry.last_seen, now, facts)

    async def decide(self, credential: Credential | CredentialProblem, facts: RequestFacts | None) -> Decision:
        """Judge one request: ALLOW with the identity, or the reason it is refused.

        Never raises for bad input or an unreachable database: those are outcomes (UNAVAILABLE means the
        token could not be checked, and the caller must fail closed).
        """
        decision = self.decide_now(credential, facts)
        if isinstance(decision, Miss):
            return await self.resolve(decision, facts)
        return decision

    async def resolve(self, miss: Miss, facts: RequestFacts | None) -> Decision:
        """Finish a decision :meth:`decide_now` could not make without the store (or a JWT verifier).

        Cancelling the caller never cancels the lookup: other requests for the same token may share it.
        """
        lookup = self.begin(miss)
        if not lookup.done():
            await asyncio.wait((lookup,))
        return self.conclude(miss, lookup, facts)

    def resolve_then(self, miss: Miss, facts: RequestFacts | None,
                     finish: Callable[[Decision], T]) -> asyncio.Future[T]:
        """A future of ``finish(decision)`` for ``miss``, completed from the lookup's own callback.

        Costs no task and no coroutine: front-ends that answer a miss by writing bytes use this. An
        exception from ``finish`` (a bug) becomes the future's exception.
        """
        out: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        lookup = self.begin(miss)
        waiting = self._waiting.get(lookup)
        if waiting is not None:  # finished by _loaded, right after the cache is filled
            waiting.append((miss, facts, finish, out))
        else:  # a lookup that failed before it started
            lookup.add_done_callback(functools.partial(_finish_later, self, miss, facts, finish, out))
        return out

    def begin(self, miss: Miss) -> asyncio.Future[ActiveSession | None]:
        """The lookup of ``miss``'s token: started now, or the one already in flight for it.

        The future fails with StoreUnavailable when the database cannot answer; pass it, once done, to
        :meth:`conclude`. Never cancel it: it is shared by every request for the token.
        """
        token_hash = miss.token_hash
        lookup = self._inflight.get(token_hash)
        if lookup is not None:
            self._counts["coalesced"] += 1
            return lookup
        if time.monotonic() < self._database_down_until:
            # Fail fast while the database is known to be down, instead of queueing on timeouts.
            return _failed(StoreUnavailable("database unavailable (recent failure)"))
        self._counts["miss"] += 1
        credential = miss.credential
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
        # Registered first, so the cache is filled before any waiter's callback runs.
        lookup.add_done_callback(functools.partial(self._loaded, token_hash, now, self.cache.generation))
        return lookup

    def _loaded(self, token_hash: str, now: float, generation: int,
                lookup: asyncio.Future[ActiveSession | None]) -> None:
        """Cache what a lookup found, then finish the checks :meth:`resolve_then` left waiting for it."""
        waiting = self._waiting.pop(lookup, ())
        self._cache_result(token_hash, now, generation, lookup)
        for miss, facts, finish, out in waiting:
            _finish_later(self, miss, facts, finish, out, lookup)

    def _cache_result(self, token_hash: str, now: float, generation: int,
                      lookup: asyncio.Future[ActiveSession | None]) -> None:
        """Cache what a lookup found (or that it found nobody); note a database failure."""
        if self._inflight.get(token_hash) is lookup:
            del self._inflight[token_hash]
        if lookup.cancelled():
            return
        error = lookup.exception()
        if error is not None:
            if isinstance(error, StoreUnavailable):
                self._metrics.db_errors.labels("lookup_session").inc()
                self._database_down_until = time.monotonic() + _RETRY_DATABASE_AFTER
                log.error("session lookup failed: database unavailable", error=str(error))
            return
        active = lookup.result()
        if active is None or not active.session.is_active(now):
            self.cache.put_bad(token_hash, now)
        else:
            self.cache.put(token_hash, active, now, generation)

    def conclude(self, miss: Miss, lookup: asyncio.Future[ActiveSession | None],
                 facts: RequestFacts | None) -> Decision:
        """The decision for ``miss`` once its lookup (from :meth:`begin`) is done.

        A database that could not answer gives the stale cached session if one is kept, else
        UNAVAILABLE. Any other failure of the lookup is a bug and is raised.
        """
        token_hash = miss.token_hash
        now = self._clock()
        error = StoreUnavailable("lookup interrupted") if lookup.cancelled() else lookup.exception()
        if error is None:
            active = lookup.result()
            if active is None:
                return Decision(Outcome.UNKNOWN)
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
        return self._conclude(token_hash, entry, active, last_seen, now, facts)

    def _conclude(self, token_hash: str, entry: CacheEntry | None, active: ActiveSession, last_seen: float,
                  now: float, facts: RequestFacts | None) -> Decision:
        """The tail shared by hits and misses: note the use, apply the policy."""
        if now - last_seen >= self._grain:
            self._touch(token_hash, entry, now, active.session.idle_timeout)
        outcome = Outcome.ALLOW if self._policy.allows(active, facts) else Outcome.FORBIDDEN
        return Decision(outcome, active, entry.memo if entry is not None else None)

    def _touch(self, token_hash: str, entry: CacheEntry | None, now: float, idle_timeout: float) -> None:
        """Note a use locally at once; write it to the database in the background, best effort."""
        if entry is not None:
            entry.last_seen = now
            if idle_timeout > 0:
                entry.idle_deadline = now + idle_timeout
        pending = self._pending_touches
        if len(pending) >= _MAX_PENDING_TOUCHES and token_hash not in pending:
            return  # best effort: under a flood, later uses are recorded by later touches
        earlier = pending.get(token_hash)
        pending[token_hash] = (earlier[0], max(now, earlier[1])) if earlier else (now, now)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_touches_soon())

    async def _flush_touches_soon(self) -> None:
        """Write pending uses in batches, one round trip per :data:`_TOUCH_BATCH_DELAY`; never raises (a
        background task whose exception nobody would retrieve)."""
        while self._pending_touches:
            await asyncio.sleep(_TOUCH_BATCH_DELAY)
            try:
                await self.flush_touches()
            except Exception:
                log.exception("could not record session use")

    async def flush_touches(self) -> None:
        """Write every pending use now, :data:`_TOUCH_CHUNK` per statement, so checks are served between
        statements; failures are logged and what is left is dropped."""
        batch, self._pending_touches = self._pending_touches, {}
        uses = list(batch.items())
        for start in range(0, len(uses), _TOUCH_CHUNK):
            try:
                await self._store.touch_sessions(dict(uses[start:start + _TOUCH_CHUNK]))
            except StoreUnavailable as exc:
                self._metrics.db_errors.labels("touch_sessions").inc()
                log.warning("could not record session use", sessions=len(uses) - start, error=str(exc))
                return

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
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush_touches()


def _failed(error: StoreUnavailable) -> asyncio.Future[ActiveSession | None]:
    """A lookup that has already failed."""
    lookup: asyncio.Future[ActiveSession | None] = asyncio.get_running_loop().create_future()
    lookup.set_exception(error)
    return lookup


async def _nobody() -> None:
    """The lookup of a bearer JWT when no verifier is configured: it admits nobody."""
    return None


_Waiting = tuple[Miss, RequestFacts | None, Callable[[Decision], T], asyncio.Future[T]]
"""A check :meth:`Checker.resolve_then` left waiting for a lookup: its miss, facts, finish and future."""


def _finish_later(checker: Checker, miss: Miss, facts: RequestFacts | None, finish: Callable[[Decision], T],
                  out: asyncio.Future[T], lookup: asyncio.Future[ActiveSession | None]) -> None:
    """Complete ``out`` with ``finish(decision)`` now that ``lookup`` is done; a bug in ``finish`` (or a
    lookup failure other than StoreUnavailable) becomes its exception, and the caller fails closed."""
    if out.done():  # cancelled by its caller
        return
    try:
        result = finish(checker.conclude(miss, lookup, facts))
    except Exception as exc:
        out.set_exception(exc)
    else:
        out.set_result(result)
