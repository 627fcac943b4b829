"""Signing out: revoke a browser's session (or every session of its user) everywhere, then send the browser
on to the upstream's end-session page, with the ID token the session kept as ``id_token_hint``.

Handlers decide whether a sign-out request may be honoured (same origin, the sign-out token); this module
does it. Revocations evict this replica's cache at once and reach the others through the revocation log.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from gateway import tokens
from gateway.core import Checker
from gateway.errors import StoreUnavailable, Unauthenticated
from gateway.login import LoginService
from gateway.models import Revocation, User
from gateway.sealing import SealingError
from gateway.store.base import Store
from upstreams.base import ProviderError

log = structlog.get_logger("gateway.login")


class SignOut:
    """The sign-out flow, one per application; ``login`` gives the upstreams, the return-target policy and
    the sealer the ID tokens were kept with."""

    def __init__(self, login: LoginService, *, store: Store, checker: Checker, clock: Callable[[], float]) -> None:
        self._login = login
        self._store = store
        self._checker = checker
        self._clock = clock
        self._sealer = login.sealer

    async def logout(self, token: str | None, return_to: str, client: str) -> str:
        """Revoke the session everywhere and return where to send the browser (maybe the upstream's logout,
        with the ID token the session kept as ``id_token_hint``).

        ``return_to`` must already be validated.
        """
        location = self._login.absolute(return_to)
        if not token or not tokens.is_well_formed(token):
            return return_to
        active = await self._store.lookup_session(tokens.hash_token(token))
        await self._checker.revoke_token(token, actor="user", reason="logout")
        if active is None:
            return return_to
        user = active.user
        await self._store.record_audit("logout", user_id=user.id, user_key=f"{user.upstream}:{user.subject}",
                                       actor="user", detail={"client_addr": client})
        log.info("logout", user_id=user.id, client=client)
        provider = self._login.providers.get(user.upstream)
        id_token = await self._take_id_token(active.session.token_hash, user)
        if provider is not None:
            try:
                upstream_logout = await provider.logout_url(return_to=location, id_token=id_token)
            except ProviderError as exc:
                log.warning("upstream logout URL unavailable", upstream=user.upstream, reason=exc.message)
                upstream_logout = None
            if upstream_logout:
                return upstream_logout
        return return_to

    async def logout_everywhere(self, token: str | None, return_to: str, client: str) -> str:
        """Revoke every session of the token's user, browser sessions and API tokens on every device, then
        sign this one out as :meth:`logout` does (audit, upstream logout); return where to send the browser.

        The sessions are revoked in one transaction (audited ``revoke``, reason ``signed_out_everywhere``),
        evicted here at once and on every other replica through the revocation log within a second.
        Raises Unauthenticated, revoking nothing, unless ``token`` belongs to a session active now: an old
        cookie (say, from a stolen laptop, since revoked) must not be able to end its owner's sessions.
        """
        active = (await self._store.lookup_session(tokens.hash_token(token))
                  if token and tokens.is_well_formed(token) else None)
        if active is None or not active.session.is_active(self._clock()):
            raise Unauthenticated("This browser is no longer signed in, so it cannot sign out your other "
                                  "sessions. Sign in again, then choose Sign out everywhere.",
                                  link=("/login", "Sign in"))
        user = active.user
        revoked = await self._store.revoke_user_sessions(user.id, actor="user", reason="signed_out_everywhere")
        self._checker.on_revocation(Revocation(user_id=user.id))  # here at once; the log tells the others
        log.info("logout everywhere", user_id=user.id, client=client, revoked=revoked)
        return await self.logout(token, return_to, client)


    async def _take_id_token(self, token_hash: str, user: User) -> str:
        """The ID token the session kept for sign-out (taken: it serves once), or "" when there is none, no
        sealing key, or it cannot be read or opened (logged without it: sign-out goes on without a hint)."""
        if self._sealer is None:
            return ""
        try:
            sealed = await self._store.take_session_secret(token_hash, "id_token")
            return "" if sealed is None else self._sealer.open(sealed, token_hash=token_hash, purpose="id_token")
        except (SealingError, StoreUnavailable) as exc:
            reason = str(exc) if isinstance(exc, SealingError) else exc.message
            log.warning("id_token_hint not sent: the kept ID token could not be read or opened",
                        upstream=user.upstream, user_id=user.id, reason=reason)
            return ""
