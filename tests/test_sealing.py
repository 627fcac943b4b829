"""Sealing what a session keeps of its upstream: AES-256-GCM under configured keys, bound to session and purpose.

A value opens only with the key that sealed it (current or previous), only for the session and purpose it
was sealed for, and only untouched; anything else is a SealingError that repeats neither value nor key.
The keys are secrets: masked wherever settings are printed, readable from ``_FILE`` variables, and a
malformed one is a ``check-config`` problem that does not repeat it.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.sealing import KEY_BYTES, Sealer, SealingError, key_id, new_key, parse_key, sealing_problems
from gateway.settings import SECRET_SETTINGS, load_settings, redacted

ID_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyLWFkYSJ9.c2lnbmF0dXJl"
SESSION = hashlib.sha256(b"session").hexdigest()
OTHER_SESSION = hashlib.sha256(b"other").hexdigest()
ROOT = Path(__file__).resolve().parent.parent


def key() -> str:
    return new_key()


def sealer(current: str, previous: str = "") -> Sealer:
    made = Sealer.from_keys(current, previous)
    assert made is not None
    return made


def flip(sealed: str, index: int) -> str:
    """``sealed`` with one byte of its body (nonce, ciphertext or tag) changed."""
    head, _, body = sealed.rpartition(".")
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[index] ^= 0x01
    return f"{head}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"


def test_round_trip() -> None:
    box = sealer(key())
    sealed = box.seal(ID_TOKEN, token_hash=SESSION, purpose="id_token")
    assert box.open(sealed, token_hash=SESSION, purpose="id_token") == ID_TOKEN
    assert sealed.startswith("v1.") and sealed.isascii()
    # nothing of the token shows, and sealing twice gives two values (a fresh nonce each time)
    assert all(part not in sealed for part in ID_TOKEN.split("."))
    assert box.seal(ID_TOKEN, token_hash=SESSION, purpose="id_token") != sealed


def test_non_ascii_values_round_trip() -> None:
    box = sealer(key())
    assert box.open(box.seal("é\u2603", token_hash=SESSION, purpose="p"), token_hash=SESSION, purpose="p") == "é\u2603"


def test_rotation_opens_what_the_previous_key_sealed_and_seals_with_the_new_one() -> None:
    old, new = key(), key()
    before = sealer(old).seal(ID_TOKEN, token_hash=SESSION, purpose="id_token")
    rotated = sealer(new, previous=old)
    assert rotated.open(before, token_hash=SESSION, purpose="id_token") == ID_TOKEN
    after = rotated.seal(ID_TOKEN, token_hash=SESSION, purpose="id_token")
    assert after.split(".")[1] == key_id(parse_key(new)) != before.split(".")[1]
    # once the old key is dropped, what it sealed no longer opens; what the new one sealed still does
    done = sealer(new)
    assert done.open(after, token_hash=SESSION, purpose="id_token") == ID_TOKEN
    with pytest.raises(SealingError, match="no longer configured"):
        done.open(before, token_hash=SESSION, purpose="id_token")


def test_a_value_sealed_with_the_previous_key_alone_opens() -> None:
    """A rotation configured the other way round (the old key still current) loses nothing either."""
    old, new = key(), key()
    sealed = sealer(new).seal(ID_TOKEN, token_hash=SESSION, purpose="id_token")
    assert sealer(old, previous=new).open(sealed, token_hash=SESSION, purpose="id_token") == ID_TOKEN


def test_wrong_key() -> None:
    sealed = sealer(key()).seal(ID_TOKEN, token_hash=SESSION, purpose="id_token")
    with pytest.raises(SealingError) as caught:
        sealer(key()).open(sealed, token_hash=SESSION, purpose="id_token")
    assert sealed not in str(caught.value) and ID_TOKEN not in str(caught.value)


def test_a_forged_key_id_does_not_help() -> None:
    """Relabelling a value with the configured key's id still fails authentication (the id is bound too)."""
    mine, theirs = key(), key()
    sealed = sealer(theirs).seal(ID_TOKEN, token_hash=SESSION, purpose="id_token")
    relabelled = sealed.replace(sealed.split(".")[1], key_id(parse_key(mine)), 1)
    with pytest.raises(SealingError, match="does not authenticate"):
        sealer(mine).open(relabelled, token_hash=SESSION, purpose="id_token")


