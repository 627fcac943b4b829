"""gateway.admin against a real SQLite store: enrolment, lookup, unenrolment, token minting and revocation."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from gateway import admin, tokens
from gateway.errors import StoreUnavailable
from gateway.models import SessionRecord
from gateway.settings import Settings
from gateway.store.base import BlockKey, Store
from tests.helpers import make_settings, store_for

NOW = 1_900_000_000.0


@pytest.fixture
def settings(sqlite_url: str) -> Settings:
    return make_settings(database_url=sqlite_url)


@contextlib.asynccontextmanager
async def migrated(settings: Settings) -> AsyncIterator[Store]:
    """An open store on ``settings.database_url`` with the schema migrated, closed afterwards."""
    store = store_for(settings)
    await store.open()
    await store.migrate()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    async with migrated(settings) as opened:
        yield opened


async def test_check_database_reports_pending_migrations_until_migrated(settings: Settings) -> None:
    store = store_for(settings)
    await store.open()
    try:
        before = await admin.check_database(store)
        applied = await admin.apply_migrations(store)
        after = await admin.check_database(store)
        again = await admin.apply_migrations(store)
    finally:
        await store.close()
    assert before.pending_migrations and list(before.pending_migrations) == applied
    assert after.pending_migrations == ()
    assert again == []


async def test_check_database_raises_when_unreachable(tmp_path: Any) -> None:
    store = store_for(make_settings(database_url=f"sqlite:///{tmp_path}/missing/dir/gw.db"))
    await store.open()
    try:
        with pytest.raises(StoreUnavailable):
            await admin.check_database(store)
    finally:
        await store.close()


async def test_add_user_defaults_to_local_upstream_and_lower_cased_email_subject(store: Store) -> None:
    user = await admin.add_user(store, email="  Ada@Example.COM ", name="Ada", roles=["admin", "dev", "admin"])
    assert (user.upstream, user.subject, user.email) == ("local", "ada@example.com", "Ada@Example.COM")
    assert user.roles == ("admin", "dev")
    [event] = await store.list_audit(user_id=user.id)
    assert (event.event, event.actor, event.user_key) == ("user_add", "cli", "local:ada@example.com")


async def test_add_user_refuses_an_existing_key(store: Store) -> None:
    first = await admin.add_user(store, email="ada@example.com", roles=["admin"])
    with pytest.raises(admin.UserExists, match=f"id {first.id}"):
        await admin.add_user(store, email="ADA@example.com")
    [user] = await store.list_users()
    assert user.roles == ("admin",)  # untouched


@pytest.mark.parametrize(("email", "roles"), [
    pytest.param("not-an-email", [], id="no-at-sign"),
    pytest.param("ada @example.com", [], id="whitespace"),
    pytest.param("ada@example.com", ["ok", " "], id="blank-role"),
])
async def test_add_user_rejects_bad_input(store: Store, email: str, roles: list[str]) -> None:
    with pytest.raises(admin.InvalidInput):
        await admin.add_user(store, email=email, roles=roles)
    assert await store.list_users() == []


async def test_find_user_by_id_and_by_email(store: Store) -> None:
    user = await admin.add_user(store, email="ada@example.com")
    assert await admin.find_user(store, user_id=user.id) == user
    assert await admin.find_user(store, email=" ADA@example.com") == user
    with pytest.raises(admin.UnknownUser, match="id 999"):
        await admin.find_user(store, user_id=999)
    with pytest.raises(admin.UnknownUser, match=r"bob@example\.com"):
        await admin.find_user(store, email="bob@example.com")


async def test_find_user_with_shared_email_lists_every_id(store: Store) -> None:
    local = await admin.add_user(store, email="ada@example.com")
    github = await admin.add_user(store, email="ada@example.com", upstream="github", subject="1234")
    with pytest.raises(admin.AmbiguousEmail) as caught:
        await admin.find_user(store, email="ada@example.com")
    assert caught.value.user_ids == (local.id, github.id)
    assert f"{local.id}, {github.id}" in str(caught.value)


async def test_user_details_shows_active_sessions_and_recent_audit(store: Store, settings: Settings) -> None:
    minted = await admin.mint_api_token(store, settings.session, email="ada@example.com", now=time.time())
    old = await admin.mint_api_token(store, settings.session, email="ada@example.com", now=time.time())
    await admin.revoke_token(store, old.token)
    details = await admin.user_details(store, minted.user)
    assert [s.token_hash for s in details.sessions] == [minted.session.token_hash]
    assert [a.event for a in details.audit][-2:] == ["token_mint", "user_add"]
    limited = await admin.user_details(store, minted.user, audit_limit=1)
    assert len(limited.audit) == 1


async def test_delete_user_revokes_sessions_and_keeps_audit(store: Store, settings: Settings) -> None:
    minted = await admin.mint_api_token(store, settings.session, email="ada@example.com", now=time.time())
    await admin.delete_user(store, minted.user)
    assert await store.get_user(minted.user.id) is None
    found = await store.lookup_session(minted.session.token_hash)
    assert found is None or not found.session.is_active(time.time())
    events = [a.event for a in await store.list_audit() if a.user_key == "local:ada@example.com"]
    assert "token_mint" in events and "user_add" in events
    with pytest.raises(admin.UnknownUser):
        await admin.delete_user(store, minted.user)


async def test_mint_enrols_an_unknown_email_and_stores_only_the_hash(store: Store, settings: Settings) -> None:
    minted = await admin.mint_api_token(store, settings.session, email="Bot@Example.com", roles=["deploy"],
                                        name="CI bot", lifetime=3600, now=NOW)
    assert tokens.is_well_formed(minted.token)
    assert minted.user_created
    assert (minted.user.upstream, minted.user.subject, minted.user.name) == ("local", "bot@example.com", "CI bot")
    assert minted.user.roles == ("deploy",)
    found = await store.lookup_session(tokens.hash_token(minted.token))
    assert found is not None
    assert found.user.id == minted.user.id
    assert (found.session.kind, found.session.idle_timeout) == ("api", 0)
    assert found.session.expires_at == pytest.approx(NOW + 3600)
    assert found.session.is_active(NOW + 3599) and not found.session.is_active(NOW + 3600)

    mint_event = next(a for a in await store.list_audit(user_id=minted.user.id) if a.event == "token_mint")
    assert mint_event.actor == "cli"
    assert mint_event.detail["kind"] == "api"
    assert mint_event.detail["expires_at"] == admin.iso_time(NOW + 3600)
    assert mint_event.detail["session"] == minted.session.token_hash[:8]
    for event in await store.list_audit():
        assert minted.token not in repr(event)
        assert minted.token[len(tokens.TOKEN_PREFIX):] not in repr(event)


async def test_mint_defaults_to_the_api_token_lifetime(sqlite_url: str) -> None:
    settings = make_settings(database_url=sqlite_url, session__api_token_lifetime="3d")
    store = store_for(settings)
    await store.open()
    try:
        await store.migrate()
        minted = await admin.mint_api_token(store, settings.session, email="ada@example.com", now=NOW)
    finally:
        await store.close()
    assert minted.session.expires_at == pytest.approx(NOW + 3 * 86400)


async def test_mint_for_an_existing_user_needs_roles_they_hold(store: Store, settings: Settings) -> None:
    user = await admin.add_user(store, email="ada@example.com", roles=["admin", "dev"])
    minted = await admin.mint_api_token(store, settings.session, email="ada@example.com", roles=["dev"], now=NOW)
    assert minted.user == user and not minted.user_created
    with pytest.raises(admin.RoleNotHeld, match="ops"):
        await admin.mint_api_token(store, settings.session, email="ada@example.com", roles=["dev", "ops"], now=NOW)
    assert len(await store.list_sessions(user.id, now=NOW)) == 1


async def test_mint_by_unknown_id_does_not_enrol(store: Store, settings: Settings) -> None:
    with pytest.raises(admin.UnknownUser):
        await admin.mint_api_token(store, settings.session, user_id=42, now=NOW)
    assert await store.list_users() == []


async def test_mint_for_a_shared_email_is_ambiguous(store: Store, settings: Settings) -> None:
    await admin.add_user(store, email="ada@example.com")
    await admin.add_user(store, email="ada@example.com", upstream="github", subject="1")
    with pytest.raises(admin.AmbiguousEmail):
        await admin.mint_api_token(store, settings.session, email="ada@example.com", now=NOW)


class _AuditDown:
    """A real store whose audit log cannot be written (the database dropped mid-command)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def record_audit(self, event: str, **kwargs: Any) -> None:
        if event == "token_mint":
            raise StoreUnavailable("audit write failed")
        await self._store.record_audit(event, **kwargs)


