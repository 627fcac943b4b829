"""Structured logging with structlog: JSON lines in production, readable lines in development.

Every line made while serving a request carries its request id. Callers must never pass a token,
cookie, code or secret as a value: log token *hashes* or nothing.
"""

from __future__ import annotations

import logging
import sys

import structlog
from aiohttp.http_exceptions import HttpProcessingError

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_FORMATS = ("auto", "json", "console")


def logging_problems(log_format: str, level: str) -> list[str]:
    """Problems with ``log_format`` and ``log_level`` (what :func:`configure_logging` accepts)."""
    problems: list[str] = []
    if log_format not in _FORMATS:
        problems.append(f"log_format: expected auto, json or console, got {log_format!r}")
    if level.lower() not in _LEVELS:
        problems.append(f"log_level: expected debug, info, warning or error, got {level!r}")
    return problems


class RedactProtocolErrors(logging.Filter):
    """Rewrite aiohttp's log of an unparseable request: its message quotes the offending header bytes,
    which may be a cookie or token. Keeps the error class and status, drops the bytes and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always keep the record; sanitise it when it carries an HTTP parsing error."""
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "rejected a malformed HTTP request: %s (status %s)"
            record.args = (type(exc).__name__, exc.code)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def install_redaction() -> None:
    """Attach :class:`RedactProtocolErrors` to aiohttp's server logger once per process."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, RedactProtocolErrors) for f in server_log.filters):
        server_log.addFilter(RedactProtocolErrors())


def configure_logging(log_format: str, level: str) -> None:
    """Configure structlog and stdlib logging for this process (idempotent; called once at start).

    ``log_format`` is ``json``, ``console`` or ``auto`` (console on a terminal, JSON otherwise).
    """
    if log_format == "auto":
        log_format = "console" if sys.stderr.isatty() else "json"
    numeric = _LEVELS.get(level.lower(), logging.INFO)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # One stdlib handler (one lock) renders both structlog and foreign records, so lines written from
    # other threads (aiosqlite) never interleave with ours.
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    # A standard-library record's traceback becomes the same ``exception`` text as ours in JSON; the
    # console renderer prints tracebacks itself (and warns when they arrive already formatted).
    foreign = [*shared, structlog.stdlib.add_logger_name]
    if log_format == "json":
        foreign.append(structlog.processors.format_exc_info)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=foreign))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # Driver chatter is never useful at debug level for operators.
    logging.getLogger("aiosqlite").setLevel(max(numeric, logging.INFO))
    install_redaction()
