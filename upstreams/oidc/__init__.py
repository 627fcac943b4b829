"""OpenID Connect upstream, split by concern as oauth2-proxy splits its OIDC code.

- :mod:`upstreams.oidc.config`: :class:`OIDCSettings`, config parsing and validation, presets' hooks;
- :mod:`upstreams.oidc.keys`: the discovery document and key set, fetched over aiohttp and cached;
- :mod:`upstreams.oidc.verify`: JWT verification (algorithm allow-list, signature, claims);
- :mod:`upstreams.oidc.tokens`: the token endpoint (authorization code and refresh token grants);
- :mod:`upstreams.oidc.provider`: :class:`OIDCProvider`, the flow itself (sign-in, refresh, logout).

Dependencies point one way: provider -> tokens -> verify -> keys -> config. The public names are re-exported here,
so ``from upstreams.oidc import OIDCProvider`` (and the registry's ``upstreams.oidc:OIDCProvider``) work.
"""

from __future__ import annotations

from upstreams.oidc.config import (
    CLIENT_AUTH_BASIC,
    CLIENT_AUTH_POST,
    DEFAULT_ALGORITHMS,
    DEFAULT_SCOPES,
    RESERVED_AUTH_PARAMS,
    SIGNING_ALGORITHMS,
    TOKEN_ENDPOINT_AUTH_METHODS,
    OIDCSettings,
    is_hostname,
)
from upstreams.oidc.keys import (
    DISCOVERY_TTL,
    JWKS_REFETCH_INTERVAL,
    JWKS_TTL,
    MAX_RESPONSE_BYTES,
    RETRY_AFTER_FAILURE,
    Discovery,
)
from upstreams.oidc.provider import MFA_AMR_VALUES, OIDCProvider, add_query
from upstreams.oidc.verify import MAX_TOKEN_CHARS

__all__ = ["CLIENT_AUTH_BASIC", "CLIENT_AUTH_POST", "DEFAULT_ALGORITHMS", "DEFAULT_SCOPES", "DISCOVERY_TTL",
           "JWKS_REFETCH_INTERVAL", "JWKS_TTL", "MAX_RESPONSE_BYTES", "MAX_TOKEN_CHARS", "MFA_AMR_VALUES",
           "RESERVED_AUTH_PARAMS", "RETRY_AFTER_FAILURE", "SIGNING_ALGORITHMS", "TOKEN_ENDPOINT_AUTH_METHODS",
           "Discovery", "OIDCProvider", "OIDCSettings", "add_query", "is_hostname"]