async def test_mint_revokes_the_session_when_the_audit_row_fails(store: Store, settings: Settings) -> None:
    user = await admin.add_user(store, email="ada@example.com")
    with pytest.raises(StoreUnavailable):
        await admin.mint_api_token(cast(Store, _AuditDown(store)), settings.session, email="ada@example.com", now=NOW)
    [session] = await store.list_sessions(user.id, include_inactive=True, now=NOW)
    assert session.revoked_at is not None


async def test_revoke_token_by_hash(store: Store, settings: Settings) -> None:
    minted = await admin.mint_api_token(store, settings.session, email="ada@example.com", now=time.time())
    assert await admin.revoke_token(store, f"  {minted.token}\n") is True
    assert await admin.revoke_token(store, minted.token) is False
    assert await admin.revoke_token(store, tokens.mint_token()) is False
    revoke = next(a for a in await store.list_audit() if a.event not in {"user_add", "token_mint"})
    assert revoke.actor == "cli"


@pytest.mark.parametrize("text", [
    pytest.param("", id="empty"),
    pytest.param("gwt_short", id="short"),
    pytest.param("xyz_" + "a" * 43, id="wrong-prefix"),
    pytest.param("gwt_" + "é" * 43, id="non-ascii"),
])
async def test_revoke_token_rejects_malformed_text_without_echoing_it(store: Store, text: str) -> None:
    with pytest.raises(admin.MalformedToken) as caught:
        await admin.revoke_token(store, text)
    assert not text or text not in str(caught.value)


