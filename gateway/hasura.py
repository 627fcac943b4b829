"""Hasura auth-webhook answers: the session variables for an allowed session, per Hasura's contract.

Every value is a string; ``X-Hasura-Role`` is the one role picked for this request (Hasura ignores
allowed/default-role lists from webhooks); ``Cache-Control`` inside the body bounds how long Hasura keeps
a websocket alive on this answer and never exceeds the session's remaining life.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from gateway.errors import BadRequest
from gateway.models import ActiveSession, User
from gateway.settings import HasuraSettings

MAX_JSON_DEPTH = 32
USER_FIELDS = ("id", "email", "name", "username", "upstream", "subject", "roles", "groups")
"""The user fields ``hasura.session_variables`` may map a header to (see :func:`user_field`)."""
_HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9-]+$")


def hasura_problems(hasura: HasuraSettings) -> list[str]:
    """Problems with ``[hasura]``: a default role, session variables that are ``X-Hasura-*`` headers the
    gateway does not set itself and map to user fields, and a body limit a real request fits in."""
    problems: list[str] = []
    if not hasura.default_role:
        problems.append("hasura.default_role: must not be empty")
    for header, field_name in hasura.session_variables.items():
        if not header.lower().startswith("x-hasura-") or not _HEADER_NAME_RE.match(header):
            problems.append(f"hasura.session_variables: {header!r} must be a header name starting X-Hasura-")
        elif header.lower() in {"x-hasura-role", "x-hasura-user-id"}:
            problems.append(f"hasura.session_variables: {header!r} is set by the gateway itself")
        if field_name not in USER_FIELDS:
            problems.append(f"hasura.session_variables: {header!r} maps to unknown user field "
                            f"{field_name!r} (one of {', '.join(USER_FIELDS)})")
    if hasura.max_body_bytes < 1024:
        problems.append("hasura.max_body_bytes: must be at least 1024")
    return problems


def user_field(user: User, name: str) -> str:
    """One user field as Hasura wants it: a string; lists are Postgres array literals, ``{"a","b"}``."""
    value: Any = getattr(user, name)
    if isinstance(value, tuple):
        return postgres_array(value)
    return "" if value is None else str(value)


def postgres_array(items: tuple[str, ...]) -> str:
    """A Postgres array literal of text: every element double-quoted, ``\\`` and ``"`` backslash-escaped.

    Those two are the only escapes Postgres reads inside a quoted element; everything else (commas,
    braces, non-ASCII) stands as it is, so ``café`` stays ``café``.
    """
    return "{" + ",".join('"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"' for v in items) + "}"


def encode_variables(body: Mapping[str, str]) -> bytes:
    """``body``, an object of strings, as JSON bytes exactly like ``json.dumps(body).encode()``.

    A third of the cost of ``json.dumps``, whose set-up outweighs the work for a few short strings:
    every cache miss on the webhook renders one.
    """
    string = json.encoder.encode_basestring_ascii
    return ("{" + ", ".join([string(name) + ": " + string(value) for name, value in body.items()]) + "}").encode()


def session_variables(active: ActiveSession, role: str, settings: HasuraSettings, now: float) -> dict[str, str]:
    """The 200 body for an allowed session acting as ``role``."""
    user = active.user
    session = active.session
    body = {"X-Hasura-User-Id": str(user.id), "X-Hasura-Role": role}
    for header, field_name in settings.session_variables.items():
        body[header] = user_field(user, field_name)
    ends = session.expires_at
    if session.idle_expires_at is not None:
        ends = min(ends, session.idle_expires_at)
    body["Cache-Control"] = f"max-age={max(0, math.floor(ends - now))}"
    return body


def anonymous_variables(role: str) -> dict[str, str]:
    """The 200 body that admits a caller with no credentials as the anonymous role."""
    return {"X-Hasura-Role": role}


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of decoded JSON, giving up (returning > limit) once the limit is passed."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def parse_post_body(raw: bytes) -> dict[str, str]:
    """Decode a POST-mode webhook body and return the client's headers (string values only).

    Accepts ``{"headers": {...}, "request": <object | list | null>}``; raises BadRequest for invalid JSON,
    wrong types or excessive nesting. Header names are returned as sent; match them case-insensitively.
    """
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest("webhook body is not valid JSON") from exc
    if not isinstance(data, dict):
        raise BadRequest("webhook body must be a JSON object")
    if _depth(data, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise BadRequest("webhook body is nested too deeply")
    headers = data.get("headers")
    if headers is None:
        headers = {}
    if not isinstance(headers, dict):
        raise BadRequest("webhook body 'headers' must be an object")
    request = data.get("request")
    if request is not None and not isinstance(request, dict | list):
        raise BadRequest("webhook body 'request' must be an object, a list or null")
    out: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(value, str):
            raise BadRequest(f"webhook header {name[:64]!r} must be a string")
        out[name] = value
    return out


def header_lookup(headers: Mapping[str, str]) -> dict[str, list[str]]:
    """Index client headers by lower-cased name (Hasura forwards names in any case)."""
    index: dict[str, list[str]] = {}
    for name, value in headers.items():
        index.setdefault(name.lower(), []).append(value)
    return index
