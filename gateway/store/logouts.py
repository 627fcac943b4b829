"""What both backends share to end sessions for a back-channel logout: which sessions, and the audit rows."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from gateway.store.base import ProviderLogout


def revoking_condition(logout: ProviderLogout, mark: Callable[[str], str]) -> tuple[str, dict[str, str]]:
    """The SQL condition (on ``sessions``, unqualified) selecting the browser sessions ``logout`` names, and
    its parameters by name; ``mark(name)`` writes a backend's placeholder for the parameter ``name``.

    A subject is looked up by its user key ``(upstream, subject)``; a provider session needs no upstream
    test, as its hash already binds the upstream (:func:`gateway.sessions.provider_session_key`). Each
    part goes through an index: the users key, ``sessions_user_id``, the provider session index.
    """
    parts = ["kind = 'browser'"]
    params: dict[str, str] = {}
    if logout.subject:
        parts.append(f"user_id IN (SELECT id FROM users WHERE upstream = {mark('upstream')}"  # noqa: S608
                     f" AND subject = {mark('subject')})")
        params.update(upstream=logout.upstream, subject=logout.subject)
    if logout.provider_session:
        parts.append("token_hash IN (SELECT token_hash FROM provider_sessions"  # noqa: S608
                     f" WHERE provider_session = {mark('provider_session')})")
        params["provider_session"] = logout.provider_session
    return " AND ".join(parts), params


def audit_rows(logout: ProviderLogout, revoked_users: Sequence[int], keys: Mapping[int, str],
               reason: str) -> list[tuple[int | None, str, dict[str, str]]]:
    """The ``revoke`` audit rows of a back-channel logout as ``(user_id, user_key, detail)``: one per user
    whose sessions it revoked (``revoked_users`` holds one user id per revoked session; ``keys`` maps each to
    ``upstream:subject``), or one with a count of 0 when it revoked nothing."""
    detail = {"reason": reason, "upstream": logout.upstream}
    if logout.provider_session:
        detail["provider_session"] = logout.provider_session[:12]
    counts: dict[int, int] = {}
    for user_id in revoked_users:
        counts[user_id] = counts.get(user_id, 0) + 1
    if not counts:
        named = f"{logout.upstream}:{logout.subject}" if logout.subject else ""
        return [(None, named, {**detail, "sessions": "0"})]
    return [(user_id, keys.get(user_id, ""), {**detail, "sessions": str(count)})
            for user_id, count in counts.items()]
