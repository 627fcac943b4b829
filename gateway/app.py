"""``create_app(settings)``: builds the whole gateway as one ``web.Application``; no module-level state.

Everything long-lived (store, cache, checker, metrics) hangs off the application under typed keys. The
store connects, migrates (when configured) and starts the revocation feed in a cleanup context, so
tests and workers each get their own fully isolated instance.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import structlog
from aiohttp import web

from gateway import __version__
from gateway.access import AccessPolicy, AllowAll, Policy, parse_rules
from gateway.apitokens import ApiTokenService
from gateway.cache import SessionCache
from gateway.cookies import session_cookie_header
from gateway.core import Checker
from gateway.device import DeviceGrantService
from gateway.errors import StoreUnavailable
from gateway.facts import TrustedProxies
from gateway.handlers.backchannel import BackChannelLogoutEndpoint
from gateway.handlers.check import CheckEndpoint, CheckHandler
from gateway.handlers.device import DeviceHandlers
from gateway.handlers.health import MetricsEndpoint, Readiness, RuntimeState, healthz
from gateway.handlers.hot import HotEndpoints
from gateway.handlers.login import LoginHandlers
from gateway.handlers.tokens import ApiTokenHandlers
from gateway.handlers.webhook import WebhookEndpoint, WebhookHandler
from gateway.http_errors import ErrorMapper, not_found
from gateway.login import LoginService
from gateway.metrics import Metrics
from gateway.protocol import refuse_transfer_encoding
from gateway.ratelimit import RateLimiter
from gateway.refresh import SessionRefresher
from gateway.requestids import RequestIds
from gateway.settings import AccessSettings, Settings
from gateway.signout import SignOut
from gateway.store import make_store, revocation_retention
from gateway.store.base import RevocationHandler, Store, WatchStateHandler
from upstreams import build_provider
from upstreams.base import DEFAULT_TIMEOUT

log = structlog.get_logger("gateway.app")

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
CHECKER = web.AppKey("checker", Checker)
METRICS = web.AppKey("metrics", Metrics)
STATE = web.AppKey("state", RuntimeState)
LOGIN = web.AppKey("login", LoginService)


REFRESHER = web.AppKey("refresher", SessionRefresher)
"""Present with ``session.refresh``: renews sessions with their upstream (see :mod:`gateway.refresh`)."""

HOT = web.AppKey("hot", HotEndpoints)
"""The check-path endpoints' framework-free logic, for front-ends other than aiohttp's router."""

_MIGRATION_RETRY = 2.0
_FEED_RESTART = 1.0
_SHUTDOWN_STEP = 15.0
"""Seconds each shutdown step (a background task stopping, the last session uses, the store closing) may
take: a step that hangs is logged and left behind, so the process still stops."""


def create_app(settings: Settings, *, policy: Policy | None = None,
               clock: Callable[[], float] = time.time) -> web.Application:
    """Build the application for validated ``settings``.

    ``policy`` decides who may pass where (default: every valid session); ``clock`` gives Unix time and
    exists so tests can move time without sleeping.
    """
    metrics = Metrics()
    store = make_store(settings.database_url, settings.database,
                       revocation_retention=revocation_retention(settings.cache))
    cache = SessionCache(max_entries=settings.cache.max_entries, ttl=settings.cache.ttl,
                         negative_max_entries=settings.cache.negative_max_entries,
                         negative_ttl=settings.cache.negative_ttl, degraded_ttl=settings.cache.degraded_ttl,
                         stale_if_error=settings.cache.stale_if_error,
                         clock=clock, on_evict=lambda: metrics.cache_event("eviction"))
    # Until the revocation feed is confirmed live, cache only briefly.
    cache.degraded = True
    checker = Checker(store=store, cache=cache, policy=policy or configured_policy(settings.access), metrics=metrics,
                      last_seen_grain=settings.session.last_seen_grain, clock=clock)
    login = LoginService(login=settings.login, sessions=settings.session, enrolment=settings.enrolment,
                         roles=settings.roles, public_url=settings.public_url, redirect_hosts=settings.redirect_hosts,
                         bearer_upstreams=settings.check.jwt_upstreams, store=store, checker=checker,
                         metrics=metrics, clock=clock)
    if settings.check.jwt_upstreams:
        checker.jwt_verifier = login.verify_bearer_session
    refresher: SessionRefresher | None = None
    if settings.session.refresh:
        refresher = SessionRefresher(store=store, login=login, lifetime=settings.session.lifetime,
                                     interval=settings.session.refresh_interval, metrics=metrics, clock=clock)
        checker.refresh_sessions(settings.session.refresh_interval, refresher.due)
    state = RuntimeState()
    proxies = TrustedProxies(settings.trusted_networks)

    ids = RequestIds()
    errors = ErrorMapper(ids)
    app = web.Application(client_max_size=settings.hasura.max_body_bytes, middlewares=[refuse_transfer_encoding])
    app[SETTINGS] = settings
    app[STORE] = store
    app[CHECKER] = checker
    app[METRICS] = metrics
    app[STATE] = state
    app[LOGIN] = login
    if refresher is not None:
        app[REFRESHER] = refresher
    app.cleanup_ctx.append(_store_lifecycle)
    app.cleanup_ctx.append(_upstreams_lifecycle)

    # The check path is not wrapped (see gateway.http_errors); everything else is guarded.
    hot = HotEndpoints(
        CheckEndpoint(checker, settings.check, cookie_name=settings.cookie.name,
                      default_role=settings.hasura.default_role, login_url=settings.public_url.rstrip("/") + "/login",
                      metrics=metrics, proxies=proxies, ids=ids,
                      # After a renewal the cookie's Max-Age follows the session, sent for half an interval.
                      renewal_cookie=(functools.partial(session_cookie_header, settings.cookie)
                                      if refresher is not None else None),
                      renewal_window=settings.session.refresh_interval / 2, clock=clock),
        WebhookEndpoint(checker, settings.hasura, cookie_name=settings.cookie.name,
                        accept_jwt=bool(settings.check.jwt_upstreams), metrics=metrics, ids=ids, clock=clock))
    app[HOT] = hot
    check = CheckHandler(hot.check)
    webhook = WebhookHandler(hot.webhook)
    app.router.add_route("*", "/auth/check", check.handle)
    app.router.add_route("*", "/auth/check/{tail:.*}", check.handle)
    app.router.add_get("/auth/webhook", webhook.handle)
    app.router.add_post("/auth/webhook", webhook.handle)
    pages = LoginHandlers(login, SignOut(login, store=store, checker=checker, clock=clock), checker, proxies,
                          RateLimiter(settings.login.rate_limit, clock),
                          cookie=settings.cookie, attempt_ttl=settings.login.attempt_ttl,
                          session_lifetime=settings.session.lifetime, accept_jwt=bool(settings.check.jwt_upstreams),
                          default_role=settings.hasura.default_role)
    guard = errors.guard
    app.router.add_get("/login", guard(pages.login))
    app.router.add_get("/login/dev/{name}", guard(pages.dev_form))
    app.router.add_get("/callback", guard(pages.callback))
    app.router.add_get("/callback/{name}", guard(pages.callback))
    app.router.add_get("/logout", guard(pages.confirm_logout))  # asks; only the POST signs out
    app.router.add_post("/logout", guard(pages.logout))
    # Server to server (the provider posts a signed token): no cookie, none of /logout's same-origin checks.
    backchannel = BackChannelLogoutEndpoint(login, store, cache, metrics, clock)
    app.router.add_post("/backchannel-logout/{upstream}", guard(backchannel.handle))
    app.router.add_get("/auth/userinfo", guard(pages.userinfo))
    if settings.session.api_token_self_service:
        token_service = ApiTokenService(store, settings.session, metrics, clock, cache.evict)
        tokens = ApiTokenHandlers(token_service, checker,
                                  proxies, login.redirects, metrics, cookie_name=settings.cookie.name, clock=clock)
        app.router.add_get("/tokens", guard(tokens.page))
        app.router.add_post("/tokens", guard(tokens.mint_form))
        app.router.add_post("/tokens/{id}/revoke", guard(tokens.revoke_form))
        app.router.add_get("/auth/tokens", guard(tokens.list_json))
        app.router.add_post("/auth/tokens", guard(tokens.mint_json))
        app.router.add_delete("/auth/tokens/{id}", guard(tokens.revoke_json))
        # RFC 8628: a CLI gets one of these tokens once its person approves it at /device.
        device = DeviceHandlers(DeviceGrantService(store, token_service, settings.session, metrics, clock,
                                                   public_url=settings.public_url),
                                checker, proxies, login.redirects, metrics, cookie_name=settings.cookie.name,
                                clock=clock)
        app.router.add_post("/auth/device/code", guard(device.code))
        app.router.add_post("/auth/device/token", guard(device.token))
        app.router.add_get("/device", guard(device.page))
        app.router.add_post("/device", guard(device.submit))
    app.router.add_get("/", guard(pages.home))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", guard(Readiness(store, state).handle))
    app.router.add_get("/metrics", guard(MetricsEndpoint(store, metrics, state).handle))
    app.router.add_route("*", "/{tail:.*}", guard(not_found))
    return app


async def _store_lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Open the store, migrate if configured, run the revocation feed; undo it all at shutdown.

    The feed runs for as long as the application does (:func:`_keep_watching`). Shutdown never raises
    for a store that fails: whatever went wrong with the database, the process still stops cleanly.
    """
    settings, store, checker, state = app[SETTINGS], app[STORE], app[CHECKER], app[STATE]
    await store.open()
    background: list[asyncio.Task[None]] = []
    if settings.migrate_on_start:
        try:
            applied = await store.migrate()
            if applied:
                log.info("migrations applied", versions=applied)
        except StoreUnavailable as exc:
            log.error("migrations not applied yet: database unavailable; retrying", error=str(exc))
            background.append(asyncio.ensure_future(_migrate_until_done(store)))

    def on_feed_state(live: bool) -> None:
        state.feed_live = live
        if live:
            state.feed_ever_live = True
        checker.on_feed_state(live)

    background.append(asyncio.ensure_future(_keep_watching(store, checker.on_revocation, on_feed_state)))
    try:
        yield
    finally:
        state.draining = True
        for task in background:
            task.cancel()
        for task in background:
            await _ended(task)
        try:
            async with asyncio.timeout(_SHUTDOWN_STEP):
                await checker.drain()
        except Exception:
            log.exception("could not record the last session uses at shutdown")
        try:
            async with asyncio.timeout(_SHUTDOWN_STEP):
                await store.close()
        except Exception:
            log.exception("the session store did not close cleanly")


