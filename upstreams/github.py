"""GitHub (and GitHub Enterprise) login: OAuth 2 web flow with PKCE, then the REST API for the user.

GitHub is OAuth 2 without OIDC: there is no ID token to verify, so the identity comes from API calls
made with the fresh access token, which is then dropped (the gateway mints its own session):

- ``GET /user`` gives the numeric ``id`` (the subject: logins can be renamed and emails change hands),
  the ``login`` and the display ``name``. Its ``email`` is the *public* email, null when private and
  never proof of anything, so it is ignored.
- ``GET /user/emails`` (scope ``user:email``) gives every address with ``primary`` and ``verified``
  flags. The primary verified address wins, else any verified one (preferring a real address over a
  ``users.noreply`` one); without one the identity carries ``email=""`` and ``email_verified=False``
  and the gateway's enrolment policy decides.
- ``GET /user/orgs`` and ``GET /user/teams`` (scope ``read:org``) give groups ``org`` and
  ``org/team-slug``, fetched only when ``orgs``/``teams`` restrict who may log in or ``fetch_groups``
  asks for them. Organisations that restrict OAuth app access hide their memberships from apps they have
  not approved: such a user is treated as a non-member (fail closed).

``orgs`` and ``teams`` are one allow-list: a user passes by being in *any* listed organisation or *any*
listed team (compared case-insensitively, as GitHub treats logins and slugs).

Refresh (:meth:`GitHubProvider.refresh`, the ``Refreshing`` protocol): OAuth Apps' tokens do not expire and
come without a refresh token; GitHub Apps with expiring user tokens also return ``refresh_token`` from the
token URL, kept in ``Identity.refresh_token``. A refresh POSTs it there (``grant_type=refresh_token``, the
client id and secret), then reads the user, emails, orgs and teams with the new access token exactly as a
sign-in does: the user id must be the same, and a user no longer in an allowed org/team is ACCESS_DENIED.
GitHub answers refusals as HTTP 200 with an ``error`` (``bad_refresh_token`` when expired, revoked or
already used: GitHub rotates refresh tokens at every use), read as ACCESS_DENIED (``bad_refresh_token``)
or INVALID (any other code), except the app's own credentials refused (``incorrect_client_credentials``,
``unauthorized_client``: a configuration problem, not the user's); those and a slow, unreachable or 5xx
GitHub are UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri  # type: ignore[import-untyped]
from authlib.oauth2.rfc7636 import create_s256_code_challenge  # type: ignore[import-untyped]
from yarl import URL

from upstreams.base import (
    DEFAULT_TIMEOUT,
    Callback,
    FailureReason,
    Identity,
    LoginSecrets,
    Provider,
    ProviderError,
    Refreshed,
    config_keys,
    config_list,
    config_str,
    require_keys,
    timeout_from,
    timeout_problems,
    unknown_key_problems,
    url_problem,
)

GITHUB_URL = "https://github.com"
GITHUB_API_URL = "https://api.github.com"
DEFAULT_SCOPES = ("read:user", "user:email")
ORG_SCOPES = frozenset({"read:org", "write:org", "admin:org"})
"""Any of these lets the token list the user's organisations and teams."""
EMAIL_SCOPES = frozenset({"user:email", "user"})
API_VERSION = "2022-11-28"
PER_PAGE = 100
MAX_PAGES = 10
"""Pages followed per list (1,000 items): a bound on work, not a limit real users reach."""
MAX_BODY = 1 << 20
"""Largest answer read from GitHub; anything bigger is treated as a broken upstream."""

_ORG_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")
_TEAM_SLUG_RE = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")
_ERROR_CODE_RE = re.compile(r"^[a-z_]{1,64}$")
_NOREPLY_SUFFIX = "users.noreply.github.com"
_USER_CLAIMS = ("id", "node_id", "login", "name", "avatar_url", "html_url", "type")
"""The parts of ``/user`` kept as claims (not its public ``email``, which proves nothing)."""


