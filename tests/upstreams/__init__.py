"""Tests for ``upstreams``: each provider against its fake server."""
