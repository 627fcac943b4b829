"""The refresh token grant (``Refreshing``) of OIDCProvider and GitHubProvider, against their fakes over real HTTP.

A refresh must re-check everything a sign-in checks (signature, issuer, audience, the user's subject, the
required claims, org membership), tell "the provider no longer vouches" (ACCESS_DENIED / INVALID: the
gateway ends the session) from "the provider could not be asked" (UNAVAILABLE: try again later), and
never put a token in a message or a log line.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.fakes import github as fake_github
from tests.fakes.oidc import (
    CLIENT_ID,
    CLIENT_SECRET,
    REDIRECT_URI,
    FakeOIDC,
    FakeUser,
    ServerFactory,
    browser_login,
    make_login_secrets,
)
from upstreams import build_provider, config_problems
from upstreams.base import FailureReason, Identity, LoginSecrets, ProviderError, Refreshed
from upstreams.github import GitHubProvider
from upstreams.oidc import OIDCProvider

TIMEOUT = 0.5


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log record of the test, down to DEBUG (aiohttp's included)."""
    with caplog.at_level(logging.DEBUG):
        yield caplog


def assert_no_secret(error: ProviderError | None, logs: pytest.LogCaptureFixture, values: list[str]) -> None:
    """Neither the message nor any log line holds one of ``values`` (tokens, codes, the client secret)."""
    texts = [r.getMessage() for r in logs.records]
    if error is not None:
        assert error.message == str(error)
        texts.append(error.message)
    for value in values:
        assert value, "an empty secret proves nothing"
        for text in texts:
            assert value not in text, f"a secret leaked into {text!r}"


# ==== OIDC ================================================================================================

@pytest.fixture
async def fake(aiohttp_server: ServerFactory) -> FakeOIDC:
    alice = FakeUser(sub="user-alice", email="alice@example.com", name="Alice Liddell", preferred_username="alice",
                     id_claims={"groups": ["staff"], "tid": "acme"},
                     access_claims={"permissions": ["read:orders"]})
    return await FakeOIDC(users=[alice]).start(aiohttp_server)


def oidc(fake: FakeOIDC, http: aiohttp.ClientSession, **overrides: Any) -> OIDCProvider:
    config = fake.config(timeout=TIMEOUT, **overrides)
    assert config_problems("corp", config) == []
    provider = build_provider("corp", config, http)
    assert isinstance(provider, OIDCProvider)
    return provider


async def sign_in(provider: OIDCProvider) -> Identity:
    login_secrets = make_login_secrets()
    callback = await browser_login(provider, login_secrets)
    return await provider.redeem(callback=callback, redirect_uri=REDIRECT_URI, secrets=login_secrets)


def oidc_secrets(fake: FakeOIDC) -> list[str]:
    """Every refresh token, access token and ID token the fake issued, and the client secret."""
    issued = [*fake.issued_refresh_tokens, CLIENT_SECRET]
    for request in fake.token_requests:
        issued += [v for k, v in request.items() if k in ("code", "refresh_token", "code_verifier")]
    return issued


async def refused(provider: OIDCProvider, fake: FakeOIDC, logs: pytest.LogCaptureFixture, refresh_token: str,
                  subject: str = "user-alice") -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await provider.refresh(refresh_token, subject=subject)
    assert_no_secret(caught.value, logs, [refresh_token, *oidc_secrets(fake)])
    assert "eyJ" not in caught.value.message
    return caught.value