@pytest.mark.parametrize("index", [0, 11, 12, 20, -16, -1], ids=["nonce-first", "nonce-last", "ciphertext-first",
                                                                  "ciphertext", "tag-first", "tag-last"])
def test_a_tampered_byte(index: int) -> None:
    box = sealer(key())
    sealed = box.seal(ID_TOKEN, token_hash=SESSION, purpose="id_token")
    with pytest.raises(SealingError, match="does not authenticate"):
        box.open(flip(sealed, index), token_hash=SESSION, purpose="id_token")


@pytest.mark.parametrize(("token_hash", "purpose"), [
    pytest.param(OTHER_SESSION, "id_token", id="another-session"),
    pytest.param(SESSION, "refresh_token", id="another-purpose"),
    pytest.param(SESSION.upper(), "id_token", id="hash-spelt-otherwise"),
])
def test_wrong_associated_data(token_hash: str, purpose: str) -> None:
    """A sealed value copied to another session's row (or purpose) does not open there."""
    box = sealer(key())
    sealed = box.seal(ID_TOKEN, token_hash=SESSION, purpose="id_token")
    with pytest.raises(SealingError, match="does not authenticate"):
        box.open(sealed, token_hash=token_hash, purpose=purpose)


@pytest.mark.parametrize("garbage", [
    "", "v1", "v1..", "v2.0123abcd.AAAA", "v1.0123ABCD.AAAA", "v1.0123abcd.", "v1.0123abcd.A",
    "v1.0123abcd.AAAA", "v1.0123abcd.AAAA=", "v1.0123abcd.AA+A", "v1.0123abcd.AAAA.AAAA", ID_TOKEN,
    " v1.0123abcd.AAAA", "v1.0123abcd.AAAA\n",
])
def test_garbage_never_opens(garbage: str) -> None:
    box = sealer(key())
    with pytest.raises(SealingError):
        box.open(garbage, token_hash=SESSION, purpose="id_token")


def test_garbage_under_the_right_key_id() -> None:
    current = key()
    box, kid = sealer(current), key_id(parse_key(current))
    short = base64.urlsafe_b64encode(b"\0" * 27).rstrip(b"=").decode()  # shorter than nonce and tag
    random = base64.urlsafe_b64encode(secrets.token_bytes(64)).rstrip(b"=").decode()
    with pytest.raises(SealingError, match="not a sealed value"):
        box.open(f"v1.{kid}.{short}", token_hash=SESSION, purpose="id_token")
    with pytest.raises(SealingError, match="does not authenticate"):
        box.open(f"v1.{kid}.{random}", token_hash=SESSION, purpose="id_token")


# ---- keys -------------------------------------------------------------------------------------------------

def test_keys_in_every_spelling_parse() -> None:
    raw = secrets.token_bytes(KEY_BYTES)
    for text in (base64.urlsafe_b64encode(raw).decode(), base64.urlsafe_b64encode(raw).rstrip(b"=").decode(),
                 base64.b64encode(raw).decode(), f"  {base64.b64encode(raw).decode()}\n"):
        assert parse_key(text) == raw
    assert len(parse_key(new_key())) == KEY_BYTES


def test_no_key_no_sealer() -> None:
    assert Sealer.from_keys("") is None


