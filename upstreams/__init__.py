"""Upstream identity providers behind one ``Provider`` interface, and the registry from config ``type``.

The registry maps each ``type`` to ``module:Class``; modules are imported on first use, so a
deployment loads only the providers it configures.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, cast

import aiohttp

from upstreams.base import Provider, ProviderFactory

PROVIDER_TYPES: Mapping[str, str] = MappingProxyType({
    "github": "upstreams.github:GitHubProvider",
    "oidc": "upstreams.oidc:OIDCProvider",
    "auth0": "upstreams.presets:Auth0Provider",
    "authing": "upstreams.presets:AuthingProvider",
    "cognito": "upstreams.presets:CognitoProvider",
    "google": "upstreams.presets:GoogleProvider",
    "keycloak": "upstreams.presets:KeycloakProvider",
    "vouch": "upstreams.vouch:VouchProvider",
    "dev": "upstreams.dev:DevProvider",
})
"""Config ``type`` -> implementing class."""


def provider_class(type_name: str) -> ProviderFactory:
    """The class for a config ``type``; raises KeyError for an unknown type."""
    module_name, _, class_name = PROVIDER_TYPES[type_name].partition(":")
    return cast(ProviderFactory, getattr(importlib.import_module(module_name), class_name))


def config_problems(name: str, config: Mapping[str, Any]) -> list[str]:
    """Every problem with the table ``[upstreams.<name>]``."""
    type_name = config.get("type")
    if not isinstance(type_name, str) or type_name not in PROVIDER_TYPES:
        return [f"upstreams.{name}.type: expected one of {', '.join(PROVIDER_TYPES)}, got {type_name!r}"]
    return provider_class(type_name).config_problems(name, config)


_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")


def upstreams_problems(tables: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every problem with the ``[upstreams.<name>]`` tables: each name (it appears in callback URLs and
    environment variables), then each table's own (:func:`config_problems`)."""
    problems: list[str] = []
    for name, table in tables.items():
        if not _NAME_RE.fullmatch(name):
            problems.append(f"upstreams.{name}: names are lower-case letters, digits and dashes")
            continue
        problems.extend(config_problems(name, table))
    return problems


def issues_bearer_jwts(type_name: object) -> bool:
    """True when upstreams of config ``type`` ``type_name`` issue JWTs the gateway can verify as bearer
    tokens; False for every other type, unknown ones included."""
    return isinstance(type_name, str) and type_name in PROVIDER_TYPES and provider_class(type_name).issues_bearer_jwts


def build_provider(name: str, config: Mapping[str, Any], http: aiohttp.ClientSession) -> Provider:
    """Build the provider for a validated ``[upstreams.<name>]`` table."""
    return provider_class(str(config["type"])).from_config(name, config, http)


__all__ = ["PROVIDER_TYPES", "Provider", "build_provider", "config_problems", "issues_bearer_jwts", "provider_class",
           "upstreams_problems"]
