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

__all__ = [
    "BACKENDS",
    "BLOCK_LIMITS",
    "CLIENT_ADDR_MAX",
    "LOGIN_ATTEMPT_LIMITS",
    "SESSION_KINDS",
    "USER_AGENT_MAX",
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
    "Sessions",
    "Store",
    "Users",
    "WatchStateHandler",
    "config_problems",
    "make_store",
    "migration_scripts",
    "normalise_email",
    "revocation_retention",
]
