"""The login dance as plain async functions: start an attempt, finish it, log out. No aiohttp.web here.

An attempt (state, PKCE verifier, nonce, upstream, validated return target) lives server-side in the
store, bound to the browser by a short-lived cookie whose name derives from the state, so several tabs
can sign in at once. It is single use and expires in minutes. Finishing checks binding, state and
upstream (mix-up), lets the provider verify everything it received, applies the enrolment policy,
upserts the user with roles refreshed from the upstream, mints a fresh token and revokes the browser's
previous one.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

import structlog

from gateway import tokens
from gateway.access import EnrolmentPolicy, map_roles
from gateway.core import Checker
from gateway.errors import AccessDenied, LoginExpired, NotAllowed, NotFound, ProviderUnavailable, TooManyRequests
from gateway.metrics import Metrics
from gateway.models import ActiveSession, SessionRecord, User
from gateway.redirects import RedirectPolicy, safe_redirect_target
from gateway.sessions import start_session
from gateway.settings import Settings
from gateway.store.base import Store
from upstreams.base import Callback, FailureReason, LoginSecrets, Provider, ProviderError

log = structlog.get_logger("gateway.login")


@dataclass(frozen=True, slots=True)
class LoginStarted:
    """Send the browser to ``location`` and set the binding cookie ``cookie_name=cookie_value``."""

    location: str
    cookie_name: str
    cookie_value: str


@dataclass(frozen=True, slots=True)
class LoginFinished:
    """Set the session cookie to ``token``, clear ``attempt_cookie`` and send the browser to ``return_to``."""

    token: str
    return_to: str
    user: User
    attempt_cookie: str


class LoginService:
    """Everything the login, callback and logout handlers do, minus HTTP."""

    def __init__(self, *, settings: Settings, store: Store, checker: Checker, metrics: Metrics,
                 clock: Callable[[], float]) -> None:
        self._settings = settings
        self._store = store
        self._checker = checker
        self._metrics = metrics
        self._clock = clock
        self.providers: dict[str, Provider] = {}
        """Filled at start-up (providers need the shared HTTP client)."""
        self._public = settings.public_url.rstrip("/")
        self.redirects = RedirectPolicy(allowed_hosts=settings.redirect_hosts,
                                        default_target=settings.login.default_redirect,
                                        allow_http=settings.public_url.startswith("http://"))
        self._enrolment = EnrolmentPolicy.from_lists(settings.enrolment.emails, settings.enrolment.domains,
                                                     settings.enrolment.groups)

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
        return f"{self._settings.login.cookie_name}_{hashlib.sha256(state.encode()).hexdigest()[:16]}"

    async def check_lockout(self, client: str) -> None:
        """Raise TooManyRequests while ``client`` is locked out after repeated failed callbacks."""
        until = await self._store.locked_until(client, now=self._clock())
        if until is not None:
            retry = max(1, math.ceil(until - self._clock()))
            raise TooManyRequests("Too many failed sign-ins from your address. Please try again later.",
                                  headers={"Retry-After": str(retry)})

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
            expires_at=now + self._settings.login.attempt_ttl)
        log.info("login started", upstream=name, client=client)
        return LoginStarted(location, self.attempt_cookie_name(login.state), binding)

    async def finish(self, name: str, params: Mapping[str, str], cookies: Mapping[str, str], *, client: str,
                     user_agent: str, previous_token: str | None) -> LoginFinished:
        """Verify the callback for upstream ``name`` and sign the browser in; raise a GatewayError otherwise."""
        if name not in self.providers:
            raise NotFound("There is no such sign-in provider.")
        provider = self.providers[name]
        retry_link = (f"/login?upstream={quote(name)}", "Sign in again")
        state = params.get("state", "")
        binding = cookies.get(self.attempt_cookie_name(state), "") if state else ""
        if not state or not binding:
            await self._fail(name, client, "missing state or binding cookie")
            raise LoginExpired(link=retry_link)
        attempt = await self._store.consume_login_attempt(tokens.hash_token(binding), now=self._clock())
        if attempt is None or not hmac.compare_digest(attempt.state.encode(), state.encode()):
            await self._fail(name, client, "unknown, used, expired or swapped state")
            raise LoginExpired(link=retry_link)
        if attempt.upstream != name:
            await self._fail(name, client, f"mix-up: attempt for {attempt.upstream!r} came back to {name!r}")
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
            await self._fail(name, client, exc.message)
            if exc.reason is FailureReason.ACCESS_DENIED:
                raise AccessDenied(f"{provider.display_name} did not allow the sign-in: {exc.message}.",
                                   link=retry_link) from exc
            raise LoginExpired("The sign-in response could not be verified. Please start again.",
                               link=retry_link) from exc

        email = identity.email.strip() if identity.email_verified else ""
        refusal = self._enrolment.refusal(identity.email, identity.email_verified, identity.groups)
        if refusal is not None:
            await self._fail(name, client, "refused by the enrolment policy")
            raise NotAllowed(f"You signed in, but {refusal}.")

        now = self._clock()
        roles = map_roles(identity.groups, self._settings.roles.map, self._settings.roles.passthrough_groups)
        user = await self._store.upsert_user(name, identity.subject, email=email, name=identity.name,
                                             username=identity.username, groups=identity.groups, roles=roles,
                                             login_at=now)
        if previous_token:
            await self._checker.revoke_token(previous_token, actor="login", reason="replaced at sign-in")
        token, record = await start_session(self._store, self._settings.session, user_id=user.id, kind="browser",
                                            now=now, client_addr=client, user_agent=user_agent,
                                            mfa=identity.mfa)
        await self._store.record_audit("login", user_id=user.id, user_key=f"{name}:{identity.subject}",
                                       actor="user", detail={"upstream": name, "client_addr": client,
                                                             "mfa": str(identity.mfa).lower(),
                                                             "session": record.token_hash[:12]})
        await self._store.clear_login_failures(client)
        self._metrics.logins.labels(name, "success").inc()
        log.info("login succeeded", upstream=name, user_id=user.id, client=client, mfa=identity.mfa)
        return LoginFinished(token, attempt.return_to, user, self.attempt_cookie_name(state))

    async def verify_bearer_session(self, token: str, token_hash: str, now: float) -> ActiveSession | None:
        """Turn a bearer JWT from one of ``check.jwt_upstreams`` into a session, or None.

        The JWT is verified by its provider (signature via JWKS, ``iss``, ``aud``, ``exp``); the enrolment
        policy applies; the user is upserted with roles mapped like at a login, so the identity has the
        same shape as a browser session's (a known user keeps the profile of their last sign-in). The
        session lives until the JWT's ``exp`` and is not stored.
        """
        for name in self._settings.check.jwt_upstreams:
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
            if user is None:
                roles = map_roles(identity.groups, self._settings.roles.map,
                                  self._settings.roles.passthrough_groups)
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

    async def _fail(self, name: str, client: str, reason: str) -> None:
        """Count a failed callback towards the client's lockout."""
        self._metrics.logins.labels(name, "failed").inc()
        login = self._settings.login
        locked = await self._store.record_login_failure(
            client, now=self._clock(), window=login.lockout_window, threshold=login.lockout_threshold,
            lock_for=login.lockout_duration)
        log.warning("login callback failed", upstream=name, client=client, reason=reason,
                    locked_out=locked is not None)

    async def logout(self, token: str | None, return_to: str, client: str) -> str:
        """Revoke the session everywhere and return where to send the browser (maybe the upstream's logout).

        ``return_to`` must already be validated.
        """
        location = self.absolute(return_to)
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
        provider = self.providers.get(user.upstream)
        if provider is not None:
            try:
                upstream_logout = await provider.logout_url(return_to=location, id_token="")
            except ProviderError as exc:
                log.warning("upstream logout URL unavailable", upstream=user.upstream, reason=exc.message)
                upstream_logout = None
            if upstream_logout:
                return upstream_logout
        return return_to
