"""The ``SessionSecrets`` role: what a session keeps of its upstream, sealed, with its purposes and limit.

It lives beside :mod:`gateway.store.base` (which composes it into ``Store``) and imports nothing of the
store, so the role, its backends (:mod:`gateway.store.pgsecrets`, :mod:`gateway.store.sqlitesecrets`) and
their checks (:mod:`gateway.store.secretschecks`) stay out of the other roles' way.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Literal, Protocol

SessionSecretPurpose = Literal["id_token", "refresh_token"]
"""What a session may keep a sealed secret for (a CHECK in both schemas)."""

SESSION_SECRET_PURPOSES: frozenset[str] = frozenset(typing.get_args(SessionSecretPurpose))
"""Every :data:`SessionSecretPurpose`."""

SESSION_SECRET_MAX = 32768
"""Longest sealed value a session keeps, in characters (a CHECK in both schemas): room for a sealed ID
token of the 16 KiB an OIDC upstream accepts."""


class SessionSecrets(Protocol):
    """What a session keeps for later calls to its upstream (the ID token, for the ``id_token_hint`` of
    RP-initiated logout; the refresh token, for the sliding renewal of ``session.refresh``), sealed by the
    caller (:mod:`gateway.sealing`): the store never sees one in clear. A kept value goes with its session:
    deleted with it, whatever deletes it. And the renewal a refresh token buys."""

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

    async def claim_session_secret(self, token_hash: str, purpose: SessionSecretPurpose, *, now: float,
                                   lease: float) -> str | None:
        """The sealed value kept under ``purpose``, claimed for ``lease`` seconds: None when there is none,
        when the session is revoked or expired at ``now``, or while another claim's lease runs (on any
        replica). Of concurrent claims at most one gets the value; a claim ends when :meth:`renew_session`
        stores the next value, or when its lease runs out (a claimant that failed or died)."""

    async def renew_session(self, token_hash: str, *, now: float, expires_at: float,
                            secrets: Mapping[SessionSecretPurpose, str], next_claim_at: float) -> bool:
        """Renew a session the upstream vouched for again, in one transaction: its absolute expiry becomes
        ``expires_at``, ``renewed_at`` becomes ``now``, the sealed ``secrets`` replace those kept under
        their purposes, every secret of the session may be claimed again from ``next_claim_at`` on (the
        next refresh's due time: a process that has not re-read the session yet cannot refresh it twice),
        and every process is told to forget the user's cached sessions (a revocation of the user on the
        feed: they re-read the new expiry and roles).

        False, changing nothing, when the session is revoked or has expired by ``now`` (a refresh never
        revives a session). Raises ValueError for a malformed hash or secret (as
        :meth:`keep_session_secret`).
        """