async def test_list_and_revoke_user_sessions(store: Store, settings: Settings) -> None:
    now = time.time()
    first = await admin.mint_api_token(store, settings.session, email="ada@example.com", now=now)
    second = await admin.mint_api_token(store, settings.session, email="ada@example.com", now=now + 1)
    user = first.user
    listed = await admin.list_sessions(store, user, now=now + 2)
    assert {s.token_hash for s in listed} == {first.session.token_hash, second.session.token_hash}
    assert await admin.revoke_user_sessions(store, user) == 2
    assert await admin.list_sessions(store, user) == []
    assert len(await admin.list_sessions(store, user, include_inactive=True)) == 2
    assert await admin.revoke_user_sessions(store, user) == 0


def _session(*, revoked_at: float | None = None, expires_at: float = NOW + 100,
             idle_expires_at: float | None = None) -> SessionRecord:
    return SessionRecord(token_hash="0" * 64, user_id=1, kind="browser", created_at=NOW - 10,
                         expires_at=expires_at, idle_timeout=60, last_seen_at=NOW - 10,
                         idle_expires_at=idle_expires_at, revoked_at=revoked_at, client_addr="", user_agent="")


@pytest.mark.parametrize(("session", "state"), [
    pytest.param(_session(), "active", id="active"),
    pytest.param(_session(idle_expires_at=NOW + 1), "active", id="active-with-idle-deadline"),
    pytest.param(_session(revoked_at=NOW - 1, expires_at=NOW - 5), "revoked", id="revoked-wins"),
    pytest.param(_session(expires_at=NOW), "expired", id="expired"),
    pytest.param(_session(idle_expires_at=NOW), "idle", id="idle"),
])
def test_session_state(session: SessionRecord, state: str) -> None:
    assert admin.session_state(session, NOW) == state
    assert (state == "active") == session.is_active(NOW)


def test_short_hash_and_iso_time() -> None:
    assert admin.short_hash("abcdef0123456789" * 4) == "abcdef01"
    assert admin.iso_time(0) == "1970-01-01T00:00:00Z"


# -- unenrolment and blocks ---------------------------------------------------------------------------


