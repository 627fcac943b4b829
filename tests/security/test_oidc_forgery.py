"""Class 9: sign-in forgery with a malicious OIDC provider: never a session.

A real ``gateway serve`` signs in with a fake OIDC provider (tests/fakes/oidc.py, served from a thread) that
misbehaves in one way per case: an ID token from another issuer or for another audience, ``alg: none``,
HS256 keyed with the RSA public key, expired or from the future, the wrong nonce or none, a ``kid`` naming
another key (or none it publishes), a userinfo for another subject, an RFC 9207 ``iss`` mismatch. Others
attack the browser side: a replayed, swapped or unbound state, a code from another attempt, a callback for
another provider. Each walks the browser's path (``/login`` -> the provider -> ``/callback/corp``) and the
callback must refuse (4xx) without a session cookie; the code, the client secret, the PKCE verifier and the
tokens the provider issued must not appear in any answer or in the gateway's log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from tests.deploy.stack import COOKIE, http
from tests.fakes.oidc import FakeOIDC
from tests.security.corpus import Case, LogWatch, Tally, Verdict, leaks_in_response, params, probe
from tests.security.rawhttp import Response, request
from tests.security.stacks import OidcStack, honest_knobs

KLASS = "9-oidc"
OTHER_ISSUER = "https://evil.example.com/oidc"


@dataclass
class Attempt:
    """One sign-in started at the gateway and approved at the provider, not yet brought back."""

    callback: str
    """The callback's path and query, as the provider redirects the browser."""
    cookies: dict[str, str]
    code: str
    state: str


def start(oidc: OidcStack, verdict: Verdict, secrets: list[str], accept: str) -> Attempt | None:
    """``/login?upstream=corp`` at the gateway, then the provider's authorize page (it approves at once)."""
    gateway = oidc.gateway
    sent = probe([gateway.log], None, KLASS, verdict.case_id, gateway.port,
                 request("GET", "/login?upstream=corp&rd=%2F", [("Accept", accept)]), secrets=secrets)[1]
    login = sent.first
    if login is None or login.status != 302:
        verdict.problems.append(f"/login did not start a sign-in: {sent.short()}")
        return None
    cookies = login.cookies()
    secrets += cookies.values()
    authorize = http("GET", login.header("Location") or "", timeout=10)
    location = authorize.header("Location") or ""
    if authorize.status != 302 or not location.startswith(gateway.url + "/callback/"):
        verdict.problems.append(f"the provider did not send the browser back: {authorize.status} {location!r}")
        return None
    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    secrets.append(query.get("code", ""))
    parts = urlsplit(location)
    return Attempt(parts.path + "?" + parts.query, cookies, query.get("code", ""), query.get("state", ""))


def come_back(oidc: OidcStack, verdict: Verdict, secrets: list[str], target: str, cookies: dict[str, str],
              accept: str) -> Response | None:
    """Bring a callback to the gateway and judge the answer (5xx, hang, leaks)."""
    headers = [("Accept", accept)]
    if cookies:
        headers.append(("Cookie", "; ".join(f"{k}={v}" for k, v in cookies.items())))
    watch = LogWatch([oidc.gateway.log])
    before = len(oidc.fake.token_requests)
    issued = set(oidc.fake._access_tokens)  # the fake keeps what it issued
    judged, sent, _ = probe([oidc.gateway.log], None, KLASS, verdict.case_id, oidc.gateway.port,
                            request("GET", target, headers), secrets=secrets)
    # What the provider handed out during this callback is secret too (the gateway saw it, we did not).
    fresh = [r.get("code_verifier", "") for r in oidc.fake.token_requests[before:]]
    fresh += [token for token in oidc.fake._access_tokens if token not in issued]
    secrets += fresh
    oidc.secrets_seen.update(s for s in secrets if s)
    verdict.observed = sent.short()
    verdict.server_errors += judged.server_errors
    verdict.hang = verdict.hang or judged.hang
    verdict.leaks += judged.leaks + watch.leaks(fresh)
    verdict.leaks += [leak for response in sent.responses for leak in leaks_in_response(response, fresh)]
    return sent.first


