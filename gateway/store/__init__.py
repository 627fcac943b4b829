"""The session store's public names: the protocols by role, their records, the factory and its checks."""

from __future__ import annotations

from gateway.store.base import (
    Audit,
    Block,
    BlockKey,
    BlockOutcome,
    Device,
    LoggedRevocation,
    LoginState,
    LogoutTokenReused,
    ProviderLogout,
    ProviderLogouts,
    RevocationHandler,
    Revocations,
    Schema,
    SessionLookups,
    Sessions,
    Store,
    Users,
    WatchStateHandler,
    normalise_email,
)
from gateway.store.checks import BLOCK_LIMITS, CLIENT_ADDR_MAX, LOGIN_ATTEMPT_LIMITS, SESSION_KINDS, USER_AGENT_MAX
from gateway.store.factory import BACKENDS, config_problems, make_store
from gateway.store.revlog import revocation_retention
from gateway.store.schema import migration_scripts
from gateway.store.sessionsecrets import (
    SESSION_SECRET_MAX,
    SESSION_SECRET_PURPOSES,
    SessionSecretPurpose,
    SessionSecrets,
)
from gateway.store.tokensrole import API_TOKEN_ID_LENGTH, API_TOKEN_NAME_MAX, ApiToken, ApiTokens, TooManyApiTokens

__all__ = [
    "API_TOKEN_ID_LENGTH",
    "API_TOKEN_NAME_MAX",
    "BACKENDS",
    "BLOCK_LIMITS",
    "CLIENT_ADDR_MAX",
    "LOGIN_ATTEMPT_LIMITS",
    "SESSION_KINDS",
    "SESSION_SECRET_MAX",
    "SESSION_SECRET_PURPOSES",
    "USER_AGENT_MAX",
    "ApiToken",
    "ApiTokens",
    "Audit",
    "Block",
    "BlockKey",
    "BlockOutcome",
    "Device",
    "LoggedRevocation",
    "LoginState",
    "LogoutTokenReused",
    "ProviderLogout",
    "ProviderLogouts",
    "RevocationHandler",
    "Revocations",
    "Schema",
    "SessionLookups",
    "SessionSecretPurpose",
    "SessionSecrets",
    "Sessions",
    "Store",
    "TooManyApiTokens",
    "Users",
    "WatchStateHandler",
    "config_problems",
    "make_store",
    "migration_scripts",
    "normalise_email",
    "revocation_retention",
]