async def test_delete_user_blocks_the_identity_by_default(store: Store, settings: Settings) -> None:
    minted = await admin.mint_api_token(store, settings.session, email="ada@example.com", now=time.time())
    await admin.delete_user(store, minted.user, reason="left")
    assert await store.is_blocked("local", "ada@example.com")
    events = await store.list_audit(user_id=minted.user.id)
    assert [(e.event, e.actor) for e in events[:3]] == [("user_block", "cli"), ("user_delete", "cli"),
                                                        ("revoke", "cli")]
    assert events[0].detail == {"reason": "left", "sessions": "1"}
    # nothing here enrols them again behind the block, and the message says how to lift it
    with pytest.raises(admin.Blocked, match=r"gateway users unblock --key local:ada@example\.com"):
        await admin.add_user(store, email="ada@example.com")
    with pytest.raises(admin.Blocked, match=r"gateway users unblock --key local:ada@example\.com"):
        await admin.mint_api_token(store, settings.session, email="ada@example.com", now=NOW)
    assert await store.list_users() == []
    assert await admin.unblock_subject(store, admin.identity_key("local:ada@example.com"))
    assert (await admin.add_user(store, email="ada@example.com")).id != minted.user.id


async def test_delete_user_may_allow_the_user_back(store: Store) -> None:
    user = await admin.add_user(store, email="ada@example.com")
    await admin.delete_user(store, user, block=False)
    assert await store.list_blocked_subjects() == []
    assert "user_block" not in [e.event for e in await store.list_audit()]
    assert (await admin.add_user(store, email="ada@example.com")).id != user.id


async def test_block_keeps_the_user_but_revokes_and_refuses_tokens(store: Store, settings: Settings) -> None:
    minted = await admin.mint_api_token(store, settings.session, email="ada@example.com", now=time.time())
    user = minted.user
    other = await admin.add_user(store, email="bob@example.com")
    outcome = await admin.block_subject(store, admin.identity_key(admin.user_key(user)), reason=" offboarded ")
    assert (outcome.created, outcome.sessions_revoked) == (True, 1)
    found = await store.lookup_session(minted.session.token_hash)
    assert found is not None and found.session.revoked_at is not None
    assert await store.get_user(user.id) == user
    assert (await admin.user_details(store, user)).blocked
    assert not (await admin.user_details(store, other)).blocked
    assert await admin.blocked_user_ids(store, await store.list_users()) == {user.id}
    with pytest.raises(admin.Blocked):
        await admin.mint_api_token(store, settings.session, user_id=user.id, now=NOW)
    (block,) = await admin.list_blocked_subjects(store)
    assert (str(block.key), block.actor, block.reason) == ("local:ada@example.com", "cli", "offboarded")
    again = await admin.block_subject(store, block.key)
    assert not again.created

    assert await admin.unblock_subject(store, block.key) is True
    assert await admin.unblock_subject(store, block.key) is False
    assert (await admin.mint_api_token(store, settings.session, user_id=user.id, now=NOW)).user == user


async def test_an_email_block_refuses_every_identity_with_that_email(store: Store, settings: Settings) -> None:
    github = await admin.add_user(store, email="carol@example.com", upstream="github", subject="99")
    outcome = await admin.block_subject(store, admin.email_key(" Carol@Example.com "))
    assert outcome.created
    assert await admin.blocked_user_ids(store, [github]) == {github.id}
    with pytest.raises(admin.Blocked, match=r"unblock --email carol@example\.com"):
        await admin.add_user(store, email="CAROL@example.com")
    with pytest.raises(admin.Blocked):
        await admin.mint_api_token(store, settings.session, user_id=github.id, now=NOW)
    assert await admin.unblock_subject(store, admin.email_key("carol@example.com"))
    await admin.add_user(store, email="carol@example.com")


@pytest.mark.parametrize(("text", "upstream", "subject"), [
    pytest.param("corp:8f14e45f", "corp", "8f14e45f", id="plain"),
    pytest.param(" github:583231 ", "github", "583231", id="spaces"),
    pytest.param("auth0:google-oauth2|1234:5", "auth0", "google-oauth2|1234:5", id="colon-in-subject"),
])
def test_identity_key(text: str, upstream: str, subject: str) -> None:
    assert admin.identity_key(text) == BlockKey.for_identity(upstream, subject)


