"""The gateway's error hierarchy; ``gateway.http_errors`` maps each class to one HTTP answer."""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway turns into an HTTP response.

    ``status`` is the HTTP status, ``code`` a stable machine-readable name for JSON clients, and the
    message a sentence safe to show a user (never a token, cookie or secret).
    """

    status = 500
    code = "internal_error"
    title = "Something went wrong"

    def __init__(self, message: str = "", *, headers: dict[str, str] | None = None,
                 link: tuple[str, str] | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.message = message or (self.__class__.__doc__ or self.code).strip().splitlines()[0]
        self.headers = headers or {}
        self.link = link
        """An optional ``(href, label)`` the HTML page offers to recover (e.g. sign in again)."""


class BadRequest(GatewayError):
    """The request is malformed."""

    status = 400
    code = "bad_request"
    title = "Bad request"


class Unauthenticated(GatewayError):
    """No valid session."""

    status = 401
    code = "unauthenticated"
    title = "Sign-in required"


class Forbidden(GatewayError):
    """The session is valid but the policy does not allow this request."""

    status = 403
    code = "forbidden"
    title = "Not allowed"


class PayloadTooLarge(GatewayError):
    """The request body is too large."""

    status = 413
    code = "payload_too_large"
    title = "Request too large"


class HeadersTooLarge(GatewayError):
    """The request headers are too large."""

    status = 431
    code = "headers_too_large"
    title = "Request too large"


class StoreUnavailable(GatewayError):
    """The session database cannot be reached right now."""

    status = 503
    code = "store_unavailable"
    title = "Temporarily unavailable"


class NotFound(GatewayError):
    """No such resource."""

    status = 404
    code = "not_found"
    title = "Not found"


class LoginExpired(GatewayError):
    """This sign-in attempt has expired or was already used. Please start again."""

    status = 400
    code = "login_expired"
    title = "Sign-in expired"


class AccessDenied(GatewayError):
    """The sign-in provider refused the sign-in."""

    status = 403
    code = "access_denied"
    title = "Access denied"


class NotAllowed(GatewayError):
    """Your account is not allowed to use this site."""

    status = 403
    code = "not_allowed"
    title = "Not allowed"


class AccountRemoved(GatewayError):
    """Your account has been removed from this site. If you think this is a mistake, ask the people who run it."""

    status = 403
    code = "account_removed"
    title = "Account removed"


class ProviderUnavailable(GatewayError):
    """The sign-in provider could not be reached. Please try again in a moment."""

    status = 502
    code = "provider_unavailable"
    title = "Sign-in provider unavailable"


class TooManyRequests(GatewayError):
    """Too many sign-in attempts from your address. Please wait and try again."""

    status = 429
    code = "too_many_requests"
    title = "Too many attempts"


class OAuthError(BadRequest):
    """The OAuth request cannot be granted.

    An error of an OAuth 2.0 endpoint (RFC 6749 §5.2): always answered as JSON, whatever ``Accept`` says,
    with the message also as ``error_description``. ``code`` is the RFC's ``error`` value.
    """

    code = "invalid_request"
