"""Self-service API tokens: people signed in with a browser mint, list and revoke their own. No aiohttp here.

What GitHub's personal access tokens and oauth2-proxy/Authelia users expect: a token has a name and an
expiry chosen from a bounded list (never longer than ``session.api_token_max_lifetime``), it is shown once
and stored only as its hash, it can be revoked by the id the list shows (the short hash ``gateway
sessions list`` shows), and one person holds at most ``session.api_tokens_per_user`` active ones. Who may
do what is the handler's business (:mod:`gateway.handlers.tokens`: only a browser session mints or
revokes, so a leaked API token cannot multiply); this module judges the input and does the work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from gateway import tokens
from gateway.admin import audit_token_mint, session_state
from gateway.errors import BadRequest, GatewayError, NotFound
from gateway.metrics import Metrics
from gateway.models import User
from gateway.settings import SessionSettings
from gateway.store.apitokens import REVOKE_REASON, has_control_character, is_token_id
from gateway.store.base import Audit, SessionLookups
from gateway.store.tokensrole import API_TOKEN_NAME_MAX, ApiToken, ApiTokens, TooManyApiTokens

log = structlog.get_logger("gateway.apitokens")

ACTOR = "user"
"""The audit ``actor`` of mints and revocations people make themselves."""

DAY = 86400.0
LIFETIME_CHOICES = (7 * DAY, 30 * DAY, 90 * DAY, 365 * DAY)
"""The lifetimes the page offers (those within the configured maximum, which is offered too)."""

MIN_LIFETIME = 3600.0
"""Shortest lifetime a token may be minted with, in seconds."""

LISTED_AFTER_END = 30 * DAY
"""How long a token stays listed after it expired or was revoked."""

class InvalidTokenRequest(BadRequest):
    """The API token request is not valid."""

    code = "invalid_request"


class TokenLimitReached(GatewayError):
    """You already hold as many API tokens as allowed. Revoke one you no longer use first."""

    status = 409
    code = "too_many_tokens"
    title = "Too many API tokens"


class TokenStore(ApiTokens, Audit, SessionLookups, Protocol):
    """The store roles self-service needs: API tokens, the audit log, and one revocation (a failed audit)."""


@dataclass(frozen=True, slots=True)
class MintedApiToken:
    """A token just minted: ``token`` is its only copy (show it once, never log it)."""

    token: str
    api_token: ApiToken


def api_token_problems(session: SessionSettings) -> list[str]:
    """Problems with the ``session.api_token*`` settings self-service reads."""
    problems: list[str] = []
    if not session.api_token_max_lifetime >= MIN_LIFETIME:
        problems.append("session.api_token_max_lifetime: must be at least 1h")
    if session.api_tokens_per_user < 1:
        problems.append("session.api_tokens_per_user: must be at least 1")
    return problems


def token_state(api_token: ApiToken, now: float) -> str:
    """``active``, ``expired`` or ``revoked``."""
    return session_state(api_token.session, now)


def last_used(api_token: ApiToken) -> float | None:
    """When the token was last used (to the grain last use is recorded at), or None if never."""
    session = api_token.session
    return session.last_seen_at if session.last_seen_at > session.created_at else None


class ApiTokenService:
    """Mint, list and revoke a user's own API tokens under the ``[session]`` limits."""

    def __init__(self, store: TokenStore, settings: SessionSettings, metrics: Metrics,
                 clock: Callable[[], float], evict: Callable[[str], None]) -> None:
        """``evict`` forgets a token hash in this replica's session cache (others hear of it through the
        revocation feed)."""
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._evict = evict

    @property
    def max_lifetime(self) -> float:
        """Longest lifetime a token may be minted with, in seconds."""
        return float(self._settings.api_token_max_lifetime)

    @property
    def default_lifetime(self) -> float:
        """The lifetime used when none is asked for: ``session.api_token_lifetime``, within the maximum."""
        return min(float(self._settings.api_token_lifetime), self.max_lifetime)

    @property
    def per_user(self) -> int:
        """Most active API tokens one person may hold."""
        return self._settings.api_tokens_per_user

    def lifetime_choices(self) -> list[float]:
        """The lifetimes to offer, shortest first: :data:`LIFETIME_CHOICES` within the maximum, the default
        and the maximum."""
        return sorted({c for c in LIFETIME_CHOICES if c <= self.max_lifetime} | {self.default_lifetime,
                                                                                 self.max_lifetime})

    def clean_name(self, raw: object) -> str:
        """The name as stored (surrounding space removed); InvalidTokenRequest when it cannot be one."""
        if not isinstance(raw, str):
            raise InvalidTokenRequest("Give the token a name (text).")
        name = raw.strip()
        if not name or len(name) > API_TOKEN_NAME_MAX:
            raise InvalidTokenRequest(f"A token name is 1 to {API_TOKEN_NAME_MAX} characters.")
        if has_control_character(name):
            raise InvalidTokenRequest("A token name cannot hold control characters or line breaks.")
        return name

    def clean_lifetime(self, raw: object) -> float:
        """Seconds the token will live (None: the default); InvalidTokenRequest unless a whole number of
        seconds between :data:`MIN_LIFETIME` and the maximum."""
        if raw is None:
            return self.default_lifetime
        if isinstance(raw, str) and raw.strip().isdigit() and len(raw.strip()) <= 12:
            raw = int(raw.strip())
        if isinstance(raw, float) and raw.is_integer():  # JSON's 86400.0; never inf or nan
            raw = int(raw)
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise InvalidTokenRequest("expires_in is a whole number of seconds.")
        if not MIN_LIFETIME <= raw <= self.max_lifetime:
            raise InvalidTokenRequest(f"expires_in must be between {int(MIN_LIFETIME)} and "
                                      f"{int(self.max_lifetime)} seconds.")
        return float(raw)

    async def mint(self, user: User, name: str, lifetime: float, *, client: str) -> MintedApiToken:
        """Mint a token for ``user`` named ``name`` (from :meth:`clean_name`) living ``lifetime`` seconds (from
        :meth:`clean_lifetime`); audited ``token_mint``. TokenLimitReached at the limit."""
        now = self._clock()
        token = tokens.mint_token()
        try:
            minted = await self._store.create_api_token(token_hash=tokens.hash_token(token), user_id=user.id,
                                                        name=name, now=now, expires_at=now + lifetime,
                                                        max_active=self.per_user)
        except TooManyApiTokens:
            self._metrics.api_tokens.labels("mint", "limit").inc()
            log.info("api token refused: limit reached", user_id=user.id, limit=self.per_user, client=client)
            raise TokenLimitReached() from None
        await audit_token_mint(self._store, user, minted.session, actor=ACTOR,
                               extra={"name": name, "client_addr": client})
        self._metrics.api_tokens.labels("mint", "ok").inc()
        log.info("api token minted", user_id=user.id, token_id=minted.token_id,
                 expires_at=int(minted.session.expires_at), client=client)
        return MintedApiToken(token, minted)

    async def list(self, user: User) -> list[ApiToken]:
        """The user's API tokens, newest first: active ones, and those that ended in the last 30 days."""
        return await self._store.list_api_tokens(user.id, since=self._clock() - LISTED_AFTER_END)

    async def revoke(self, user: User, token_id: str, *, client: str) -> ApiToken:
        """Revoke the user's token named ``token_id`` everywhere; NotFound when the user holds no such
        unrevoked token (another user's id included)."""
        token_id = token_id.strip().lower()
        revoked = None
        if is_token_id(token_id):
            revoked = await self._store.revoke_api_token(user.id, token_id, actor=ACTOR, reason=REVOKE_REASON,
                                                         now=self._clock())
        if revoked is None:
            self._metrics.api_tokens.labels("revoke", "not_found").inc()
            raise NotFound("You hold no API token with this id (it may be revoked already).")
        self._evict(revoked.session.token_hash)
        self._metrics.api_tokens.labels("revoke", "ok").inc()
        log.info("api token revoked", user_id=user.id, token_id=revoked.token_id, client=client)
        return revoked