@pytest.mark.parametrize("text", ["", "corp", ":abc", "corp:", " : "])
def test_identity_key_rejects_malformed_text(text: str) -> None:
    with pytest.raises(admin.InvalidInput):
        admin.identity_key(text)


async def test_block_rejects_bad_input(store: Store) -> None:
    with pytest.raises(admin.InvalidInput):
        admin.email_key("not an email")
    with pytest.raises(admin.InvalidInput):
        await admin.block_subject(store, admin.identity_key("corp:x"), reason="r" * 513)
    with pytest.raises(admin.InvalidInput):
        await admin.block_subject(store, BlockKey.for_identity("corp", "x" * 1025))
    assert await store.list_blocked_subjects() == []


# -- one session by its id, everyone's sessions, roles (on both backends) --------------------------------


@pytest.fixture(params=[pytest.param("sqlite", id="sqlite"),
                        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)])
async def any_store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    async with migrated(make_settings(database_url=str(request.getfixturevalue(f"{request.param}_url")))) as opened:
        yield opened


async def test_revoke_session_by_id(any_store: Store, settings: Settings) -> None:
    store = any_store
    first = await admin.mint_api_token(store, settings.session, email="ada@example.com", now=time.time())
    second = await admin.mint_api_token(store, settings.session, email="ada@example.com", now=time.time())
    bob = await admin.add_user(store, email="bob@example.com")
    short = admin.short_hash(first.session.token_hash)
    with pytest.raises(admin.UnknownSession, match=f"no active session of user {bob.id} with id {short}"):
        await admin.revoke_session_by_id(store, short, user=bob)
    assert await admin.revoke_session_by_id(store, f" {short.upper()}\n", user=first.user) == short
    assert [s.token_hash for s in await admin.list_sessions(store, first.user)] == [second.session.token_hash]
    with pytest.raises(admin.UnknownSession):
        await admin.revoke_session_by_id(store, short)
    for malformed in ("1234567", "zzzzzzzz", ""):
        with pytest.raises(admin.InvalidInput, match="8 to 64 lower-case hex digits"):
            await admin.revoke_session_by_id(store, malformed)


async def test_revoke_all_sessions(any_store: Store, settings: Settings) -> None:
    store = any_store
    for email in ("ada@example.com", "bob@example.com", "ada@example.com"):
        await admin.mint_api_token(store, settings.session, email=email, now=time.time())
    assert await admin.revoke_all_sessions(store) == 3
    for user in await store.list_users():
        assert await admin.list_sessions(store, user) == []
    [audit] = [a for a in await store.list_audit() if a.event == "revoke_all"]
    assert (audit.actor, audit.detail["reason"], audit.detail["sessions"]) == ("cli", admin.REVOKE_ALL_REASON, "3")
    assert await admin.revoke_all_sessions(store) == 0


async def test_change_roles(any_store: Store, settings: Settings) -> None:
    store = any_store
    user = await admin.add_user(store, email="ada@example.com", roles=["dev"])
    minted = await admin.mint_api_token(store, settings.session, user_id=user.id, now=time.time())
    added = await admin.change_roles(store, user, add=["admin", "dev", " ops "])
    assert added.roles == ("dev", "admin", "ops")
    assert (await admin.change_roles(store, added, remove=["dev", "nope"])).roles == ("admin", "ops")
    assert (await admin.change_roles(store, added, replace=["viewer"])).roles == ("viewer",)
    assert (await store.get_user(user.id)) == await admin.find_user(store, user_id=user.id)
    assert (await admin.find_user(store, user_id=user.id)).roles == ("viewer",)
    # nothing revoked: the token lives on, and now carries the new roles
    found = await store.lookup_session(minted.session.token_hash)
    assert found is not None and found.session.revoked_at is None and found.user.roles == ("viewer",)
    for bad in (["has space"], ["a,b"], [""], ["tab\there"]):
        with pytest.raises(admin.InvalidInput):
            await admin.change_roles(store, user, replace=bad)
    assert (await admin.find_user(store, user_id=user.id)).roles == ("viewer",)
    await admin.delete_user(store, user)
    with pytest.raises(admin.UnknownUser):
        await admin.change_roles(store, user, add=["x"])
