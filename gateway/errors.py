"""The gateway's error hierarchy; ``gateway.middleware`` maps each class to one HTTP answer."""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway turns into an HTTP response.

    ``status`` is the HTTP status, ``code`` a stable machine-readable name for JSON clients, and the
    message a sentence safe to show a user (never a token, cookie or secret).
    """

    status = 500
    code = "internal_error"

    def __init__(self, message: str = "", *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.message = message or (self.__class__.__doc__ or self.code).strip().splitlines()[0]
        self.headers = headers or {}


class BadRequest(GatewayError):
    """The request is malformed."""

    status = 400
    code = "bad_request"


class Unauthenticated(GatewayError):
    """No valid session."""

    status = 401
    code = "unauthenticated"


class Forbidden(GatewayError):
    """The session is valid but the policy does not allow this request."""

    status = 403
    code = "forbidden"


class PayloadTooLarge(GatewayError):
    """The request body is too large."""

    status = 413
    code = "payload_too_large"


class HeadersTooLarge(GatewayError):
    """The request headers are too large."""

    status = 431
    code = "headers_too_large"


class StoreUnavailable(GatewayError):
    """The session database cannot be reached right now."""

    status = 503
    code = "store_unavailable"


class NotFound(GatewayError):
    """No such resource."""

    status = 404
    code = "not_found"
