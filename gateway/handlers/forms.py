"""Reading the small bodies the gateway's own pages and scripts post: bounded by length, text fields only."""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.errors import BadRequest, PayloadTooLarge

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def refuse_longer(request: web.Request, max_bytes: int, message: str) -> None:
    """Raise PayloadTooLarge(``message``) when the declared body is over ``max_bytes`` (a body without a
    length is still bounded by the application's ``client_max_size``)."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(message)


async def posted_fields(request: web.Request, names: Iterable[str], *, max_bytes: int,
                        too_large: str) -> dict[str, str]:
    """The text fields ``names`` of a posted form (urlencoded or multipart); nothing from other bodies.
    PayloadTooLarge(``too_large``) over ``max_bytes``; BadRequest for a form that cannot be read (text
    that is not UTF-8, a broken multipart body)."""
    refuse_longer(request, max_bytes, too_large)
    if request.content_type not in FORM_TYPES:
        return {}
    try:
        form = await request.post()
    except (UnicodeDecodeError, ValueError, AssertionError, LookupError, HttpProcessingError) as exc:
        # aiohttp raises these for undecodable text, a malformed multipart body or an unknown charset
        raise BadRequest("The form could not be read.") from exc
    return {name: value for name in names if isinstance(value := form.get(name), str)}