@dataclass(frozen=True, slots=True)
class GitHubSettings:
    """A validated ``type = "github"`` table (see :meth:`GitHubProvider.parse_config`).

    Each field is read from the config key of the same name; these fields and ``type`` are the only keys
    the table may hold (:meth:`GitHubProvider.config_keys`), so a misspelt ``orgs`` is reported, not ignored.
    """

    client_id: str
    """The OAuth app's client id."""
    client_secret: str
    """The OAuth app's client secret (pass it as ``GATEWAY_UPSTREAMS_<NAME>_CLIENT_SECRET[_FILE]``)."""
    display_name: str = "GitHub"
    """The label of this upstream's button on the sign-in page."""
    base_url: str = GITHUB_URL
    """GitHub's web URL: ``https://github.com``, or a GitHub Enterprise server's."""
    api_url: str = GITHUB_API_URL
    """Defaults to ``https://api.github.com`` for github.com, else ``{base_url}/api/v3`` (GHE Server)."""
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    """Scopes requested; must include ``user:email`` (``read:org`` is added when groups are needed)."""
    orgs: tuple[str, ...] = ()
    """Admit only members of these organisations (or of ``teams``)."""
    teams: tuple[str, ...] = ()
    """Admit only members of these teams, ``org/team-slug`` (or of ``orgs``)."""
    fetch_groups: bool = False
    """Fetch the user's organisations and teams as groups even when ``orgs`` and ``teams`` are empty."""
    timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT
    """Seconds any one call to GitHub may take (at most 300)."""
    allow_insecure_http: bool = False
    """Permit plain http ``base_url``/``api_url`` (tests and local development); checked at validation."""


