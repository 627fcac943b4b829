"""The two check-path endpoints as one bundle: what every front-end (the fast lane, aiohttp) answers with."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.handlers.check import CheckEndpoint
from gateway.handlers.webhook import WebhookEndpoint


@dataclass(frozen=True, slots=True)
class HotEndpoints:
    """``/auth/check`` and ``/auth/webhook`` over plain request parts, built once per application."""

    check: CheckEndpoint
    webhook: WebhookEndpoint