def refused_without_session(verdict: Verdict, response: Response | None) -> None:
    """The callback must be a 4xx (or a close) and must not set a session cookie."""
    if response is None:
        return
    session = response.cookies().get(COOKIE, "")
    if session:
        verdict.allows.append(f"a forged sign-in got a session ({response.status})")
    if response.status < 400:  # 5xx are counted already
        verdict.problems.append(f"a forged callback is a 4xx, not {response.status}")


# ---- the provider misbehaves -----------------------------------------------------------------------------

def sign_with_another_key(fake: FakeOIDC) -> dict[str, Any]:
    """kid confusion: a key the provider also publishes signs, but the header names the usual one."""
    usual = fake.signing_kid
    fake.add_key()  # published, and signing from now on (until the case restores the usual key)
    return {"id_token_kid": usual}


KnobSetter = Callable[[FakeOIDC], dict[str, Any]]
FORGERIES: list[tuple[str, KnobSetter]] = [
    ("wrong-iss", lambda f: {"id_token_iss": OTHER_ISSUER}),
    ("iss-trailing-slash", lambda f: {"id_token_iss": f.issuer + "/"}),
    ("iss-other-case", lambda f: {"id_token_iss": f.issuer.upper()}),
    ("wrong-aud", lambda f: {"id_token_aud": "someone-else"}),
    ("aud-list-without-us", lambda f: {"id_token_aud": ["someone-else", "another"]}),
    ("aud-list-with-us-azp-other", lambda f: {"id_token_aud": [f.client_id, "someone-else"],
                                              "id_token_azp": "someone-else"}),
    ("aud-prefix", lambda f: {"id_token_aud": f.client_id + "-evil"}),
    ("alg-none", lambda f: {"id_token_alg": "none"}),
    ("hs256-with-public-key", lambda f: {"id_token_alg": "HS256-public-key"}),
    ("expired", lambda f: {"id_token_exp": -3600}),
    ("expired-just", lambda f: {"id_token_exp": -120}),
    ("issued-in-the-future", lambda f: {"id_token_iat": 3600, "id_token_exp": 7200}),
    ("nonce-mismatch", lambda f: {"id_token_nonce": "not-the-nonce-we-sent"}),
    ("nonce-missing", lambda f: {"id_token_omit": ("nonce",)}),
    ("nonce-empty", lambda f: {"id_token_nonce": ""}),
    ("exp-missing", lambda f: {"id_token_omit": ("exp",)}),
    ("iss-missing", lambda f: {"id_token_omit": ("iss",)}),
    ("aud-missing", lambda f: {"id_token_omit": ("aud",)}),
    ("sub-missing", lambda f: {"id_token_omit": ("sub",)}),
    ("kid-unknown", lambda f: {"id_token_kid": "key-nobody-publishes"}),
    ("kid-confusion", sign_with_another_key),
    ("bad-at-hash", lambda f: {"bad_at_hash": True}),
    ("userinfo-other-subject", lambda f: {"userinfo_sub": "user-mallory"}),
    ("rfc9207-iss-mismatch", lambda f: {"callback_iss": OTHER_ISSUER}),
    ("rfc9207-iss-missing", lambda f: {"callback_iss": None}),
    ("rfc9207-iss-trailing-slash", lambda f: {"callback_iss": f.issuer + "/"}),
    ("token-endpoint-refuses", lambda f: {"token_error": "invalid_grant"}),
    ("authorize-error", lambda f: {"authorize_error": "access_denied"}),
]

ACCEPTS = {"html": "text/html,application/xhtml+xml", "json": "application/json"}


def reset(fake: FakeOIDC, signing_kid: str) -> None:
    """Behave again, signing with the key the gateway knows (extra keys stay published)."""
    fake.knobs = honest_knobs(fake)
    fake.signing_kid = signing_kid