class GitHubProvider:
    """One GitHub or GitHub Enterprise OAuth app (config ``type = "github"``)."""

    type_name: ClassVar[str] = "github"
    issues_bearer_jwts: ClassVar[bool] = False  # GitHub tokens are opaque

    def __init__(self, *, name: str, display_name: str, client_id: str, client_secret: str,
                 base_url: str, api_url: str, scopes: Sequence[str], orgs: Sequence[str],
                 teams: Sequence[str], fetch_groups: bool, timeout: aiohttp.ClientTimeout,
                 http: aiohttp.ClientSession) -> None:
        self.name = name
        self.display_name = display_name
        self._client_id = client_id
        self._client_secret = client_secret
        self._base_url = base_url.rstrip("/")
        self._api_url = URL(api_url.rstrip("/"))
        self._orgs = frozenset(o.casefold() for o in orgs)
        self._teams = frozenset(t.casefold() for t in teams)
        self._fetch_groups = fetch_groups or bool(orgs) or bool(teams)
        scope_list = list(dict.fromkeys(scopes))
        if self._fetch_groups and not ORG_SCOPES.intersection(scope_list):
            scope_list.append("read:org")
        self.scopes: tuple[str, ...] = tuple(scope_list)
        self._timeout = timeout
        self._http = http

    def __repr__(self) -> str:
        return f"GitHubProvider(name={self.name!r}, base_url={self._base_url!r})"

    # ---- ProviderFactory ------------------------------------------------------------------------------

    @classmethod
    def config_keys(cls) -> frozenset[str]:
        """``type`` and the fields of :class:`GitHubSettings`."""
        return config_keys(GitHubSettings)

    @classmethod
    def config_problems(cls, name: str, config: Mapping[str, Any]) -> list[str]:
        """Every problem with a ``type = "github"`` table, each prefixed ``upstreams.<name>``; unknown keys
        come with a did-you-mean suggestion."""
        prefix = f"upstreams.{name}"
        problems = require_keys(name, config, ("client_id", "client_secret"))
        problems += unknown_key_problems(name, config, cls.config_keys())
        if "display_name" in config and not isinstance(config["display_name"], str):
            problems.append(f"{prefix}.display_name: expected a string")
        insecure_ok = config.get("allow_insecure_http") is True
        for key in ("base_url", "api_url"):
            if key in config:
                problem = url_problem(config[key], insecure_ok=insecure_ok)
                if problem:
                    problems.append(f"{prefix}.{key}: {problem}")
        if "scopes" in config:
            scopes = config["scopes"]
            if not _is_str_list(scopes) or any(not s or any(c.isspace() for c in s) for s in scopes):
                problems.append(f"{prefix}.scopes: expected a list of scope names without spaces")
            elif not EMAIL_SCOPES.intersection(scopes):
                problems.append(f"{prefix}.scopes: must include user:email (or user) to read verified emails")
        if "orgs" in config:
            orgs = config["orgs"]
            if not _is_str_list(orgs) or any(not _ORG_RE.match(o) for o in orgs):
                problems.append(f"{prefix}.orgs: expected a list of organisation logins (like \"acme\")")
        if "teams" in config:
            teams = config["teams"]
            if not _is_str_list(teams) or any(not _valid_team(t) for t in teams):
                problems.append(f"{prefix}.teams: expected a list of \"org/team-slug\" names")
        for key in ("fetch_groups", "allow_insecure_http"):
            if key in config and not isinstance(config[key], bool):
                problems.append(f"{prefix}.{key}: expected true or false")
        if "timeout" in config:
            problems += timeout_problems(prefix, config["timeout"])
        return problems

    @classmethod
    def parse_config(cls, config: Mapping[str, Any]) -> GitHubSettings:
        """Settings from a table :meth:`config_problems` accepted, defaults applied.

        ``api_url`` defaults to ``https://api.github.com`` for github.com and to ``{base_url}/api/v3``
        for a GitHub Enterprise Server ``base_url`` (GHE.com data residency needs it set explicitly).
        """
        base_url = config_str(config, "base_url", GITHUB_URL).rstrip("/")
        default_api = GITHUB_API_URL if base_url == GITHUB_URL else f"{base_url}/api/v3"
        return GitHubSettings(
            client_id=config_str(config, "client_id"),
            client_secret=config_str(config, "client_secret"),
            display_name=config_str(config, "display_name", "GitHub"),
            base_url=base_url,
            api_url=config_str(config, "api_url", default_api),
            scopes=config_list(config, "scopes") if "scopes" in config else DEFAULT_SCOPES,
            orgs=config_list(config, "orgs"),
            teams=config_list(config, "teams"),
            fetch_groups=config.get("fetch_groups") is True,
            timeout=timeout_from(config),
            allow_insecure_http=config.get("allow_insecure_http") is True,
        )

    @classmethod
    def from_config(cls, name: str, config: Mapping[str, Any], http: aiohttp.ClientSession) -> Provider:
        """Build from a table :meth:`config_problems` accepted (see :meth:`parse_config`)."""
        settings = cls.parse_config(config)
        return cls(
            name=name,
            display_name=settings.display_name,
            client_id=settings.client_id,
            client_secret=settings.client_secret,
            base_url=settings.base_url,
            api_url=settings.api_url,
            scopes=settings.scopes,
            orgs=settings.orgs,
            teams=settings.teams,
            fetch_groups=settings.fetch_groups,
            timeout=settings.timeout,
            http=http,
        )

    # ---- Provider -------------------------------------------------------------------------------------

    async def authorization_url(self, *, redirect_uri: str, secrets: LoginSecrets) -> str:
        """``{base_url}/login/oauth/authorize`` with state and an S256 PKCE challenge (GitHub has no nonce)."""
        challenge = str(create_s256_code_challenge(secrets.code_verifier))
        return str(prepare_grant_uri(
            f"{self._base_url}/login/oauth/authorize", self._client_id, "code",
            redirect_uri=redirect_uri, scope=list(self.scopes), state=secrets.state,
            code_challenge=challenge, code_challenge_method="S256",
        ))

    async def redeem(self, *, callback: Callback, redirect_uri: str, secrets: LoginSecrets) -> Identity:
        """Exchange the code (with the PKCE verifier), read the user, enforce ``orgs``/``teams``.

        Raises ProviderError: ACCESS_DENIED when the user declined or is in no allowed org/team,
        INVALID when GitHub rejects the code or the token, UNAVAILABLE when GitHub is slow, down,
        rate-limited or answers something unexpected.
        """
        params = callback.params
        error = params.get("error")
        if error is not None:
            if error == "access_denied":
                raise ProviderError(FailureReason.ACCESS_DENIED, "access was declined on GitHub")
            raise ProviderError(FailureReason.INVALID, f"GitHub refused the login ({_error_code(error)})")
        iss = params.get("iss")
        if iss is not None and iss.rstrip("/") not in (self._base_url, f"{self._base_url}/login/oauth"):
            raise ProviderError(FailureReason.INVALID, "the callback names another issuer")
        code = params.get("code", "")
        if not code or len(code) > 512:
            raise ProviderError(FailureReason.INVALID, "GitHub sent no authorization code")

        token, refresh_token = await self._exchange_code(code, redirect_uri, secrets.code_verifier)
        return await self._read_identity(token, refresh_token=refresh_token)

    async def refresh(self, refresh_token: str, *, subject: str) -> Refreshed:
        """Redeem a GitHub App user refresh token and re-read the user as :meth:`redeem` does (``Refreshing``).

        Raises ProviderError: ACCESS_DENIED when GitHub refuses the refresh token (``bad_refresh_token``:
        expired, revoked or already used) or the user is no longer in an allowed org/team; INVALID for
        another refusal (client credentials...) or when the token belongs to another user than ``subject``;
        UNAVAILABLE when GitHub is slow, down, rate-limited or answers something unexpected.
        """
        form = {"client_id": self._client_id, "client_secret": self._client_secret,
                "grant_type": "refresh_token", "refresh_token": refresh_token}
        token, rotated = await self._token_request(form, refused=_refresh_refusal)
        next_token = rotated or refresh_token
        identity = await self._read_identity(token, refresh_token=next_token, subject=subject)
        return Refreshed(refresh_token=next_token, identity=identity)

    async def _read_identity(self, token: str, *, refresh_token: str, subject: str | None = None) -> Identity:
        """The user ``token`` belongs to: ``/user``, the verified email, orgs and teams when needed.

        Raises ProviderError: INVALID when ``subject`` is given and the token is another user's;
        ACCESS_DENIED when ``orgs``/``teams`` restrict sign-in and the user is in none of them; INVALID or
        UNAVAILABLE as the API calls fail (see :func:`_check_status`).
        """
        calls = [self._get_user(token), self._get_list(token, "user/emails", "emails")]
        if self._fetch_groups:
            calls += [self._get_list(token, "user/orgs", "organisations"),
                      self._get_list(token, "user/teams", "teams")]
        results = await _gather_all(calls)
        user: dict[str, Any] = results[0]
        emails: list[Any] = results[1]
        if subject is not None and str(user["id"]) != subject:
            raise ProviderError(FailureReason.INVALID, "GitHub's refreshed token belongs to another user")

        groups: tuple[str, ...] = ()
        if self._fetch_groups:
            groups = _groups(results[2], results[3])
            if (self._orgs or self._teams) and not self._admits(groups):
                raise ProviderError(FailureReason.ACCESS_DENIED, "not a member of an allowed organisation/team")

        email, verified = choose_email(emails)
        login: str = user["login"]
        name = user.get("name")
        claims: dict[str, Any] = {key: user[key] for key in _USER_CLAIMS if key in user}
        claims.update(email=email, email_verified=verified)
        return Identity(subject=str(user["id"]), email=email, email_verified=verified,
                        name=name if isinstance(name, str) and name else login, username=login,
                        groups=groups, claims=claims, refresh_token=refresh_token)

    async def logout_url(self, *, return_to: str, id_token: str) -> str | None:
        """None: GitHub has no end-session endpoint (signing out of GitHub is the user's business)."""
        return None

    async def verify_bearer(self, token: str) -> Identity | None:
        """None: GitHub tokens are opaque, and the hot path must not call GitHub."""
        return None

    # ---- internals ------------------------------------------------------------------------------------

    def _admits(self, groups: Sequence[str]) -> bool:
        folded = {g.casefold() for g in groups}
        return bool(folded & self._orgs) or bool(folded & self._teams)

    async def _exchange_code(self, code: str, redirect_uri: str, code_verifier: str) -> tuple[str, str]:
        """POST the code to GitHub's token endpoint; the access token and the refresh token ("" when none)."""
        form = {"client_id": self._client_id, "client_secret": self._client_secret, "code": code,
                "redirect_uri": redirect_uri, "code_verifier": code_verifier}
        return await self._token_request(form, refused=_code_refusal)

    async def _token_request(self, form: Mapping[str, str],
                             refused: Callable[[object], ProviderError]) -> tuple[str, str]:
        """One POST to the token URL: the bearer access token and the refresh token ("" when none).

        GitHub answers refusals with status 200 and an ``error`` field: ``refused`` maps its code to the
        ProviderError to raise. Anything that is not a JSON object is UNAVAILABLE.
        """
        data, _ = await self._call("POST", URL(f"{self._base_url}/login/oauth/access_token"), "token endpoint",
                                   headers={"Accept": "application/json"}, form=form)
        if not isinstance(data, dict):
            raise ProviderError(FailureReason.UNAVAILABLE, "GitHub's token endpoint answered unexpectedly")
        if "error" in data:
            raise refused(data["error"])
        token = data.get("access_token")
        if not isinstance(token, str) or not token:
            raise ProviderError(FailureReason.INVALID, "GitHub returned no access token")
        token_type = data.get("token_type", "bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise ProviderError(FailureReason.INVALID, "GitHub returned a token of an unexpected type")
        refresh_token = data.get("refresh_token")
        return token, refresh_token if isinstance(refresh_token, str) else ""

    async def _get_user(self, token: str) -> dict[str, Any]:
        data, _ = await self._call("GET", self._api_url / "user", "user API", headers=self._api_headers(token))
        if not isinstance(data, dict):
            raise ProviderError(FailureReason.UNAVAILABLE, "GitHub's user API answered unexpectedly")
        user_id, login = data.get("id"), data.get("login")
        if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id <= 0:
            raise ProviderError(FailureReason.UNAVAILABLE, "GitHub's user API gave no numeric id")
        if not isinstance(login, str) or not login:
            raise ProviderError(FailureReason.UNAVAILABLE, "GitHub's user API gave no login")
        return data

    async def _get_list(self, token: str, path: str, what: str) -> list[Any]:
        """Every item of a paginated API list, following ``Link: rel="next"`` up to :data:`MAX_PAGES`."""
        items: list[Any] = []
        url: URL | None = (self._api_url / path).with_query(per_page=PER_PAGE)
        for _ in range(MAX_PAGES):
            if url is None:
                break
            data, url = await self._call("GET", url, f"{what} API", headers=self._api_headers(token))
            if not isinstance(data, list):
                raise ProviderError(FailureReason.UNAVAILABLE, f"GitHub's {what} API answered unexpectedly")
            items.extend(data)
            if url is not None and not self._is_api_url(url):
                # The bearer token must never travel to a host the config did not name.
                raise ProviderError(FailureReason.UNAVAILABLE, f"GitHub's {what} API paginated off its host")
        return items

    def _is_api_url(self, url: URL) -> bool:
        api = self._api_url
        return (url.scheme, url.host, url.port) == (api.scheme, api.host, api.port) and \
            url.path.startswith(api.path.rstrip("/") + "/")

    def _api_headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": API_VERSION}

    async def _call(self, method: str, url: URL, what: str, *, headers: Mapping[str, str],
                    form: Mapping[str, str] | None = None) -> tuple[Any, URL | None]:
        """One bounded request: the decoded JSON and the ``rel="next"`` link, or ProviderError."""
        try:
            async with self._http.request(method, url, headers=headers, data=form, timeout=self._timeout,
                                          allow_redirects=False) as resp:
                _check_status(resp, what)
                body = await _read_limited(resp, what)
                next_link = resp.links.get("next")
                next_url = next_link.get("url") if next_link is not None else None
        except TimeoutError as exc:
            raise ProviderError(FailureReason.UNAVAILABLE, f"GitHub's {what} did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise ProviderError(FailureReason.UNAVAILABLE, f"GitHub's {what} could not be reached") from exc
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise ProviderError(FailureReason.UNAVAILABLE, f"GitHub's {what} did not answer with JSON") from exc
        return data, next_url if isinstance(next_url, URL) else None


def _code_refusal(error: object) -> ProviderError:
    """What GitHub's ``error`` on a code exchange means."""
    if error == "bad_verification_code":
        return ProviderError(FailureReason.INVALID, "GitHub rejected the authorization code "
                                                    "(expired, already used or not ours)")
    if error == "incorrect_client_credentials":
        return ProviderError(FailureReason.INVALID, "GitHub rejected the client credentials "
                                                    "(check client_id and client_secret)")
    return ProviderError(FailureReason.INVALID, f"GitHub refused the code exchange ({_error_code(error)})")


def _refresh_refusal(error: object) -> ProviderError:
    """What GitHub's ``error`` on a refresh means: the grant is gone, or the app is misconfigured."""
    if error == "bad_refresh_token":
        return ProviderError(FailureReason.ACCESS_DENIED, "GitHub refused the refresh token "
                                                          "(expired, revoked or already used)")
    if error in ("incorrect_client_credentials", "unauthorized_client"):
        # the app's own credentials, not the user: no session ends for a configuration problem
        return ProviderError(FailureReason.UNAVAILABLE, "GitHub rejected the client credentials at a refresh "
                                                        "(check client_id and client_secret)")
    return ProviderError(FailureReason.INVALID, f"GitHub refused the refresh ({_error_code(error)})")


def choose_email(emails: Sequence[Any]) -> tuple[str, bool]:
    """The address to trust from ``/user/emails``: primary and verified, else any verified one.

    Returns ``("", False)`` when no address is verified: an unverified address proves nothing.
    """
    verified = [e["email"].strip() for e in emails
                if isinstance(e, dict) and e.get("verified") is True and isinstance(e.get("email"), str)
                and e["email"].strip()]
    primary = [e["email"].strip() for e in emails
               if isinstance(e, dict) and e.get("primary") is True and e.get("verified") is True
               and isinstance(e.get("email"), str) and e["email"].strip()]
    if primary:
        return primary[0], True
    real = [e for e in verified if not e.lower().endswith(_NOREPLY_SUFFIX)]
    if real or verified:
        return (real or verified)[0], True
    return "", False


def _groups(orgs: Sequence[Any], teams: Sequence[Any]) -> tuple[str, ...]:
    """``org`` for each organisation and ``org/team-slug`` for each team, in GitHub's order, deduplicated."""
    names: list[str] = []
    for org in orgs:
        if isinstance(org, dict) and isinstance(org.get("login"), str) and org["login"]:
            names.append(org["login"])
    for team in teams:
        if not isinstance(team, dict):
            continue
        slug, organization = team.get("slug"), team.get("organization")
        if isinstance(slug, str) and slug and isinstance(organization, dict) \
                and isinstance(organization.get("login"), str) and organization["login"]:
            names.append(f"{organization['login']}/{slug}")
    return tuple(dict.fromkeys(names))


def _check_status(resp: aiohttp.ClientResponse, what: str) -> None:
    """Map a non-2xx status to ProviderError: 401/403 INVALID, rate limits and the rest UNAVAILABLE."""
    status = resp.status
    if 200 <= status < 300:
        return
    rate_limited = resp.headers.get("x-ratelimit-remaining") == "0" or "retry-after" in resp.headers
    if status == 429 or (status == 403 and rate_limited):
        raise ProviderError(FailureReason.UNAVAILABLE, f"GitHub's {what} is rate-limiting us; try again later")
    if status in (401, 403):
        raise ProviderError(FailureReason.INVALID, f"GitHub's {what} refused the request (HTTP {status})")
    raise ProviderError(FailureReason.UNAVAILABLE, f"GitHub's {what} answered HTTP {status}")


async def _read_limited(resp: aiohttp.ClientResponse, what: str) -> bytes:
    """The body, refusing more than :data:`MAX_BODY` bytes."""
    too_big = ProviderError(FailureReason.UNAVAILABLE, f"GitHub's {what} answered too much")
    if resp.content_length is not None and resp.content_length > MAX_BODY:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > MAX_BODY:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def _gather_all(calls: Sequence[Any]) -> list[Any]:
    """Run the calls concurrently; when any fails, wait for all (no stray tasks) and raise the first failure."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return list(results)


def _error_code(value: object) -> str:
    """An OAuth error code fit for a message: GitHub's own lower-case identifiers only."""
    return value if isinstance(value, str) and _ERROR_CODE_RE.match(value) else "unrecognised error"


def _is_str_list(value: object) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)


def _valid_team(value: str) -> bool:
    org, sep, slug = value.partition("/")
    return bool(sep) and bool(_ORG_RE.match(org)) and bool(_TEAM_SLUG_RE.match(slug))
