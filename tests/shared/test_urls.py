"""``shared.urls.redacted``: credentials never shown."""

from __future__ import annotations

import pytest

from shared.urls import redacted


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cr3t@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),
        (
            "rediss://user:pw@redis.example:6380/1?ssl_cert_reqs=none",
            "rediss://***@redis.example:6380/1?ssl_cert_reqs=none",
        ),
        ("redis://user@[::1]:6379", "redis://***@[::1]:6379"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw@host:notaport/0", "***"),
        ("redis://127.0.0.1:6379/0?password=s3cr3t", "redis://127.0.0.1:6379/0?password=***"),
        (
            "rediss://h:6380/0?ssl_cert_reqs=none&password=x",
            "rediss://h:6380/0?ssl_cert_reqs=none&password=***",
        ),
        ("unix:///run/redis.sock?db=0&password=s3cr3t", "unix:///run/redis.sock?db=0&password=***"),
    ],
)
def test_credentials_are_hidden(url: str, shown: str) -> None:
    assert redacted(url) == shown
