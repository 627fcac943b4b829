"""Sealing what a session keeps of its upstream (today the ID token): AES-256-GCM under a configured key.

A sealed value is ``v1.<key id>.<base64url(nonce, ciphertext and tag)>``: a random 96-bit nonce per value,
the key id naming which configured key sealed it (the first 8 hex digits of a hash of the key, so keys need
no names and rotation is moving the old key to ``session.sealing_key_previous``). The associated data binds
the value to the format version, the key id, what it is for (``purpose``) and the session it belongs to
(its token hash): a sealed value copied to another session's row, or to another purpose, does not open. A
database dump alone yields nothing usable; the key lives only in the configuration (a ``_FILE`` secret).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
"""A sealing key is 32 random bytes (AES-256)."""

NONCE_BYTES = 12
"""AES-GCM's 96-bit nonce, random per sealed value (a key seals far fewer than 2**32 values)."""

_VERSION = "v1"
_TAG_BYTES = 16
_KEY_TEXT_RE = re.compile(r"[A-Za-z0-9_+/-]+={0,2}")
_SEALED_RE = re.compile(r"v1\.([0-9a-f]{8})\.([A-Za-z0-9_-]+)")


class SealingError(Exception):
    """A sealed value that does not open: malformed, sealed with a key no longer configured, tampered
    with, or sealed for another session or purpose. Its message names which, never the value or a key."""


def parse_key(text: str) -> bytes:
    """The 32 bytes a configured key stands for: base64 (URL-safe or standard alphabet, padding optional)
    around surrounding whitespace. Raises ValueError saying what is wrong, never repeating the key."""
    text = text.strip()
    if not _KEY_TEXT_RE.fullmatch(text):
        raise ValueError("is not base64")
    unpadded = text.rstrip("=").replace("+", "-").replace("/", "_")
    try:
        key = base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("is not base64") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"decodes to {len(key)} bytes, needs {KEY_BYTES} (base64 of 32 random bytes)")
    return key


def new_key() -> str:
    """A fresh key as configuration takes it: URL-safe base64 of 32 random bytes."""
    return base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def key_id(key: bytes) -> str:
    """The id sealed values carry to name ``key``: 8 hex digits of a domain-separated SHA-256 of it."""
    return hashlib.sha256(b"gateway sealing key id\0" + key).hexdigest()[:8]


def sealing_problems(current: str, previous: str) -> list[str]:
    """Problems with ``session.sealing_key`` and ``session.sealing_key_previous`` (their values are never
    repeated): each must be a key :func:`parse_key` takes, and a previous key needs a current one."""
    problems: list[str] = []
    for name, text in (("session.sealing_key", current), ("session.sealing_key_previous", previous)):
        if text:
            try:
                parse_key(text)
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
    if previous and not current:
        problems.append("session.sealing_key_previous: set only with session.sealing_key (the key that "
                        "replaces it)")
    return problems


class Sealer:
    """Seals with the current key; opens what the current or the previous key sealed."""

    def __init__(self, current: bytes, previous: bytes | None = None) -> None:
        """``current`` and ``previous`` are raw 32-byte keys (:func:`parse_key`)."""
        if len(current) != KEY_BYTES or (previous is not None and len(previous) != KEY_BYTES):
            raise ValueError(f"a sealing key is {KEY_BYTES} bytes")
        self._current_id = key_id(current)
        self._current = AESGCM(current)
        self._keys = {self._current_id: self._current}
        if previous is not None:
            self._keys.setdefault(key_id(previous), AESGCM(previous))

    @classmethod
    def from_keys(cls, current: str, previous: str = "") -> Sealer | None:
        """A sealer for configured keys (as :func:`parse_key` takes them), or None when ``current`` is
        empty: nothing is sealed then. Raises ValueError for a malformed key (see :func:`sealing_problems`)."""
        if not current:
            return None
        return cls(parse_key(current), parse_key(previous) if previous else None)

    def seal(self, value: str, *, token_hash: str, purpose: str) -> str:
        """``value`` sealed with the current key for the session ``token_hash`` and ``purpose``."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._current.encrypt(nonce, value.encode("utf-8"),
                                       _associated(self._current_id, token_hash, purpose))
        body = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode()
        return f"{_VERSION}.{self._current_id}.{body}"

    def open(self, sealed: str, *, token_hash: str, purpose: str) -> str:
        """The value :meth:`seal` sealed for this ``token_hash`` and ``purpose``, with either key.

        Raises SealingError when ``sealed`` is malformed, names a key not configured, or fails
        authentication (tampered with, or sealed for another session or purpose).
        """
        match = _SEALED_RE.fullmatch(sealed)
        if match is None:
            raise SealingError("not a sealed value")
        kid, body = match.groups()
        aead = self._keys.get(kid)
        if aead is None:
            raise SealingError("sealed with a key that is no longer configured")
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            raise SealingError("not a sealed value") from None
        if len(raw) < NONCE_BYTES + _TAG_BYTES:
            raise SealingError("not a sealed value")
        try:
            plain = aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _associated(kid, token_hash, purpose))
        except InvalidTag:
            raise SealingError("does not authenticate: tampered with, or sealed for another session or "
                               "purpose") from None
        try:
            return plain.decode("utf-8")
        except UnicodeDecodeError:  # pragma: no cover - authenticated, so sealed by us from a str
            raise SealingError("not a sealed value") from None


def _associated(kid: str, token_hash: str, purpose: str) -> bytes:
    """What a sealed value is bound to besides its key: the format, key id, purpose and session."""
    return f"gateway sealed {_VERSION}\0{kid}\0{purpose}\0{token_hash}".encode()
