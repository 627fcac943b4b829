"""The ``SessionSecrets`` role: what a session keeps of its upstream, sealed, with its purposes and limit.

It lives beside :mod:`gateway.store.base` (which composes it into ``Store``) and imports nothing of the
store, so the role, its backends (:mod:`gateway.store.pgsecrets`, :mod:`gateway.store.sqlitesecrets`) and
their checks (:mod:`gateway.store.secretschecks`) stay out of the other roles' way.
"""

from __future__ import annotations

import typing
from typing import Literal, Protocol

SessionSecretPurpose = Literal["id_token"]
"""What a session may keep a sealed secret for (a CHECK in both schemas)."""

SESSION_SECRET_PURPOSES: frozenset[str] = frozenset(typing.get_args(SessionSecretPurpose))
"""Every :data:`SessionSecretPurpose`."""

SESSION_SECRET_MAX = 32768
"""Longest sealed value a session keeps, in characters (a CHECK in both schemas): room for a sealed ID
token of the 16 KiB an OIDC upstream accepts."""


class SessionSecrets(Protocol):
    """What a session keeps for later calls to its upstream (today: the ID token, for the
    ``id_token_hint`` of RP-initiated logout), sealed by the caller (:mod:`gateway.sealing`): the store
    never sees one in clear. A kept value goes with its session: deleted with it, whatever deletes it."""

    async def keep_session_secret(self, token_hash: str, purpose: SessionSecretPurpose, sealed: str) -> None:
        """Keep ``sealed`` for the session ``token_hash`` under ``purpose``, replacing what it kept there.

        Raises ValueError for a malformed hash, an unknown purpose, or a sealed value that is empty, longer
        than :data:`SESSION_SECRET_MAX` or not printable ASCII; NotFound when no session has this hash.
        """

    async def session_secret(self, token_hash: str, purpose: SessionSecretPurpose) -> str | None:
        """The sealed value the session keeps under ``purpose``; None when there is none (also for a
        malformed hash or an unknown purpose)."""

    async def take_session_secret(self, token_hash: str, purpose: SessionSecretPurpose) -> str | None:
        """Like :meth:`session_secret`, and delete it in the same statement: a value meant to be used once
        (the ``id_token_hint`` at sign-out). Of concurrent calls for one value at most one gets it."""
