"""gateway.redaction: every spelling of a database password is found, and masked wherever it is shown."""

from __future__ import annotations

import pytest

from gateway.redaction import mask_url, scrub, url_secrets


@pytest.mark.parametrize(("urls", "secrets"), [
    (("postgresql://gw:s3cret@db/gateway",), ("s3cret",)),
    (("postgresql://gw:p%40ss@db/gateway",), ("p%40ss", "p@ss")),
    (("postgresql://gw@db/gateway?password=q%26w",), ("q%26w", "q&w")),
    (("postgresql://gw:short@db/x", "postgresql://gw:muchlonger@feed/x"), ("muchlonger", "short")),
    (("sqlite:///gateway.db", ""), ()),
    (("postgresql://gw:x@[::1/gateway",), ()),
], ids=["userinfo", "percent-encoded", "query-parameter", "two-urls-longest-first", "none", "malformed"])
def test_url_secrets_finds_every_spelling(urls: tuple[str, ...], secrets: tuple[str, ...]) -> None:
    assert url_secrets(*urls) == secrets


def test_scrub_masks_every_occurrence() -> None:
    message = 'password authentication failed for "gw" (p@ss, p%40ss)'
    assert scrub(message, url_secrets("postgresql://gw:p%40ss@db/x")) == \
        'password authentication failed for "gw" (***, ***)'


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://gw:s3cret@db.internal:5432/gateway", "postgresql://gw:***@db.internal:5432/gateway"),
    ("postgresql://gw@db/gateway?sslmode=require&password=s3cret", "postgresql://gw@db/gateway?sslmode=require&password=***"),
    ("sqlite:///gateway.db", "sqlite:///gateway.db"),
    ("postgresql://gw:s3cret@[::1/gateway", "***"),
], ids=["userinfo", "query-parameter", "no-password", "malformed"])
def test_mask_url_keeps_all_but_the_password(url: str, shown: str) -> None:
    assert mask_url(url) == shown