@pytest.mark.parametrize(("current", "previous", "expected"), [
    pytest.param("", "", [], id="none"),
    pytest.param("KEY", "", [], id="current"),
    pytest.param("KEY", "KEY2", [], id="rotating"),
    pytest.param("c2hvcnQ=", "", ["session.sealing_key: decodes to 5 bytes, needs 32"], id="too-short"),
    pytest.param(base64.b64encode(b"x" * 48).decode(), "", ["session.sealing_key: decodes to 48 bytes, needs 32"],
                 id="too-long"),
    pytest.param("not base64 at all!", "", ["session.sealing_key: is not base64"], id="not-base64"),
    pytest.param("A" * 42 + "=" * 3, "", ["session.sealing_key: is not base64"], id="too-much-padding"),
    pytest.param("A", "", ["session.sealing_key: is not base64"], id="one-character"),
    pytest.param("KEY", "hunter2", ["session.sealing_key_previous: decodes to 5 bytes, needs 32"],
                 id="bad-previous"),
    pytest.param("", "KEY", ["session.sealing_key_previous: set only with session.sealing_key"],
                 id="previous-alone"),
])
def test_sealing_problems(current: str, previous: str, expected: list[str]) -> None:
    current, previous = current.replace("KEY2", new_key()), previous.replace("KEY2", new_key())
    current, previous = current.replace("KEY", new_key()), previous.replace("KEY", new_key())
    problems = sealing_problems(current, previous)
    assert len(problems) == len(expected)
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start), problem
        for value in (current, previous):
            assert not value or value not in problem  # a key is never repeated


# ---- keys as settings ---------------------------------------------------------------------------------------

def test_keys_are_secret_settings_read_from_files_and_masked(tmp_path: Path) -> None:
    current, previous = new_key(), new_key()
    (tmp_path / "key").write_text(current + "\n")
    (tmp_path / "previous").write_text(previous)
    settings, problems = load_settings(env={"GATEWAY_SESSION_SEALING_KEY_FILE": str(tmp_path / "key"),
                                            "GATEWAY_SESSION_SEALING_KEY_PREVIOUS_FILE": str(tmp_path / "previous")})
    assert problems == []
    assert (settings.session.sealing_key, settings.session.sealing_key_previous) == (current, previous)
    assert {"session.sealing_key", "session.sealing_key_previous"} <= SECRET_SETTINGS
    shown = redacted(settings)
    assert shown["session.sealing_key"] == shown["session.sealing_key_previous"] == "***"
    assert current not in str(shown) and previous not in str(shown)
    assert redacted(load_settings(env={})[0])["session.sealing_key"] == ""


def test_a_malformed_key_is_a_problem_of_load_settings() -> None:
    _, problems = load_settings(env={"GATEWAY_SESSION_SEALING_KEY": "hunter2-isnokey0"})
    assert problems == ["session.sealing_key: decodes to 12 bytes, needs 32 (base64 of 32 random bytes)"]


def run_check_config(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "check-config",
                           "--database-url", f"sqlite:///{tmp_path}/gateway.db"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, env={"PATH": "/usr/bin:/bin", **env}, check=False)


def test_check_config_masks_a_key_and_names_a_malformed_one_without_repeating_it(tmp_path: Path) -> None:
    current = new_key()
    (tmp_path / "key").write_text(current)
    ok = run_check_config(tmp_path, {"GATEWAY_SESSION_SEALING_KEY_FILE": str(tmp_path / "key")})
    assert ok.returncode == 0, ok.stderr
    assert 'session.sealing_key = "***"' in ok.stdout.splitlines()
    assert current not in ok.stdout + ok.stderr

    bad = current[:-8]
    refused = run_check_config(tmp_path, {"GATEWAY_SESSION_SEALING_KEY": bad,
                                          "GATEWAY_SESSION_SEALING_KEY_PREVIOUS": "%%%"})
    assert refused.returncode != 0
    output = refused.stdout + refused.stderr
    assert "session.sealing_key: decodes to" in output and "session.sealing_key_previous: is not base64" in output
    assert bad not in output