async def _keep_watching(store: Store, on_revoke: RevocationHandler, on_state: WatchStateHandler) -> None:
    """Run the store's revocation feed until cancelled, or until it ends because the store was closed.

    Should it ever fail (a bug: it handles every database failure itself), say so, mark the feed down and
    start it again, so the cache is never left unprotected and the feed metric never lies.
    """
    while True:
        try:
            await store.watch_revocations(on_revoke, on_state)
        except Exception:
            log.exception("revocation feed failed; restarting it")
        else:
            on_state(False)  # the store was closed: nothing will be heard any more
            return
        on_state(False)
        await asyncio.sleep(_FEED_RESTART)


async def _ended(task: asyncio.Task[None]) -> None:
    """Wait (at most :data:`_SHUTDOWN_STEP`) for a cancelled background task; log (never raise) what it
    failed with, or that it would not stop."""
    await asyncio.wait((task,), timeout=_SHUTDOWN_STEP)
    if not task.done():
        log.error("background task did not stop at shutdown; leaving it", task=task.get_name())
    elif not task.cancelled() and task.exception() is not None:
        log.error("background task failed", exc_info=task.exception())


def configured_policy(access: AccessSettings) -> Policy:
    """The access policy from ``[access]``: admit-all when there are no rules and the default allows."""
    if not access.rules and access.default == "allow":
        return AllowAll()
    return AccessPolicy(parse_rules(access.rules), access.default == "allow")


