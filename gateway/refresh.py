"""Sliding renewal: a browser session in use is renewed for as long as its upstream still vouches for the user.

With ``session.refresh``, a session that signed in through an upstream that issued a refresh token keeps
that token, sealed (:mod:`gateway.sealing`). Once ``session.refresh_interval`` has passed since the sign-in
or the last renewal, the next check of the session calls :meth:`SessionRefresher.due`; the check itself is
answered as usual (the session is still valid) and the refresh runs in the background:

1. one process across all replicas claims the refresh token (a lease in the database), so a provider
   that rotates refresh tokens never sees one replayed, and only one refresh happens however many
   requests and replicas see the session come due;
2. the upstream redeems it (:class:`upstreams.base.Refreshing`) and says who the user is now;
3. the user row takes the new email, names, groups and roles, under the enrolment policy and blocks as at
   sign-in;
4. the session is renewed (``expires_at`` = now + ``session.lifetime``, the next refresh token stored,
   the claim held until the next refresh is due) and every replica re-reads it.

When the upstream refuses (the grant was revoked or expired, the user was disabled or lost a required
group or claim), or the identity no longer passes the enrolment policy, the session is revoked
everywhere. When the upstream or the database cannot be asked, nothing changes and the refresh is tried
again a minute later: the session lives on to its current expiry at most, never past it without the
upstream's word (fail closed). Tokens are never logged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import cachetools
import structlog

from gateway.errors import StoreUnavailable
from gateway.login import LoginService
from gateway.metrics import Metrics
from gateway.models import ActiveSession, User
from gateway.sealing import SealingError
from gateway.store.base import Audit, SessionLookups
from gateway.store.sessionsecrets import SessionSecretPurpose, SessionSecrets
from upstreams.base import FailureReason, Identity, ProviderError, Refreshed

log = structlog.get_logger("gateway.refresh")

ACTOR = "refresh"
"""The audit ``actor`` of renewals (``session_refresh``) and of sessions a refresh ends (``revoke``)."""

RETRY_AFTER = 60.0
"""Seconds before this process tries a session's refresh again (after any outcome but a renewal, after
which it is due again a ``session.refresh_interval`` later, whatever a copy cached before it says)."""

UNREFRESHABLE_FOR = 3600.0
"""Seconds this process remembers that a session keeps no refresh token (it never will: only a sign-in
keeps one), so that checks of it do not ask the database every :data:`RETRY_AFTER`."""

LEASE = 60.0
"""Seconds a claim on a refresh token holds: longer than an upstream call may take (10 s unless an
upstream's ``timeout`` says otherwise) plus the store's; a claimant that died frees it after this."""

MEMO_ENTRIES = 100_000
"""Most sessions each memo holds (the oldest are forgotten first: they are merely tried again)."""


class RefreshStore(SessionSecrets, SessionLookups, Audit, Protocol):
    """The store roles a refresh needs: the sealed refresh token and its renewal, one revocation, the audit log."""


class SessionRefresher:
    """Refreshes sessions that come due (see the module docstring); one per process, built by ``create_app``."""

    def __init__(self, *, store: RefreshStore, login: LoginService, lifetime: float, interval: float,
                 metrics: Metrics, clock: Callable[[], float]) -> None:
        """``lifetime`` is how long a renewed session lives from its renewal, ``interval`` how long after it
        the next refresh comes due (``session.lifetime`` and ``session.refresh_interval``)."""
        self._store = store
        self._login = login
        self._lifetime = lifetime
        self._interval = interval
        self._counts = metrics.session_refreshes
        self._clock = clock
        self._recent: cachetools.TTLCache[str, bool] = cachetools.TTLCache(MEMO_ENTRIES, RETRY_AFTER, timer=clock)
        self._unrefreshable: cachetools.TTLCache[str, bool] = cachetools.TTLCache(MEMO_ENTRIES, UNREFRESHABLE_FOR,
                                                                                timer=clock)
        # Renewed here: not due again for an interval, whatever a cached copy read before the renewal says.
        self._renewed: cachetools.TTLCache[str, bool] = cachetools.TTLCache(MEMO_ENTRIES, interval, timer=clock)
        self._tasks: set[asyncio.Task[None]] = set()

    def due(self, token_hash: str, active: ActiveSession) -> None:
        """Note that a check found this session due for a refresh; start one in the background unless
        this process tried it lately. Cheap and never raises: it runs on the check path."""
        if token_hash in self._recent or token_hash in self._renewed or token_hash in self._unrefreshable:
            return
        self._recent[token_hash] = True
        task = asyncio.get_running_loop().create_task(self._run(token_hash, active))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the refreshes in progress (in tests)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def close(self, grace: float) -> None:
        """At shutdown: let the refreshes in progress finish for up to ``grace`` seconds, then cancel the
        rest (a cancelled refresh changes nothing; its claim lapses after :data:`LEASE`)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)

    async def _run(self, token_hash: str, active: ActiveSession) -> None:
        try:
            outcome = await self._refresh(token_hash, active)
        except Exception:
            log.exception("session refresh failed", user_id=active.user.id)
            outcome = "error"
        self._counts.labels(outcome).inc()

    async def _refresh(self, token_hash: str, active: ActiveSession) -> str:
        """Refresh one session; the outcome counted (see ``gateway_session_refreshes_total``)."""
        user = active.user
        refresh = getattr(self._login.providers.get(user.upstream), "refresh", None)
        sealer = self._login.sealer
        if sealer is None or not callable(refresh):
            self._unrefreshable[token_hash] = True
            return "unsupported"
        try:
            sealed = await self._store.claim_session_secret(token_hash, "refresh_token", now=self._clock(),
                                                            lease=LEASE)
            if sealed is None:
                if await self._store.session_secret(token_hash, "refresh_token") is None:
                    self._unrefreshable[token_hash] = True
                    return "unsupported"
                return "elsewhere"  # claimed by another process, or renewed since this one cached it
        except StoreUnavailable as exc:
            log.warning("session refresh postponed: database unavailable", user_id=user.id, error=str(exc))
            return "unavailable"
        try:
            refresh_token = sealer.open(sealed, token_hash=token_hash, purpose="refresh_token")
        except SealingError as exc:
            log.warning("session refresh impossible: the refresh token does not open", user_id=user.id,
                        error=str(exc))
            self._unrefreshable[token_hash] = True
            return "unreadable"
        try:
            refreshed: Refreshed = await refresh(refresh_token, subject=user.subject)
        except ProviderError as exc:
            if exc.reason is FailureReason.UNAVAILABLE:
                log.warning("session refresh postponed: upstream unavailable", upstream=user.upstream,
                            user_id=user.id, reason=exc.message)
                return "provider_unavailable"
            return await self._end(token_hash, active, exc.message)
        if refreshed.identity is not None:
            refusal = await self._login.vouched_again(user, refreshed.identity)
            if refusal is not None:
                return await self._end(token_hash, active, refusal)
        now = self._clock()
        secrets: dict[SessionSecretPurpose, str] = {}
        if refreshed.refresh_token:
            secrets["refresh_token"] = sealer.seal(refreshed.refresh_token, token_hash=token_hash,
                                                   purpose="refresh_token")
        if refreshed.identity is not None and refreshed.identity.id_token:
            secrets["id_token"] = sealer.seal(refreshed.identity.id_token, token_hash=token_hash, purpose="id_token")
        renewed = await self._store.renew_session(token_hash, now=now, expires_at=now + self._lifetime,
                                                  secrets=secrets, next_claim_at=now + self._interval)
        if not renewed:
            return "gone"
        self._recent.pop(token_hash, None)  # due again in an interval, not a retry pause
        self._renewed[token_hash] = True
        await self._audit_renewal(token_hash, user, refreshed.identity)
        log.info("session renewed by its upstream", upstream=user.upstream, user_id=user.id,
                 session=token_hash[:12], groups_read=refreshed.identity is not None)
        return "renewed"

    async def _audit_renewal(self, token_hash: str, user: User, identity: Identity | None) -> None:
        """Audit ``session_refresh`` (with the new groups when they changed); a database that fails here
        costs the row, not the renewal."""
        detail = {"upstream": user.upstream, "session": token_hash[:12],
                  "groups_read": str(identity is not None).lower()}
        if identity is not None and tuple(identity.groups) != tuple(user.groups):
            detail["groups"] = ",".join(identity.groups)
        try:
            await self._store.record_audit("session_refresh", user_id=user.id,
                                           user_key=f"{user.upstream}:{user.subject}", actor=ACTOR, detail=detail)
        except StoreUnavailable as exc:
            log.warning("session renewal not audited: database unavailable", user_id=user.id, error=str(exc))

    async def _end(self, token_hash: str, active: ActiveSession, reason: str) -> str:
        """Revoke a session its upstream no longer vouches for (audited by the store, broadcast everywhere)."""
        user = active.user
        try:
            await self._store.revoke_session(token_hash, actor=ACTOR, reason="upstream refused refresh")
        except StoreUnavailable as exc:  # the next check tries again (the upstream will refuse again)
            log.warning("session refresh refused, but the session could not be ended yet: database unavailable",
                        upstream=user.upstream, user_id=user.id, error=str(exc))
            return "unavailable"
        log.info("session ended: upstream refused refresh", upstream=user.upstream, user_id=user.id,
                 session=token_hash[:12], reason=reason)
        self._unrefreshable[token_hash] = True
        return "refused"
