"""The login dance as plain async functions: start an attempt, finish it. No aiohttp.web here (signing out
is :mod:`gateway.signout`).

An attempt (state, PKCE verifier, nonce, upstream, validated return target) lives server-side in the
store, bound to the browser by a short-lived cookie whose name derives from the state, so several tabs
can sign in at once. It is single use and expires in minutes. Finishing checks binding, state and
upstream (mix-up), lets the provider verify everything it received, applies the enrolment policy,
upserts the user with roles refreshed from the upstream, mints a fresh token and revokes the browser's
previous one.

Removed users stay out. An identity an admin blocked (``gateway users delete`` blocks by default, or
``gateway users block``) is refused here with a 403 page, both before it could be enrolled again and
once more after its session is created (a block landing mid-sign-in cannot leave a live session), and
:meth:`LoginService.verify_bearer_session` refuses its bearer JWTs where it would look the user up. Opaque
tokens need no check: blocking revokes them, so the check path never reads blocks.

Lockout (OWASP, "Slow Down Online Guessing Attacks with Device Cookies"). Only failures of a genuine
attempt count: its state matched a live attempt bound to this browser's cookie, and then the provider,
the ID token, the enrolment policy or a block said no. A callback without such an attempt is refused
but not counted, since anyone can send one (also through a victim's browser, from another site). The
failures count against the client address, unless the browser presents a live device cookie: a random
value (``gwd_`` + 256 bits) set at every successful sign-in and stored only as its SHA-256, tied to the
user. Such a browser is judged by its own failures under ``device:<hash>`` instead, so someone failing
on purpose from a shared address (an office behind NAT) locks out new browsers there, not the people
who have signed in on theirs before.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote

import structlog

from gateway import tokens
from gateway.access import EnrolmentPolicy, map_roles
from gateway.cookies import COOKIE_NAME_RE
from gateway.core import Checker
from gateway.errors import (
    AccessDenied,
    AccountRemoved,
    LoginExpired,
    NotAllowed,
    NotFound,
    ProviderUnavailable,
    TooManyRequests,
)
from gateway.metrics import Metrics
from gateway.models import ActiveSession, SessionRecord, User
from gateway.redirects import RedirectPolicy, policy_problems, safe_redirect_target
from gateway.sealing import Sealer
from gateway.sessions import provider_session_key, start_session
from gateway.settings import EnrolmentSettings, LoginSettings, RolesSettings, SessionSettings
from gateway.store.base import Device, Store
from upstreams import issues_bearer_jwts
from upstreams.base import Callback, FailureReason, Identity, LoginSecrets, Provider, ProviderError

log = structlog.get_logger("gateway.login")

DEVICE_LIFETIME = 180 * 86400.0
"""Seconds a device cookie (and its row) lives after the latest sign-in on that browser."""

DEVICE_PREFIX = "gwd_"
"""Marks device cookie values, so they are never mistaken for session tokens (``gwt_``)."""

_DEVICE_RE = re.compile(r"gwd_[A-Za-z0-9_-]{43}")
_DEVICE_ID_LENGTH = len(DEVICE_PREFIX) + 43


def mint_device_id() -> str:
    """A fresh device cookie value: ``gwd_`` plus 256 random bits as unpadded URL-safe base64."""
    return DEVICE_PREFIX + secrets.token_urlsafe(32)


def is_device_id(value: str) -> bool:
    """True when ``value`` has exactly the shape :func:`mint_device_id` produces (checked before any lookup)."""
    return len(value) == _DEVICE_ID_LENGTH and _DEVICE_RE.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Requester:
    """Who is at ``/login`` or ``/callback``, as the lockout sees them.

    ``client`` is the client address. ``device`` is set when the browser presented a live device cookie
    (``device_id`` is that cookie's value); such a browser is judged by its own failures, not its
    address's.
    """

    client: str
    device_id: str = ""
    device: Device | None = None

    @property
    def lockout_key(self) -> str:
        """What failures count against and locks apply to: ``device:<hash>``, else the client address."""
        return f"device:{self.device.device_hash}" if self.device is not None else self.client


@dataclass(frozen=True, slots=True)
class LoginStarted:
    """Send the browser to ``location`` and set the binding cookie ``cookie_name=cookie_value``."""

    location: str
    cookie_name: str
    cookie_value: str


@dataclass(frozen=True, slots=True)
class LoginFinished:
    """Set the session cookie to ``token``, the device cookie to ``device_id`` (for :data:`DEVICE_LIFETIME`),
    clear ``attempt_cookie`` and send the browser to ``return_to``."""

    token: str
    return_to: str
    user: User
    attempt_cookie: str
    device_id: str


class LoginService:
    """Everything the login and callback handlers do, minus HTTP."""

    def __init__(self, *, login: LoginSettings, sessions: SessionSettings, enrolment: EnrolmentSettings,
                 roles: RolesSettings, public_url: str, redirect_hosts: Sequence[str],
                 bearer_upstreams: Sequence[str], store: Store, checker: Checker, metrics: Metrics,
                 clock: Callable[[], float]) -> None:
        """``redirect_hosts``: every host a login may return to, the gateway's own included;
        ``bearer_upstreams``: the upstreams whose JWTs are accepted as bearer tokens, in order."""
        self._login = login
        self._sessions = sessions
        self._roles = roles
        self._bearer_upstreams = tuple(bearer_upstreams)
        self._store = store
        self._checker = checker
        self._metrics = metrics
        self._clock = clock
        self.providers: dict[str, Provider] = {}
        """Filled at start-up (providers need the shared HTTP client)."""
        self._public = public_url.rstrip("/")
        self.redirects = RedirectPolicy(allowed_hosts=tuple(redirect_hosts), default_target=login.default_redirect,
                                        allow_http=public_url.startswith("http://"))
        self._enrolment = EnrolmentPolicy.from_lists(enrolment.emails, enrolment.domains, enrolment.groups)
        # Only with a key does a session keep its ID token (sealed), for the id_token_hint at sign-out.
        self.sealer = Sealer.from_keys(sessions.sealing_key, sessions.sealing_key_previous)
        """Seals what a session keeps of its upstream (its ID token; its refresh token with ``session.refresh``);
        None without ``session.sealing_key``."""

    # ---- helpers -------------------------------------------------------------------------------------

    def safe_target(self, raw: str | None) -> str:
        """A validated redirect target (the configured default when ``raw`` is not allowed)."""
        return safe_redirect_target(raw, self.redirects)

    def absolute(self, target: str) -> str:
        """A validated target as an absolute URL (local paths are on the gateway's own origin)."""
        return self._public + target if target.startswith("/") else target

    def choices(self) -> list[tuple[str, str]]:
        """``(name, display name)`` of every configured upstream, in config order."""
        return [(name, p.display_name) for name, p in self.providers.items()]

    def provider(self, name: str | None) -> tuple[str, Provider]:
        """The named upstream, or the only one when ``name`` is None; NotFound otherwise."""
        if name is None:
            if len(self.providers) != 1:
                raise NotFound("Choose a sign-in provider.")
            name = next(iter(self.providers))
        provider = self.providers.get(name)
        if provider is None:
            raise NotFound("There is no such sign-in provider.")
        return name, provider

    def callback_url(self, name: str) -> str:
        """The redirect URI registered with upstream ``name``."""
        return f"{self._public}/callback/{quote(name)}"

    def attempt_cookie_name(self, state: str) -> str:
        """The binding cookie for the attempt with this state (one per attempt, so tabs don't collide)."""
        return f"{self._login.cookie_name}_{hashlib.sha256(state.encode()).hexdigest()[:16]}"

    @property
    def device_cookie_name(self) -> str:
        """The device cookie's name, ``<login.cookie_name>_device`` (attempt cookies end in 16 hex digits)."""
        return f"{self._login.cookie_name}_device"

    async def requester(self, client: str, device_cookie: str | None) -> Requester:
        """``client``, with its device when ``device_cookie`` is the value of a live device cookie.

        A value of the wrong shape is ignored without a lookup; an unknown or expired one (or one whose
        user was deleted) after it: either way the requester is judged by its address.
        """
        if device_cookie and is_device_id(device_cookie):
            device = await self._store.find_device(tokens.hash_token(device_cookie), now=self._clock())
            if device is not None:
                return Requester(client, device_cookie, device)
        return Requester(client)

    async def check_lockout(self, client: str, device_cookie: str | None = None) -> Requester:
        """Raise TooManyRequests while the requester is locked out after repeated failed sign-ins; else
        return it. A browser with a live device cookie is judged by its device's lock, not ``client``'s."""
        requester = await self.requester(client, device_cookie)
        until = await self._store.locked_until(requester.lockout_key, now=self._clock())
        if until is not None:
            retry = max(1, math.ceil(until - self._clock()))
            source = "this browser" if requester.device is not None else "your address"
            raise TooManyRequests(f"Too many failed sign-ins from {source}. Please try again later.",
                                  headers={"Retry-After": str(retry)})
        return requester

    # ---- the dance -----------------------------------------------------------------------------------

    async def start(self, name: str | None, return_to: str, client: str) -> LoginStarted:
        """Create an attempt for upstream ``name`` and return where to send the browser.

        ``return_to`` must already be validated (:meth:`safe_target`).
        """
        name, provider = self.provider(name)
        login = LoginSecrets(state=secrets.token_urlsafe(32), nonce=secrets.token_urlsafe(32),
                             code_verifier=secrets.token_urlsafe(64))
        binding = secrets.token_urlsafe(32)
        now = self._clock()
        try:
            location = await provider.authorization_url(redirect_uri=self.callback_url(name), secrets=login)
        except ProviderError as exc:
            self._metrics.logins.labels(name, "provider_unavailable").inc()
            log.warning("login could not start: provider unavailable", upstream=name, reason=exc.message)
            raise ProviderUnavailable(link=(f"/login?upstream={quote(name)}", "Try again")) from exc
        await self._store.create_login_attempt(
            attempt_hash=tokens.hash_token(binding), upstream=name, state=login.state, nonce=login.nonce,
            code_verifier=login.code_verifier, return_to=return_to, client_addr=client, now=now,
            expires_at=now + self._login.attempt_ttl)
        log.info("login started", upstream=name, client=client)
        return LoginStarted(location, self.attempt_cookie_name(login.state), binding)

    async def finish(self, name: str, params: Mapping[str, str], cookies: Mapping[str, str], *, client: str,
                     user_agent: str, previous_token: str | None) -> LoginFinished:
        """Verify the callback for upstream ``name`` and sign the browser in; raise a GatewayError otherwise.

        A callback not bound to a live attempt of this browser (no state, no binding cookie, or a state
        that is unknown, expired, used or another attempt's) is LoginExpired and is not counted towards
        the lockout: anyone can send one. Every later failure (mix-up, the provider refusing or failing
        verification, the enrolment policy, a blocked identity) counts against the requester: the
        browser's device when ``cookies`` hold a live device cookie, else ``client``. A blocked identity
        (its key, its email, or its enrolled user's email) is AccountRemoved (403) and is never enrolled
        again. On success the requester's failures are forgotten and :attr:`LoginFinished.device_id` is
        the device cookie to set; the new session remembers the provider session (the ID token's ``sid``,
        hashed) it began in, which the upstream's back-channel logout may end, and, when ``session.sealing_key``
        is set, the ID token, sealed, for the ``id_token_hint`` at sign-out.
        """
        if name not in self.providers:
            raise NotFound("There is no such sign-in provider.")
        provider = self.providers[name]
        retry_link = (f"/login?upstream={quote(name)}", "Sign in again")
        state = params.get("state", "")
        binding = cookies.get(self.attempt_cookie_name(state), "") if state else ""
        if not state or not binding:
            self._refuse_unbound(name, client, "missing state or binding cookie")
            raise LoginExpired(link=retry_link)
        attempt = await self._store.consume_login_attempt(tokens.hash_token(binding), now=self._clock())
        if attempt is None or not hmac.compare_digest(attempt.state.encode(), state.encode()):
            self._refuse_unbound(name, client, "unknown, used, expired or swapped state")
            raise LoginExpired(link=retry_link)
        # From here on the callback belongs to an attempt this browser started: its failures count.
        requester = await self.requester(client, cookies.get(self.device_cookie_name))
        if attempt.upstream != name:
            await self._fail(name, requester, f"mix-up: attempt for {attempt.upstream!r} came back to {name!r}")
            raise LoginExpired("This sign-in response does not belong to the sign-in you started.",
                               link=retry_link)
        login = LoginSecrets(state=attempt.state, nonce=attempt.nonce, code_verifier=attempt.code_verifier)
        try:
            identity = await provider.redeem(callback=Callback(params=params, cookies=cookies),
                                             redirect_uri=self.callback_url(name), secrets=login)
        except ProviderError as exc:
            if exc.reason is FailureReason.UNAVAILABLE:
                self._metrics.logins.labels(name, "provider_unavailable").inc()
                log.warning("login failed: provider unavailable", upstream=name, reason=exc.message)
                raise ProviderUnavailable(link=retry_link) from exc
            await self._fail(name, requester, exc.message)
            if exc.reason is FailureReason.ACCESS_DENIED:
                raise AccessDenied(f"{provider.display_name} did not allow the sign-in: {exc.message}.",
                                   link=retry_link) from exc
            raise LoginExpired("The sign-in response could not be verified. Please start again.",
                               link=retry_link) from exc

        email = identity.email.strip() if identity.email_verified else ""
        refusal = self._enrolment.refusal(identity.email, identity.email_verified, identity.groups)
        if refusal is not None:
            await self._fail(name, requester, "refused by the enrolment policy")
            raise NotAllowed(f"You signed in, but {refusal}.")
        # An email block also holds the enrolled user whose email it was, if the upstream's has changed since.
        known = await self._store.get_user_by_key(name, identity.subject)
        known_email = known.email if known is not None else ""
        if await self._is_blocked(name, identity, known_email):
            await self._fail(name, requester, "identity blocked by an administrator", outcome="blocked")
            raise AccountRemoved()

        now = self._clock()
        roles = map_roles(identity.groups, self._roles.map, self._roles.passthrough_groups)
        user = await self._store.upsert_user(name, identity.subject, email=email, name=identity.name,
                                             username=identity.username, groups=identity.groups, roles=roles,
                                             login_at=now)
        if previous_token:
            await self._checker.revoke_token(previous_token, actor="login", reason="replaced at sign-in")
        try:
            # Only the hash of the provider session is kept: what a back-channel logout names.
            provider_session = provider_session_key(name, identity.session_id) if identity.session_id else ""
            token, record = await start_session(self._store, self._sessions, user_id=user.id,
                                                kind="browser", now=now, client_addr=client,
                                                user_agent=user_agent, mfa=identity.mfa,
                                                provider_session=provider_session)
            await self._keep_secrets(record.token_hash, identity)
        except NotFound:  # an administrator deleted the user (and so the session) since the upsert
            await self._fail(name, requester, "user deleted during the sign-in", outcome="blocked")
            raise AccountRemoved() from None
        # A block committed while this sign-in ran may have revoked sessions before this one existed.
        if await self._is_blocked(name, identity, known_email):
            await self._checker.revoke_token(token, actor="login", reason="identity blocked during sign-in")
            await self._fail(name, requester, "identity blocked during the sign-in", outcome="blocked")
            raise AccountRemoved()
        await self._store.record_audit("login", user_id=user.id, user_key=f"{name}:{identity.subject}",
                                       actor="user", detail={"upstream": name, "client_addr": client,
                                                             "mfa": str(identity.mfa).lower(),
                                                             "session": record.token_hash[:12]})
        await self._store.clear_login_failures(requester.lockout_key)
        device_id = await self._remember_device(requester, user.id, now)
        self._metrics.logins.labels(name, "success").inc()
        log.info("login succeeded", upstream=name, user_id=user.id, client=client, mfa=identity.mfa,
                 known_device=requester.device is not None)
        return LoginFinished(token, attempt.return_to, user, self.attempt_cookie_name(state), device_id)

    async def verify_bearer_session(self, token: str, token_hash: str, now: float) -> ActiveSession | None:
        """Turn a bearer JWT from one of ``check.jwt_upstreams`` into a session, or None.

        The JWT is verified by its provider (signature via JWKS, ``iss``, ``aud``, ``exp``); the enrolment
        policy applies; a blocked identity (its key, its email, or its enrolled user's email) gets None
        and is not enrolled again; the user is upserted with roles mapped like at a login, so the
        identity has the same shape as a browser session's (a known user keeps the profile of their last
        sign-in). The session lives until the JWT's ``exp`` and is not stored. Raises StoreUnavailable
        when the database cannot answer (the check path then fails closed).
        """
        for name in self._bearer_upstreams:
            provider = self.providers.get(name)
            if provider is None:
                continue
            try:
                identity = await provider.verify_bearer(token)
            except ProviderError as exc:
                log.warning("bearer JWT not checked: provider unavailable", upstream=name, reason=exc.message)
                continue
            if identity is None:
                continue
            expires = identity.claims.get("exp")
            if not isinstance(expires, int | float) or isinstance(expires, bool) or expires <= now:
                return None
            if self._enrolment.refusal(identity.email, identity.email_verified, identity.groups) is not None:
                log.info("bearer JWT refused by enrolment policy", upstream=name)
                return None
            # A known user keeps the profile from their last sign-in (access tokens rarely carry email,
            # name or groups); only a first-time API user is enrolled from the token's claims.
            user = await self._store.get_user_by_key(name, identity.subject)
            # A removed identity is refused here, where it would otherwise be enrolled again.
            if await self._is_blocked(name, identity, user.email if user is not None else ""):
                log.info("bearer JWT refused: identity blocked", upstream=name)
                return None
            if user is None:
                roles = map_roles(identity.groups, self._roles.map, self._roles.passthrough_groups)
                user = await self._store.upsert_user(
                    name, identity.subject, email=identity.email.strip() if identity.email_verified else "",
                    name=identity.name, username=identity.username, groups=identity.groups, roles=roles)
            # last_seen_at = expiry: nothing to write back, the JWT is the session.
            session = SessionRecord(token_hash=token_hash, user_id=user.id, kind="api", created_at=now,
                                    expires_at=float(expires), idle_timeout=0.0, last_seen_at=float(expires),
                                    idle_expires_at=None, revoked_at=None, client_addr="", user_agent="",
                                    mfa=identity.mfa)
            return ActiveSession(session, user)
        return None

    async def _is_blocked(self, name: str, identity: Identity, known_email: str = "") -> bool:
        """True when an admin blocked this identity, or its email (verified or not: a block errs on the
        side of refusing), or ``known_email`` (the enrolled user's)."""
        return await self._store.is_blocked(name, identity.subject, emails=(identity.email, known_email))

    async def _remember_device(self, requester: Requester, user_id: int, now: float) -> str:
        """The device cookie value for this browser now that ``user_id`` signed in on it: the one it brought
        when that is ``user_id``'s live device (its life extended), else a new one."""
        device = requester.device
        device_id = requester.device_id if device is not None and device.user_id == user_id else mint_device_id()
        await self._store.remember_device(tokens.hash_token(device_id), user_id=user_id, now=now,
                                          expires_at=now + DEVICE_LIFETIME)
        return device_id

    async def _keep_secrets(self, token_hash: str, identity: Identity) -> None:
        """Keep with the new session, sealed, the identity's ID token (for the ``id_token_hint`` at sign-out)
        and, with ``session.refresh``, its refresh token (for :mod:`gateway.refresh`); nothing without a
        sealing key. Raises NotFound when the session is gone."""
        if self.sealer is None:
            return
        if identity.id_token:
            sealed = self.sealer.seal(identity.id_token, token_hash=token_hash, purpose="id_token")
            await self._store.keep_session_secret(token_hash, "id_token", sealed)
        if identity.refresh_token and self._sessions.refresh:
            sealed = self.sealer.seal(identity.refresh_token, token_hash=token_hash, purpose="refresh_token")
            await self._store.keep_session_secret(token_hash, "refresh_token", sealed)

    async def vouched_again(self, user: User, identity: Identity) -> str | None:
        """Take in what the upstream says of ``user`` at a refresh: None once the user row holds the
        identity's email, names, groups and the roles they map to; else why the user may no longer have a
        session (the enrolment policy refuses the identity now, or it is blocked), changing nothing."""
        if identity.subject != user.subject:
            return "the upstream described another user"
        refusal = self._enrolment.refusal(identity.email, identity.email_verified, identity.groups)
        if refusal is not None:
            return refusal
        if await self._is_blocked(user.upstream, identity, user.email):
            return "the identity is blocked"
        email = identity.email.strip() if identity.email_verified else ""
        roles = map_roles(identity.groups, self._roles.map, self._roles.passthrough_groups)
        await self._store.upsert_user(user.upstream, identity.subject, email=email, name=identity.name,
                                      username=identity.username, groups=identity.groups, roles=roles)
        return None

    def _refuse_unbound(self, name: str, client: str, reason: str) -> None:
        """Note a callback that belongs to no live attempt of this browser; it does not count towards a lockout."""
        self._metrics.logins.labels(name, "invalid_state").inc()
        log.warning("login callback refused: no live attempt for this browser", upstream=name, client=client,
                    reason=reason)

    async def _fail(self, name: str, requester: Requester, reason: str, *, outcome: str = "failed") -> None:
        """Count a failure of a genuine attempt towards the requester's lockout (device, else address)."""
        self._metrics.logins.labels(name, outcome).inc()
        login = self._login
        locked = await self._store.record_login_failure(
            requester.lockout_key, now=self._clock(), window=login.lockout_window,
            threshold=login.lockout_threshold, lock_for=login.lockout_duration)
        log.warning("login callback failed", upstream=name, client=requester.client, reason=reason,
                    known_device=requester.device is not None, locked_out=locked is not None)


def login_problems(login: LoginSettings, *, session_cookie: str, redirect_hosts: Sequence[str],
                   allow_http: bool) -> list[str]:
    """Problems with ``[login]``: its cookie (a valid name, not the session cookie's ``session_cookie``),
    the attempt lifetime, the abuse limits, and the redirect policy :class:`LoginService` would build from
    ``redirect_hosts`` and ``allow_http``."""
    problems: list[str] = []
    if not COOKIE_NAME_RE.fullmatch(login.cookie_name):
        problems.append(f"login.cookie_name: {login.cookie_name!r} is not a valid cookie name")
    elif login.cookie_name == session_cookie:
        problems.append("login.cookie_name: must differ from cookie.name")
    if not 60 <= login.attempt_ttl <= 3600:
        problems.append("login.attempt_ttl: must be between 1m and 1h")
    if login.rate_limit < 1:
        problems.append("login.rate_limit: must be at least 1 request per minute")
    if login.lockout_threshold < 1 or login.lockout_window <= 0 or login.lockout_duration <= 0:
        problems.append("login.lockout_*: threshold must be >= 1, window and duration positive")
    problems.extend(f"login.{p}" for p in policy_problems(redirect_hosts, login.default_redirect,
                                                          allow_http=allow_http))
    return problems


def bearer_upstream_problems(bearer_upstreams: Sequence[str],
                             upstreams: Mapping[str, Mapping[str, object]]) -> list[str]:
    """Problems with ``check.jwt_upstreams``: each must name one of ``upstreams`` whose type issues JWTs
    (:func:`upstreams.issues_bearer_jwts`), or :meth:`LoginService.verify_bearer_session` could never
    accept its tokens."""
    problems: list[str] = []
    for name in bearer_upstreams:
        table = upstreams.get(name)
        if table is None:
            problems.append(f"check.jwt_upstreams: {name!r} is not a configured upstream")
        elif not issues_bearer_jwts(table.get("type")):
            problems.append(f"check.jwt_upstreams: {name!r} issues no JWTs (needs an OIDC upstream)")
    return problems