async def test_sign_in_keeps_the_refresh_token(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    identity = await sign_in(oidc(fake, http))
    assert identity.refresh_token == fake.issued_refresh_tokens[-1]
    assert "refresh_token" not in identity.claims


async def test_a_sign_in_without_a_refresh_token_has_none(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    fake.knobs.refresh_tokens = False
    assert (await sign_in(oidc(fake, http))).refresh_token == ""


@pytest.mark.parametrize("auth", ["client_secret_post", "client_secret_basic"])
async def test_refresh_with_a_new_id_token(fake: FakeOIDC, http: aiohttp.ClientSession, auth: str,
                                           logs: pytest.LogCaptureFixture) -> None:
    provider = oidc(fake, http, token_endpoint_auth=auth)
    signed_in = await sign_in(provider)
    refreshed = await provider.refresh(signed_in.refresh_token, subject="user-alice")

    assert refreshed.refresh_token == signed_in.refresh_token  # no rotation: the same one again
    identity = refreshed.identity
    assert identity is not None
    assert (identity.subject, identity.email, identity.email_verified, identity.groups) == \
        ("user-alice", "alice@example.com", True, ("staff",))
    assert identity.id_token and identity.id_token != signed_in.id_token
    assert identity.session_id == signed_in.session_id == fake.session_ids[0]
    assert identity.refresh_token == signed_in.refresh_token
    assert fake.refresh_calls == 1
    request = fake.token_requests[-1]
    assert request["grant_type"] == "refresh_token"
    assert request["refresh_token"] == signed_in.refresh_token
    assert request["auth_method"] == auth
    assert "code" not in request and "redirect_uri" not in request
    assert_no_secret(None, logs, oidc_secrets(fake))


async def test_refresh_without_a_new_id_token_reads_userinfo(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    provider = oidc(fake, http)
    signed_in = await sign_in(provider)
    fake.knobs.refresh_id_token = False
    before = fake.hits["userinfo"]

    refreshed = await provider.refresh(signed_in.refresh_token, subject="user-alice")

    identity = refreshed.identity
    assert identity is not None and fake.hits["userinfo"] == before + 1
    assert (identity.subject, identity.email, identity.name, identity.groups) == \
        ("user-alice", "alice@example.com", "Alice Liddell", ("staff",))
    assert identity.id_token == "" and identity.session_id == ""


async def test_refresh_without_id_token_or_userinfo_describes_nobody(fake: FakeOIDC,
                                                                    http: aiohttp.ClientSession) -> None:
    fake.knobs.userinfo = False
    provider = oidc(fake, http)
    signed_in = await sign_in(provider)
    fake.knobs.refresh_id_token = False
    assert await provider.refresh(signed_in.refresh_token, subject="user-alice") == \
        Refreshed(refresh_token=signed_in.refresh_token, identity=None)


async def test_rotation_returns_the_new_token_and_the_old_one_is_spent(
        fake: FakeOIDC, http: aiohttp.ClientSession, logs: pytest.LogCaptureFixture) -> None:
    fake.knobs.rotate_refresh_tokens = True
    provider = oidc(fake, http)
    first = (await sign_in(provider)).refresh_token

    refreshed = await provider.refresh(first, subject="user-alice")
    second = refreshed.refresh_token
    assert second and second != first
    assert refreshed.identity is not None and refreshed.identity.refresh_token == second

    error = await refused(provider, fake, logs, first)
    assert error.reason is FailureReason.ACCESS_DENIED
    assert "invalid_grant" in error.message
    third = (await provider.refresh(second, subject="user-alice")).refresh_token
    assert third not in (first, second)
    assert fake.refresh_calls == 3


async def test_reuse_detection_revokes_the_whole_family(fake: FakeOIDC, http: aiohttp.ClientSession,
                                                        logs: pytest.LogCaptureFixture) -> None:
    fake.knobs.rotate_refresh_tokens = fake.knobs.reuse_revokes_family = True
    provider = oidc(fake, http)
    first = (await sign_in(provider)).refresh_token
    second = (await provider.refresh(first, subject="user-alice")).refresh_token
    await refused(provider, fake, logs, first)
    assert (await refused(provider, fake, logs, second)).reason is FailureReason.ACCESS_DENIED


@pytest.mark.parametrize("id_token", [True, False], ids=["id-token", "userinfo"])
async def test_groups_are_read_again(fake: FakeOIDC, http: aiohttp.ClientSession, id_token: bool) -> None:
    provider = oidc(fake, http)
    signed_in = await sign_in(provider)
    assert signed_in.groups == ("staff",)
    fake.set_claims("user-alice", groups=["staff", "admins"])
    fake.knobs.refresh_id_token = id_token

    identity = (await provider.refresh(signed_in.refresh_token, subject="user-alice")).identity
    assert identity is not None and identity.groups == ("staff", "admins")


async def test_groups_from_the_access_token_are_read_again(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    provider = oidc(fake, http, groups_from_access_token=True, groups_claim="permissions")
    signed_in = await sign_in(provider)
    assert signed_in.groups == ("read:orders",)
    fake.users["user-alice"].access_claims["permissions"] = []

    identity = (await provider.refresh(signed_in.refresh_token, subject="user-alice")).identity
    assert identity is not None and identity.groups == ()


@pytest.mark.parametrize("id_token", [True, False], ids=["id-token", "userinfo"])
async def test_a_required_claim_lost_is_access_denied(fake: FakeOIDC, http: aiohttp.ClientSession, id_token: bool,
                                                      logs: pytest.LogCaptureFixture) -> None:
    provider = oidc(fake, http, required_claims={"tid": "acme"})
    signed_in = await sign_in(provider)
    fake.set_claims("user-alice", tid="elsewhere")
    fake.knobs.refresh_id_token = id_token
    error = await refused(provider, fake, logs, signed_in.refresh_token)
    assert error.reason is FailureReason.ACCESS_DENIED and "tid" in error.message


async def test_an_email_no_longer_verified_is_invalid(fake: FakeOIDC, http: aiohttp.ClientSession,
                                                      logs: pytest.LogCaptureFixture) -> None:
    provider = oidc(fake, http)
    signed_in = await sign_in(provider)
    fake.users["user-alice"].email_verified = False
    assert (await refused(provider, fake, logs, signed_in.refresh_token)).reason is FailureReason.INVALID


def _revoke(fake: FakeOIDC) -> None:
    assert fake.revoke_refresh_tokens("user-alice") == 1


def _expire(fake: FakeOIDC) -> None:
    fake.knobs.refresh_token_ttl = 0.0


@pytest.mark.parametrize("spoil", [_revoke, _expire], ids=["revoked", "expired"])
async def test_a_dead_refresh_token_is_access_denied(fake: FakeOIDC, http: aiohttp.ClientSession,
                                                     spoil: Callable[[FakeOIDC], None],
                                                     logs: pytest.LogCaptureFixture) -> None:
    provider = oidc(fake, http)
    signed_in = await sign_in(provider)
    spoil(fake)
    assert fake.live_refresh_tokens("user-alice") == []
    error = await refused(provider, fake, logs, signed_in.refresh_token)
    assert error.reason is FailureReason.ACCESS_DENIED
    assert fake.refresh_calls == 1


async def test_an_unknown_refresh_token_is_access_denied(fake: FakeOIDC, http: aiohttp.ClientSession,
                                                         logs: pytest.LogCaptureFixture) -> None:
    error = await refused(oidc(fake, http), fake, logs, "rt-made-up-0123456789abcdef")
    assert error.reason is FailureReason.ACCESS_DENIED


@pytest.mark.parametrize("break_client", [
    pytest.param(lambda fake: setattr(fake.knobs, "token_error", "unauthorized_client"), id="unauthorized_client"),
    pytest.param(lambda fake: setattr(fake, "client_secret", "rotated-secret"), id="invalid_client-401"),
])
async def test_the_clients_own_credentials_refused_is_unavailable_not_the_users_refusal(
        fake: FakeOIDC, http: aiohttp.ClientSession, break_client: Callable[[FakeOIDC], None],
        logs: pytest.LogCaptureFixture) -> None:
    """A secret rotated at the provider says nothing of the user: sessions must not all end at their next
    refresh for it (they stay to their own expiry; the gateway warns)."""
    provider = oidc(fake, http)
    signed_in = await sign_in(provider)
    break_client(fake)
    assert (await refused(provider, fake, logs, signed_in.refresh_token)).reason is FailureReason.UNAVAILABLE


async def test_another_refusal_is_invalid(fake: FakeOIDC, http: aiohttp.ClientSession,
                                          logs: pytest.LogCaptureFixture) -> None:
    provider = oidc(fake, http)
    signed_in = await sign_in(provider)
    fake.knobs.token_error = "invalid_scope"
    assert (await refused(provider, fake, logs, signed_in.refresh_token)).reason is FailureReason.INVALID


async def test_an_id_token_for_another_subject_is_invalid(fake: FakeOIDC, http: aiohttp.ClientSession,
                                                          logs: pytest.LogCaptureFixture) -> None:
    provider = oidc(fake, http)
    signed_in = await sign_in(provider)
    fake.knobs.refresh_id_token_sub = "user-mallory"
    error = await refused(provider, fake, logs, signed_in.refresh_token)
    assert error.reason is FailureReason.INVALID and "another subject" in error.message


async def test_a_token_issued_to_someone_else_is_invalid(fake: FakeOIDC, http: aiohttp.ClientSession,
                                                         logs: pytest.LogCaptureFixture) -> None:
    """The gateway's session says Bob, the refresh token (and so the new ID token) is Alice's."""
    provider = oidc(fake, http)
    signed_in = await sign_in(provider)
    error = await refused(provider, fake, logs, signed_in.refresh_token, subject="user-bob")
    assert error.reason is FailureReason.INVALID


async def test_userinfo_for_another_subject_is_invalid(fake: FakeOIDC, http: aiohttp.ClientSession,
                                                       logs: pytest.LogCaptureFixture) -> None:
    provider = oidc(fake, http)
    signed_in = await sign_in(provider)
    fake.knobs.refresh_id_token = False
    fake.knobs.userinfo_sub = "user-mallory"
    error = await refused(provider, fake, logs, signed_in.refresh_token)
    assert error.reason is FailureReason.INVALID and "another subject" in error.message


@pytest.mark.parametrize("knobs", [
    pytest.param({"id_token_alg": "none"}, id="alg-none"),
    pytest.param({"id_token_alg": "HS256-public-key"}, id="hs256-with-public-key"),
    pytest.param({"id_token_kid": "key-99"}, id="unknown-kid"),
    pytest.param({"id_token_iss": "https://evil.example"}, id="other-issuer"),
    pytest.param({"id_token_aud": "another-client"}, id="other-audience"),
    pytest.param({"id_token_azp": "another-client"}, id="other-azp"),
    pytest.param({"id_token_exp": -600}, id="expired"),
    pytest.param({"id_token_iat": 3600}, id="issued-in-the-future"),
    pytest.param({"bad_at_hash": True}, id="at_hash-of-another-access-token"),
    pytest.param({"id_token_omit": ("iat",)}, id="no-iat"),
])
async def test_an_id_token_that_fails_verification_is_invalid(fake: FakeOIDC, http: aiohttp.ClientSession,
                                                              knobs: dict[str, Any],
                                                              logs: pytest.LogCaptureFixture) -> None:
    provider = oidc(fake, http)
    signed_in = await sign_in(provider)
    for name, value in knobs.items():
        setattr(fake.knobs, name, value)
    error = await refused(provider, fake, logs, signed_in.refresh_token)
    assert error.reason is FailureReason.INVALID, error.message


async def test_no_nonce_is_required_on_refresh(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    """A refresh carries no nonce: whatever nonce the new ID token has (or none) is not held against it."""
    provider = oidc(fake, http)
    signed_in = await sign_in(provider)
    fake.knobs.id_token_nonce = "some-other-nonce"
    assert (await provider.refresh(signed_in.refresh_token, subject="user-alice")).identity is not None
    fake.knobs.id_token_nonce = None
    fake.knobs.id_token_omit = ("nonce",)
    assert (await provider.refresh(signed_in.refresh_token, subject="user-alice")).identity is not None


def _down(status: int) -> Callable[[FakeOIDC], None]:
    return lambda fake: setattr(fake.knobs, "token_status", status)


@pytest.mark.parametrize("spoil", [
    pytest.param(_down(500), id="500"),
    pytest.param(_down(503), id="503"),
    pytest.param(_down(429), id="429"),
    pytest.param(lambda fake: setattr(fake.knobs, "token_body", "<html>oops</html>"), id="html-200"),
    pytest.param(lambda fake: setattr(fake.knobs, "token_error", "temporarily_unavailable"),
                 id="temporarily_unavailable"),
    pytest.param(lambda fake: setattr(fake.knobs, "jwks_status", 503) or fake.rotate_key(), id="jwks-down"),
])
async def test_a_provider_that_cannot_answer_is_unavailable(fake: FakeOIDC, http: aiohttp.ClientSession,
                                                            spoil: Callable[[FakeOIDC], None],
                                                            logs: pytest.LogCaptureFixture) -> None:
    provider = oidc(fake, http)
    signed_in = await sign_in(provider)
    spoil(fake)
    error = await refused(provider, fake, logs, signed_in.refresh_token)
    assert error.reason is FailureReason.UNAVAILABLE, error.message


async def test_a_slow_token_endpoint_is_unavailable_within_the_timeout(
        fake: FakeOIDC, http: aiohttp.ClientSession, logs: pytest.LogCaptureFixture) -> None:
    provider = oidc(fake, http)
    signed_in = await sign_in(provider)
    fake.knobs.token_delay = 5.0
    started = time.monotonic()
    error = await refused(provider, fake, logs, signed_in.refresh_token)
    assert error.reason is FailureReason.UNAVAILABLE
    assert time.monotonic() - started < TIMEOUT * 2 + 1.0


async def test_an_unreachable_provider_is_unavailable(fake: FakeOIDC, http: aiohttp.ClientSession,
                                                      logs: pytest.LogCaptureFixture) -> None:
    provider = oidc(fake, http)
    signed_in = await sign_in(provider)
    assert fake.server is not None
    await fake.server.close()
    assert (await refused(provider, fake, logs, signed_in.refresh_token)).reason is FailureReason.UNAVAILABLE


async def test_an_answer_without_an_access_token_is_invalid(fake: FakeOIDC, http: aiohttp.ClientSession,
                                                            logs: pytest.LogCaptureFixture) -> None:
    provider = oidc(fake, http)
    signed_in = await sign_in(provider)
    fake.knobs.token_body = '{"token_type": "Bearer", "expires_in": 3600}'
    error = await refused(provider, fake, logs, signed_in.refresh_token)
    assert error.reason is FailureReason.INVALID and "no access token" in error.message


async def test_the_login_path_still_checks_the_nonce(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    """Adding a nonce-less verification for refreshes did not weaken the sign-in's."""
    fake.knobs.id_token_nonce = "not-this-attempts"
    with pytest.raises(ProviderError) as caught:
        await sign_in(oidc(fake, http))
    assert caught.value.reason is FailureReason.INVALID and "nonce" in caught.value.message


# ==== GitHub ==============================================================================================

GH_REDIRECT = "https://gw.example.com/callback/github"
OCTOCAT_ID = 583231


def octocat() -> fake_github.FakeUser:
    return fake_github.FakeUser(id=OCTOCAT_ID, login="octocat", name="The Octocat",
                                emails=[fake_github.FakeEmail("octocat@example.com", primary=True)],
                                orgs=["acme"], teams=["acme/ops"])


@pytest.fixture
async def gh(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> tuple[fake_github.FakeGitHub, str]:
    fake = fake_github.FakeGitHub()
    fake.expiring_tokens = True
    fake.add_user(octocat())
    fake.add_user(fake_github.FakeUser(id=1, login="mona", emails=[fake_github.FakeEmail("mona@example.com",
                                                                                          primary=True)]))
    fake.slow_seconds = 5.0
    server = await aiohttp_server(fake.app())
    return fake, str(server.make_url("")).rstrip("/")


def github(gh: tuple[fake_github.FakeGitHub, str], http: aiohttp.ClientSession, **config: Any) -> GitHubProvider:
    fake, base = gh
    table = {"type": "github", "client_id": fake.client_id, "client_secret": fake.client_secret, "base_url": base,
             "api_url": base, "allow_insecure_http": True, "timeout": TIMEOUT, **config}
    assert config_problems("gh", table) == []
    provider = build_provider("gh", table, http)
    assert isinstance(provider, GitHubProvider)
    return provider


async def gh_sign_in(provider: GitHubProvider, github_user: str = "octocat") -> Identity:
    login_secrets = LoginSecrets(state=secrets.token_urlsafe(16), nonce=secrets.token_urlsafe(16),
                                 code_verifier=secrets.token_urlsafe(48))
    callback = await fake_github.browser_login(provider, redirect_uri=GH_REDIRECT, secrets=login_secrets,
                                               github_user=github_user)
    return await provider.redeem(callback=callback, redirect_uri=GH_REDIRECT, secrets=login_secrets)


async def gh_refused(provider: GitHubProvider, fake: fake_github.FakeGitHub, logs: pytest.LogCaptureFixture,
                     refresh_token: str, subject: str = str(OCTOCAT_ID)) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await provider.refresh(refresh_token, subject=subject)
    assert_no_secret(caught.value, logs, [refresh_token, *fake.secrets_issued()])
    return caught.value


async def test_github_refresh_reads_the_user_again_with_a_rotated_token(
        gh: tuple[fake_github.FakeGitHub, str], http: aiohttp.ClientSession, logs: pytest.LogCaptureFixture) -> None:
    fake, _ = gh
    provider = github(gh, http, orgs=["acme"])
    signed_in = await gh_sign_in(provider)
    assert signed_in.refresh_token.startswith("ghr_")
    fake.users[OCTOCAT_ID].teams = ["acme/ops", "acme/sre"]

    refreshed = await provider.refresh(signed_in.refresh_token, subject=str(OCTOCAT_ID))

    assert refreshed.refresh_token.startswith("ghr_") and refreshed.refresh_token != signed_in.refresh_token
    identity = refreshed.identity
    assert identity is not None
    assert (identity.subject, identity.username, identity.email, identity.email_verified, identity.groups) == \
        (str(OCTOCAT_ID), "octocat", "octocat@example.com", True, ("acme", "acme/ops", "acme/sre"))
    assert identity.refresh_token == refreshed.refresh_token
    assert fake.refresh_calls == 1
    (request,) = [r for r in fake.recorded("/login/oauth/access_token") if r.form.get("grant_type")]
    assert request.form == {"client_id": fake.client_id, "client_secret": fake.client_secret,
                            "grant_type": "refresh_token", "refresh_token": signed_in.refresh_token}
    assert "application/json" in request.headers["Accept"]
    assert_no_secret(None, logs, fake.secrets_issued())

    error = await gh_refused(provider, fake, logs, signed_in.refresh_token)  # GitHub rotates: it is spent
    assert error.reason is FailureReason.ACCESS_DENIED
    assert (await provider.refresh(refreshed.refresh_token, subject=str(OCTOCAT_ID))).identity is not None


async def test_an_oauth_app_sign_in_has_no_refresh_token(gh: tuple[fake_github.FakeGitHub, str],
                                                         http: aiohttp.ClientSession) -> None:
    gh[0].expiring_tokens = False
    assert (await gh_sign_in(github(gh, http))).refresh_token == ""


async def test_github_user_who_left_the_org_is_access_denied(gh: tuple[fake_github.FakeGitHub, str],
                                                             http: aiohttp.ClientSession,
                                                             logs: pytest.LogCaptureFixture) -> None:
    fake, _ = gh
    provider = github(gh, http, orgs=["acme"])
    signed_in = await gh_sign_in(provider)
    fake.users[OCTOCAT_ID].orgs = []
    fake.users[OCTOCAT_ID].teams = []
    error = await gh_refused(provider, fake, logs, signed_in.refresh_token)
    assert error.reason is FailureReason.ACCESS_DENIED and "organisation" in error.message


def _gh_revoke(fake: fake_github.FakeGitHub) -> None:
    assert fake.revoke_refresh_tokens(OCTOCAT_ID) == 1


@pytest.mark.parametrize("spoil", [
    pytest.param(_gh_revoke, id="revoked"),
    pytest.param(lambda fake: setattr(fake, "refresh_token_ttl", 0.0), id="expired"),
    pytest.param(lambda fake: setattr(fake, "token_error", "bad_refresh_token"), id="bad_refresh_token"),
])
async def test_github_bad_refresh_token_is_access_denied(gh: tuple[fake_github.FakeGitHub, str],
                                                         http: aiohttp.ClientSession,
                                                         spoil: Callable[[fake_github.FakeGitHub], None],
                                                         logs: pytest.LogCaptureFixture) -> None:
    fake, _ = gh
    provider = github(gh, http)
    signed_in = await gh_sign_in(provider)
    spoil(fake)
    error = await gh_refused(provider, fake, logs, signed_in.refresh_token)
    assert error.reason is FailureReason.ACCESS_DENIED
    assert fake.refresh_calls == 1


@pytest.mark.parametrize("spoil", [
    pytest.param(lambda fake: setattr(fake, "client_secret", "rotated"), id="incorrect_client_credentials"),
    pytest.param(lambda fake: setattr(fake, "token_error", "unauthorized_client"), id="unauthorized_client"),
])
async def test_github_client_credentials_refused_are_unavailable(gh: tuple[fake_github.FakeGitHub, str],
                                                                 http: aiohttp.ClientSession,
                                                                 spoil: Callable[[fake_github.FakeGitHub], None],
                                                                 logs: pytest.LogCaptureFixture) -> None:
    fake, _ = gh
    provider = github(gh, http)
    signed_in = await gh_sign_in(provider)
    spoil(fake)
    assert (await gh_refused(provider, fake, logs, signed_in.refresh_token)).reason is FailureReason.UNAVAILABLE


async def test_github_token_of_another_user_is_invalid(gh: tuple[fake_github.FakeGitHub, str],
                                                       http: aiohttp.ClientSession,
                                                       logs: pytest.LogCaptureFixture) -> None:
    fake, _ = gh
    provider = github(gh, http)
    signed_in = await gh_sign_in(provider)
    error = await gh_refused(provider, fake, logs, signed_in.refresh_token, subject="1")  # mona's id
    assert error.reason is FailureReason.INVALID and "another user" in error.message


@pytest.mark.parametrize("failure", ["500", "502", "not_json", "slow", "429"])
@pytest.mark.parametrize("endpoint", ["token", "user", "orgs"])
async def test_github_that_cannot_answer_is_unavailable(gh: tuple[fake_github.FakeGitHub, str],
                                                        http: aiohttp.ClientSession, failure: str, endpoint: str,
                                                        logs: pytest.LogCaptureFixture) -> None:
    fake, _ = gh
    provider = github(gh, http, orgs=["acme"])
    signed_in = await gh_sign_in(provider)
    fake.failures[endpoint] = failure
    started = time.monotonic()
    error = await gh_refused(provider, fake, logs, signed_in.refresh_token)
    assert error.reason is FailureReason.UNAVAILABLE, error.message
    assert time.monotonic() - started < TIMEOUT * 2 + 1.0


# ==== which providers refresh =============================================================================

def test_only_the_refreshing_providers_have_a_refresh_method() -> None:
    """The gateway detects refresh support with ``callable(getattr(provider, "refresh", None))``."""
    from upstreams import PROVIDER_TYPES, provider_class

    refreshing = {t for t in PROVIDER_TYPES if callable(getattr(provider_class(t), "refresh", None))}
    assert refreshing == set(PROVIDER_TYPES) - {"vouch", "dev"}
    assert {"oidc", "github", "google", "keycloak"} <= refreshing


async def test_a_pkce_public_client_refreshes_without_a_secret(aiohttp_server: ServerFactory,
                                                               http: aiohttp.ClientSession) -> None:
    fake = await FakeOIDC(client_secret=None).start(aiohttp_server)
    provider = oidc(fake, http)
    signed_in = await sign_in(provider)
    refreshed = await provider.refresh(signed_in.refresh_token, subject=signed_in.subject)
    assert refreshed.identity is not None
    assert fake.token_requests[-1]["auth_method"] == "none"
    assert fake.token_requests[-1]["client_id"] == CLIENT_ID
