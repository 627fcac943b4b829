"""``dev``: a built-in sign-in form that accepts any email. For the quick start and local work only.

The gateway serves the form at ``/login/dev/<name>`` (next to ``/callback/<name>``); it submits the
email back to the callback together with the login attempt's ``state``, which the gateway verifies like
any other callback. Never active unless configured, and the gateway warns loudly at start-up.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlencode

import aiohttp

from upstreams.base import (
    Callback,
    FailureReason,
    Identity,
    LoginSecrets,
    Provider,
    ProviderError,
    config_keys,
    config_list,
    unknown_key_problems,
)

_EMAIL_RE = re.compile(r"[^@\s]{1,64}@[A-Za-z0-9.-]{1,190}\.[A-Za-z]{2,}")
_DEFAULT_DISPLAY_NAME = "Development sign-in"
_GROUP_RE = re.compile(r"[A-Za-z0-9_./:-]{1,64}")


@dataclass(frozen=True, slots=True)
class DevSettings:
    """A validated ``type = "dev"`` table; its fields and ``type`` are the only keys the table may hold."""

    display_name: str = _DEFAULT_DISPLAY_NAME
    """The label of this upstream's button on the sign-in page."""
    groups: tuple[str, ...] = ()
    """Given to everyone who signs in (the form may add more)."""


class DevProvider:
    """Signs in whoever types an email. ``groups`` (config) are given to everyone; the form may add more."""

    type_name: ClassVar[str] = "dev"
    issues_bearer_jwts: ClassVar[bool] = False  # dev sign-in issues no tokens

    def __init__(self, name: str, display_name: str, groups: tuple[str, ...]) -> None:
        self.name = name
        self.display_name = display_name
        self._groups = groups

    @classmethod
    def config_keys(cls) -> frozenset[str]:
        """``type`` and the fields of :class:`DevSettings`."""
        return config_keys(DevSettings)

    @classmethod
    def config_problems(cls, name: str, config: Mapping[str, Any]) -> list[str]:
        """Unknown keys (with a did-you-mean suggestion) and malformed groups."""
        problems = unknown_key_problems(name, config, cls.config_keys())
        groups = config.get("groups", [])
        if not isinstance(groups, list) or not all(isinstance(g, str) and _GROUP_RE.fullmatch(g) for g in groups):
            problems.append(f"upstreams.{name}.groups: expected a list of group names")
        return problems

    @classmethod
    def parse_config(cls, config: Mapping[str, Any]) -> DevSettings:
        """Settings from a table :meth:`config_problems` accepted, defaults applied."""
        return DevSettings(display_name=str(config.get("display_name") or _DEFAULT_DISPLAY_NAME),
                           groups=config_list(config, "groups"))

    @classmethod
    def from_config(cls, name: str, config: Mapping[str, Any], http: aiohttp.ClientSession) -> Provider:
        """Build from a validated table; ``http`` is unused (nothing is called)."""
        settings = cls.parse_config(config)
        return cls(name, settings.display_name, settings.groups)

    async def authorization_url(self, *, redirect_uri: str, secrets: LoginSecrets) -> str:
        """The gateway's own form, beside the callback: ``.../callback/<name>`` -> ``.../login/dev/<name>``."""
        base, sep, _ = redirect_uri.rpartition("/callback/")
        if not sep:
            base = redirect_uri.rsplit("/callback", 1)[0]
        return f"{base}/login/dev/{self.name}?" + urlencode({"state": secrets.state})

    async def redeem(self, *, callback: Callback, redirect_uri: str, secrets: LoginSecrets) -> Identity:
        """The submitted email becomes a verified identity; comma-separated ``groups`` are added."""
        email = callback.params.get("email", "").strip()
        if not _EMAIL_RE.fullmatch(email):
            raise ProviderError(FailureReason.INVALID, "enter an email address such as ada@example.com")
        extra = [g.strip() for g in callback.params.get("groups", "").split(",") if g.strip()]
        if not all(_GROUP_RE.fullmatch(g) for g in extra):
            raise ProviderError(FailureReason.INVALID, "group names are letters, digits and ._/:-")
        name = callback.params.get("name", "").strip()[:128]
        local = email.split("@", 1)[0]
        return Identity(subject=email.lower(), email=email, email_verified=True, name=name or local,
                        username=local, groups=tuple(dict.fromkeys((*self._groups, *extra))),
                        claims={"email": email, "groups": ",".join(extra)})

    async def logout_url(self, *, return_to: str, id_token: str) -> str | None:
        """No upstream session to end."""
        return None

    async def verify_bearer(self, token: str) -> Identity | None:
        """Dev issues no bearer tokens."""
        return None