@pytest.mark.parametrize("case", params(Case(f"{fid}-{aid}", aid == "html", (setter, accept))
                                        for fid, setter in FORGERIES for aid, accept in ACCEPTS.items()))
def test_a_forged_id_token_never_makes_a_session(oidc_stack: OidcStack, tally: Tally, case: Case) -> None:
    setter, accept = case.data
    fake = oidc_stack.fake
    secrets = [oidc_stack.client_secret]
    verdict = Verdict(case.id, KLASS)
    signing_kid = fake.signing_kid
    try:
        for key, value in setter(fake).items():
            setattr(fake.knobs, key, value)
        attempt = start(oidc_stack, verdict, secrets, accept)
        if attempt is not None:
            refused_without_session(verdict, come_back(oidc_stack, verdict, secrets, attempt.callback,
                                                       attempt.cookies, accept))
    finally:
        reset(fake, signing_kid)
    tally.secrets.update(oidc_stack.secrets_seen)
    tally.conclude(verdict)


# ---- the browser side is forged -------------------------------------------------------------------------

def signed_in(oidc: OidcStack, verdict: Verdict, secrets: list[str], accept: str) -> Attempt | None:
    """A clean sign-in, brought back once (it must work): returns it for replays."""
    attempt = start(oidc, verdict, secrets, accept)
    if attempt is None:
        return None
    response = come_back(oidc, verdict, secrets, attempt.callback, attempt.cookies, accept)
    session = response.cookies().get(COOKIE, "") if response is not None else ""
    if not session:
        verdict.problems.append("a clean sign-in got no session: the forgeries prove nothing")
        return None
    secrets.append(session)
    oidc.secrets_seen.add(session)
    return attempt


def replay_state(oidc: OidcStack, verdict: Verdict, secrets: list[str], accept: str) -> Response | None:
    first = signed_in(oidc, verdict, secrets, accept)
    return come_back(oidc, verdict, secrets, first.callback, first.cookies, accept) if first else None


def replay_code_in_a_new_attempt(oidc: OidcStack, verdict: Verdict, secrets: list[str],
                                 accept: str) -> Response | None:
    first = signed_in(oidc, verdict, secrets, accept)
    second = start(oidc, verdict, secrets, accept)
    if first is None or second is None:
        return None
    target = f"/callback/corp?{urlencode({'code': first.code, 'state': second.state})}"
    return come_back(oidc, verdict, secrets, target, second.cookies, accept)


def swap_states(oidc: OidcStack, verdict: Verdict, secrets: list[str], accept: str) -> Response | None:
    """Attempt A's callback with attempt B's binding cookie (login CSRF: the attacker's code, the victim's browser)."""
    a, b = start(oidc, verdict, secrets, accept), start(oidc, verdict, secrets, accept)
    return come_back(oidc, verdict, secrets, a.callback, b.cookies, accept) if a and b else None


def inject_code(oidc: OidcStack, verdict: Verdict, secrets: list[str], accept: str) -> Response | None:
    """Attempt A's code with attempt B's state and cookie: the PKCE verifier does not match."""
    a, b = start(oidc, verdict, secrets, accept), start(oidc, verdict, secrets, accept)
    if a is None or b is None:
        return None
    target = f"/callback/corp?{urlencode({'code': a.code, 'state': b.state})}"
    return come_back(oidc, verdict, secrets, target, b.cookies, accept)


def without_binding_cookie(oidc: OidcStack, verdict: Verdict, secrets: list[str], accept: str) -> Response | None:
    a = start(oidc, verdict, secrets, accept)
    return come_back(oidc, verdict, secrets, a.callback, {}, accept) if a else None


def binding_cookie_renamed(oidc: OidcStack, verdict: Verdict, secrets: list[str], accept: str) -> Response | None:
    """The binding cookie's value under another attempt's name."""
    a, b = start(oidc, verdict, secrets, accept), start(oidc, verdict, secrets, accept)
    if a is None or b is None:
        return None
    value = next(iter(b.cookies.values()))
    return come_back(oidc, verdict, secrets, a.callback, {name: value for name in a.cookies}, accept)


