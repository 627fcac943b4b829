"""The OAuth 2.0 Device Authorization Grant (RFC 8628) for CLIs: codes, approval and the token. No aiohttp here.

What GitHub CLI, oauth2-proxy and Authelia users expect: a CLI without a browser asks for a device code
(:meth:`DeviceGrantService.issue`), shows its person a short user code and where to enter it, and polls
(:meth:`DeviceGrantService.poll`) while the person, signed in with a browser, looks the code up
(:meth:`DeviceGrantService.look_up`) and approves or denies it (:meth:`DeviceGrantService.decide`). Once
approved, one poll (exactly one, whatever the replicas) is answered with an API token like those of
``/tokens``, named after the client and living ``session.api_token_lifetime``.

- Device codes are 32 random bytes (URL-safe base64); user codes 8 characters of RFC 8628 §6.1's
  alphabet ``BCDFGHJKLMNPQRSTVWXZ``, shown ``XXXX-XXXX`` and read ignoring case, dashes and spaces. Only
  SHA-256 hashes of either are stored; neither, nor a token, is ever logged.
- Wrong user codes are limited per browser session and per address (:data:`WRONG_CODES_PER_MINUTE`,
  in-process, as the sign-in limit): the code space (about 2.6e10) cannot be searched.
- Who may approve is the handler's business (:mod:`gateway.handlers.device`: a browser session only,
  from our own pages); this module judges the input and does the work.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn, Protocol
from urllib.parse import quote

import structlog

from gateway.apitokens import ApiTokenService, TokenLimitReached
from gateway.errors import BadRequest, OAuthError, TooManyRequests
from gateway.metrics import Metrics
from gateway.models import User
from gateway.ratelimit import RateLimiter
from gateway.settings import SessionSettings
from gateway.store.base import Users
from gateway.store.devicerole import DeviceGrant, DeviceGrants, PollOutcome, UserCodeTaken, is_client_id

log = structlog.get_logger("gateway.device")

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"
"""The ``grant_type`` of a device token request (RFC 8628 §3.4)."""

USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
"""RFC 8628 §6.1: consonants only (no words), no look-alikes (no vowels, no digits)."""

USER_CODE_LENGTH = 8

SLOW_DOWN_STEP = 5.0
"""Seconds the poll interval grows by each time a CLI polls too soon (RFC 8628 §3.5)."""

WRONG_CODES_PER_MINUTE = 5
"""Wrong user codes one browser session, or one address, may enter per minute (with bursts as large)."""

ISSUES_PER_MINUTE = 30
"""Device codes one address may ask for per minute (each is a row until it expires)."""

KEPT_AFTER_EXPIRY = 3600.0
"""How long an expired grant is kept (a late poll is told ``expired_token``, not ``invalid_grant``)."""

MIN_LIFETIME, MAX_LIFETIME = 60.0, 3600.0
MIN_INTERVAL, MAX_INTERVAL = 1.0, 60.0

_DEVICE_CODE_RE = re.compile(r"[A-Za-z0-9_-]{43}")
_USER_CODE_RE = re.compile(f"[{USER_CODE_ALPHABET}]{{{USER_CODE_LENGTH}}}")
_USER_CODE_SEPARATORS = re.compile(r"[\s-]+")


class InvalidDeviceRequest(OAuthError):
    """The request is missing a parameter, or has one that is malformed."""

    code = "invalid_request"


class InvalidClient(OAuthError):
    """The client_id is not valid: 1 to 64 printable ASCII characters."""

    code = "invalid_client"


class UnsupportedGrantType(OAuthError):
    """Only the device code grant (urn:ietf:params:oauth:grant-type:device_code) is served here."""

    code = "unsupported_grant_type"


class InvalidGrant(OAuthError):
    """The device code is unknown, was issued to another client, or its token was already handed out."""

    code = "invalid_grant"


class AuthorizationPending(OAuthError):
    """Waiting for the user to approve the request in their browser."""

    code = "authorization_pending"


class SlowDown(OAuthError):
    """Polling too fast: wait 5 seconds longer between polls from now on."""

    code = "slow_down"


class DeviceAccessDenied(OAuthError):
    """The user denied the request."""

    code = "access_denied"


class ExpiredToken(OAuthError):
    """The device code has expired. Start again."""

    code = "expired_token"


class UnknownUserCode(BadRequest):
    """No request with this code is waiting: check the code on your device (it may have expired)."""

    code = "unknown_user_code"


class TooManyWrongCodes(TooManyRequests):
    """Too many wrong codes. Please wait a minute and try again."""


class DeviceStore(DeviceGrants, Users, Protocol):
    """The store roles the grant needs: device grants, and the users who approve them."""


@dataclass(frozen=True, slots=True)
class IssuedCode:
    """A device authorization response (RFC 8628 §3.2): ``device_code`` is its only copy (never log it)."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str
    expires_in: int
    interval: int


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A token response (RFC 6749 §5.1): ``access_token`` is its only copy."""

    access_token: str
    expires_in: int


def device_grant_problems(session: SessionSettings) -> list[str]:
    """Problems with the ``session.device_*`` settings the grant reads."""
    problems: list[str] = []
    if not MIN_LIFETIME <= session.device_code_lifetime <= MAX_LIFETIME:
        problems.append("session.device_code_lifetime: must be between 1m and 1h")
    if not MIN_INTERVAL <= session.device_poll_interval <= MAX_INTERVAL:
        problems.append("session.device_poll_interval: must be between 1s and 60s")
    elif not session.device_poll_interval < session.device_code_lifetime:
        problems.append("session.device_poll_interval: must be shorter than session.device_code_lifetime")
    return problems


def new_user_code() -> str:
    """A fresh user code, normalised (8 letters of :data:`USER_CODE_ALPHABET`, no dash)."""
    return "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))


def normalise_user_code(raw: str) -> str | None:
    """The user code someone typed, as issued (upper case, no dashes or spaces); None when it cannot be one."""
    if len(raw) > 64:
        return None
    code = _USER_CODE_SEPARATORS.sub("", raw).upper()
    return code if _USER_CODE_RE.fullmatch(code) else None


def display_user_code(code: str) -> str:
    """``XXXX-XXXX``, as a person reads and types it."""
    return f"{code[:4]}-{code[4:]}"


def code_hash(code: str) -> str:
    """SHA-256 hex of a (normalised) code: all the store keeps."""
    return hashlib.sha256(code.encode()).hexdigest()


def clean_client_id(raw: str | None) -> str:
    """The client_id as given; InvalidDeviceRequest when missing, InvalidClient when it cannot be one."""
    if raw is None or raw == "":
        raise InvalidDeviceRequest("client_id is required.")
    if not is_client_id(raw):
        raise InvalidClient()
    return raw


class DeviceGrantService:
    """Issue device codes, let signed-in people decide them, and hand each approved one's token out once."""

    def __init__(self, store: DeviceStore, tokens: ApiTokenService, settings: SessionSettings, metrics: Metrics,
                 clock: Callable[[], float], *, public_url: str) -> None:
        """``tokens`` mints the API tokens; ``public_url`` is where the gateway's pages are (``/device``)."""
        self._store = store
        self._tokens = tokens
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._verification_uri = public_url.rstrip("/") + "/device"
        self._wrong_codes = RateLimiter(WRONG_CODES_PER_MINUTE, clock)
        self._issues = RateLimiter(ISSUES_PER_MINUTE, clock)

    @property
    def verification_uri(self) -> str:
        """Where a person enters their code: ``public_url`` + ``/device``."""
        return self._verification_uri

    def _count(self, outcome: str) -> None:
        self._metrics.device_grants.labels(outcome).inc()

    async def issue(self, client_id: str | None, *, client: str) -> IssuedCode:
        """A new device code for ``client_id`` asked from the address ``client`` (RFC 8628 §3.1/3.2).

        InvalidDeviceRequest or InvalidClient for a missing or malformed client_id; TooManyRequests when
        the address asked for too many codes in the last minute.
        """
        try:
            client_id = clean_client_id(client_id)
        except OAuthError:
            self._count("invalid_request")
            raise
        wait = self._issues.take(client)
        if wait > 0:
            self._count("rate_limited")
            raise TooManyRequests("Too many device codes asked for from your address. Please wait a minute.",
                                  headers={"Retry-After": str(int(wait) + 1)})
        now = self._clock()
        lifetime, interval = float(self._settings.device_code_lifetime), float(self._settings.device_poll_interval)
        device_code = secrets.token_urlsafe(32)
        for _attempt in range(5):  # a user code already in use is rare (a few live ones among 2.6e10)
            user_code = new_user_code()
            try:
                grant = await self._store.issue_device_grant(
                    device_hash=code_hash(device_code), user_code_hash=code_hash(user_code), client_id=client_id,
                    client_addr=client[:256], now=now, expires_at=now + lifetime, interval=interval)
            except UserCodeTaken:
                continue
            break
        else:
            raise RuntimeError("no free user code after 5 tries")
        await self._store.purge_device_grants(before=now - KEPT_AFTER_EXPIRY)
        self._count("issued")
        log.info("device code issued", grant_id=grant.grant_id, client_id=client_id, client=client)
        shown = display_user_code(user_code)
        return IssuedCode(device_code, shown, self._verification_uri,
                          f"{self._verification_uri}?user_code={quote(shown)}", int(lifetime), int(interval))

    async def poll(self, grant_type: str | None, device_code: str | None, client_id: str | None, *,
                   client: str) -> IssuedToken:
        """Answer one token request (RFC 8628 §3.4/3.5): the token, this once, when the code was approved.

        Raises the OAuthError the RFC names for every other answer: InvalidDeviceRequest (a parameter
        missing), UnsupportedGrantType, InvalidClient, InvalidGrant (unknown code, another client's, or
        its token handed out already), AuthorizationPending, SlowDown (the interval grew), DeviceAccessDenied
        (denied, or the approving browser session ended, or the user holds too many tokens), ExpiredToken.
        """
        try:
            if not grant_type or not device_code:
                raise InvalidDeviceRequest("grant_type, device_code and client_id are required.")
            if grant_type != GRANT_TYPE:
                raise UnsupportedGrantType()
            client_id = clean_client_id(client_id)
        except OAuthError:
            self._count("invalid_request")
            raise
        if not _DEVICE_CODE_RE.fullmatch(device_code):
            self._count("invalid_grant")
            raise InvalidGrant()
        result = await self._store.poll_device_grant(code_hash(device_code), client_id=client_id, now=self._clock(),
                                                     slow_down_step=SLOW_DOWN_STEP)
        grant, outcome = result.grant, result.outcome
        if outcome is PollOutcome.CLAIMED and grant is not None and grant.user_id is not None:
            return await self._hand_out(grant, grant.user_id, client)
        if outcome is PollOutcome.PENDING:
            self._count("pending")
            raise AuthorizationPending()
        if outcome is PollOutcome.SLOW_DOWN:
            self._count("slow_down")
            raise SlowDown(headers={"Retry-After": str(int(grant.interval) if grant else int(SLOW_DOWN_STEP))})
        error = _REFUSALS.get(outcome, InvalidGrant)
        self._count({DeviceAccessDenied: "access_denied", ExpiredToken: "expired"}.get(error, "invalid_grant"))
        log.info("device token refused", outcome=outcome.value, grant_id="" if grant is None else grant.grant_id,
                 client_id=client_id, client=client)
        raise error()

    async def _hand_out(self, grant: DeviceGrant, user_id: int, client: str) -> IssuedToken:
        """Mint the token of the grant this poll claimed."""
        user = await self._store.get_user(user_id)
        if user is None:  # removed between the claim and now
            self._count("invalid_grant")
            raise InvalidGrant()
        try:
            minted = await self._tokens.mint(user, grant.client_id, self._tokens.default_lifetime, client=client)
        except TokenLimitReached:
            self._count("access_denied")
            raise DeviceAccessDenied("You already hold as many API tokens as allowed: revoke one at /tokens, "
                                     "then sign in again.") from None
        self._count("token_issued")
        log.info("device token issued", grant_id=grant.grant_id, client_id=grant.client_id, user_id=user.id,
                 token_id=minted.api_token.token_id, client=client)
        session = minted.api_token.session
        return IssuedToken(minted.token, round(session.expires_at - session.created_at))

    async def look_up(self, raw_code: str, *, limit_keys: Sequence[str], user: User, client: str) -> DeviceGrant:
        """The pending grant a signed-in person's typed code names, to show before they decide.

        ``limit_keys`` name who typed it (their session, their address): each may enter only
        :data:`WRONG_CODES_PER_MINUTE` wrong codes a minute. TooManyWrongCodes past that (checked before
        the code is even looked at), UnknownUserCode for a code no pending request holds.
        """
        code = self._admitted_code(raw_code, limit_keys)
        grant = await self._store.find_device_grant(code_hash(code), now=self._clock()) if code else None
        if grant is None or grant.status != "pending":
            self._wrong(limit_keys, user, client)
        return grant

    async def decide(self, raw_code: str, *, approve: bool, limit_keys: Sequence[str], user: User,
                     session_hash: str, client: str) -> DeviceGrant:
        """Approve or deny the pending request the code names, for ``user`` signed in with the browser session
        ``session_hash`` (its token is handed out only while that session lives); audited. The same errors
        as :meth:`look_up`."""
        code = self._admitted_code(raw_code, limit_keys)
        grant = None
        if code:
            grant = await self._store.decide_device_grant(code_hash(code), approve=approve, user_id=user.id,
                                                          session_hash=session_hash, actor="user",
                                                          now=self._clock())
        if grant is None:
            self._wrong(limit_keys, user, client)
        self._count("approved" if approve else "denied")
        if approve:
            log.info("device code approved", grant_id=grant.grant_id, client_id=grant.client_id, user_id=user.id,
                     client=client)
        else:
            log.info("device code denied", grant_id=grant.grant_id, client_id=grant.client_id, user_id=user.id,
                     client=client)
        return grant

    def _admitted_code(self, raw_code: str, limit_keys: Sequence[str]) -> str | None:
        """The normalised code (None if malformed), once the keys are under their limit of wrong codes."""
        wait = max((self._wrong_codes.wait(key) for key in limit_keys), default=0.0)
        if wait > 0:
            self._count("rate_limited")
            raise TooManyWrongCodes(headers={"Retry-After": str(int(wait) + 1)})
        return normalise_user_code(raw_code)

    def _wrong(self, limit_keys: Sequence[str], user: User, client: str) -> NoReturn:
        """Count a wrong code against every key, log it, and raise UnknownUserCode."""
        for key in limit_keys:
            self._wrong_codes.take(key)
        self._count("wrong_user_code")
        log.warning("device code not found", user_id=user.id, client=client)
        raise UnknownUserCode()


_REFUSALS: dict[PollOutcome, type[OAuthError]] = {
    PollOutcome.DENIED: DeviceAccessDenied,
    PollOutcome.APPROVER_GONE: DeviceAccessDenied,
    PollOutcome.EXPIRED: ExpiredToken,
    PollOutcome.UNKNOWN: InvalidGrant,
    PollOutcome.WRONG_CLIENT: InvalidGrant,
    PollOutcome.USED: InvalidGrant,
}
"""The error each final poll outcome is answered with."""