async def _upstreams_lifecycle(app: web.Application) -> AsyncIterator[None]:
    """One HTTP client for every upstream call, and the configured providers built on it."""
    settings, login = app[SETTINGS], app[LOGIN]
    # No cookie jar: a cookie one upstream answer sets must never ride along on another user's call.
    http = aiohttp.ClientSession(timeout=DEFAULT_TIMEOUT, cookie_jar=aiohttp.DummyCookieJar(),
                                 headers={"User-Agent": f"forward-auth-gateway/{__version__}"})
    try:
        for name, table in settings.upstreams.items():
            login.providers[name] = build_provider(name, table, http)
            if table.get("type") == "dev":
                log.warning("DEVELOPMENT SIGN-IN ENABLED: upstream accepts any email; never use it in production",
                            upstream=name)
        yield
    finally:
        refresher = app.get(REFRESHER)
        if refresher is not None:  # refreshes in progress call upstreams: end them before the client closes
            await refresher.close(_SHUTDOWN_STEP)
        login.providers.clear()
        await http.close()


async def _migrate_until_done(store: Store) -> None:
    """Apply migrations, retrying while the database is down (readiness stays red until done)."""
    while True:
        try:
            applied = await store.migrate()
        except StoreUnavailable as exc:
            log.error("migrations not applied yet: database unavailable; retrying", error=str(exc))
            await asyncio.sleep(_MIGRATION_RETRY)
        except Exception:
            log.exception("migrations failed; retrying")
            await asyncio.sleep(_MIGRATION_RETRY)
        else:
            if applied:
                log.info("migrations applied", versions=applied)
            return