def without_state(oidc: OidcStack, verdict: Verdict, secrets: list[str], accept: str) -> Response | None:
    a = start(oidc, verdict, secrets, accept)
    return come_back(oidc, verdict, secrets, f"/callback/corp?{urlencode({'code': a.code})}", a.cookies,
                     accept) if a else None


def without_code(oidc: OidcStack, verdict: Verdict, secrets: list[str], accept: str) -> Response | None:
    a = start(oidc, verdict, secrets, accept)
    return come_back(oidc, verdict, secrets, f"/callback/corp?{urlencode({'state': a.state})}", a.cookies,
                     accept) if a else None


def other_provider(oidc: OidcStack, verdict: Verdict, secrets: list[str], accept: str) -> Response | None:
    """Mix-up: corp's code and state brought to the dev upstream's callback."""
    a = start(oidc, verdict, secrets, accept)
    return come_back(oidc, verdict, secrets, a.callback.replace("/callback/corp?", "/callback/dev?", 1), a.cookies,
                     accept) if a else None


def unknown_provider(oidc: OidcStack, verdict: Verdict, secrets: list[str], accept: str) -> Response | None:
    a = start(oidc, verdict, secrets, accept)
    return come_back(oidc, verdict, secrets, a.callback.replace("/callback/corp?", "/callback/evil?", 1), a.cookies,
                     accept) if a else None


def error_with_code(oidc: OidcStack, verdict: Verdict, secrets: list[str], accept: str) -> Response | None:
    a = start(oidc, verdict, secrets, accept)
    return come_back(oidc, verdict, secrets, a.callback + "&error=access_denied", a.cookies, accept) if a else None


def duplicate_state(oidc: OidcStack, verdict: Verdict, secrets: list[str], accept: str) -> Response | None:
    """Login CSRF with two ``state`` parameters: A's code and state, then B's state, in B's browser."""
    a, b = start(oidc, verdict, secrets, accept), start(oidc, verdict, secrets, accept)
    return come_back(oidc, verdict, secrets, f"{a.callback}&state={b.state}", b.cookies, accept) if a and b else None


BrowserForgery = Callable[[OidcStack, Verdict, list[str], str], Response | None]
BROWSER_FORGERIES: list[tuple[str, BrowserForgery]] = [
    ("state-replay", replay_state),
    ("code-replay-new-attempt", replay_code_in_a_new_attempt),
    ("state-swap", swap_states),
    ("code-injection", inject_code),
    ("no-binding-cookie", without_binding_cookie),
    ("binding-cookie-renamed", binding_cookie_renamed),
    ("no-state", without_state),
    ("no-code", without_code),
    ("mix-up-other-provider", other_provider),
    ("unknown-provider", unknown_provider),
    ("error-with-code", error_with_code),
    ("duplicate-state", duplicate_state),
]


@pytest.mark.parametrize("case", params(Case(f"{fid}-{aid}", aid == "html", (forge, accept))
                                        for fid, forge in BROWSER_FORGERIES for aid, accept in ACCEPTS.items()))
def test_a_forged_callback_never_makes_a_session(oidc_stack: OidcStack, tally: Tally, case: Case) -> None:
    forge, accept = case.data
    secrets = [oidc_stack.client_secret]
    verdict = Verdict(case.id, KLASS)
    refused_without_session(verdict, forge(oidc_stack, verdict, secrets, accept))
    tally.secrets.update(oidc_stack.secrets_seen)
    tally.conclude(verdict)


def test_control_a_clean_sign_in_makes_a_session(oidc_stack: OidcStack, tally: Tally) -> None:
    secrets = [oidc_stack.client_secret]
    verdict = Verdict("control-clean-sign-in", KLASS)
    signed_in(oidc_stack, verdict, secrets, ACCEPTS["html"])
    tally.secrets.update(oidc_stack.secrets_seen)
    tally.conclude(verdict)
