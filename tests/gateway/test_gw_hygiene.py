"""Edge hygiene on the ASGI scope: what a permissive server lets through, the gateway refuses."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.exchange import Exchange
from gateway.middleware.hygiene import HygieneSettings, check
from mesh.transport.messages import Response


def scope(*headers: tuple[str, str], client: str = "198.51.100.9", path: str = "/x") -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"q=1",
        "scheme": "http",
        "http_version": "1.1",
        "client": (client, 40000),
        "headers": [(k.encode(), v.encode()) for k, v in headers],
    }


def refused(result: Exchange | Response) -> tuple[int, str | None]:
    assert isinstance(result, Response), "expected a refusal"
    return result.status, result.header("x-meshgate-error")


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ((), 400),  # no Host
        ((("host", ""),), 400),
        ((("host", "a"), ("host", "b")), 400),
        ((("host", "a b"),), 400),
        ((("host", "a"), ("content-length", "3"), ("transfer-encoding", "chunked")), 400),
        ((("host", "a"), ("content-length", "1"), ("content-length", "2")), 400),
        ((("host", "a"), ("content-length", "+1")), 400),
        ((("host", "a"), ("transfer-encoding", "xchunked")), 400),
        ((("host", "a"), ("transfer-encoding", "chunked, gzip")), 400),
        ((("host", "a"), ("transfer-encoding", "chunked, chunked")), 400),
        ((("host", "a"), ("transfer-encoding", "gzip, chunked")), 501),  # RFC 9112 6.1: not implemented
        ((("host", "a"), ("transfer-encoding", "identity"), ("transfer-encoding", "chunked")), 501),
    ],
)
def test_framing_and_host_violations_get_400(headers: tuple[tuple[str, str], ...], status: int) -> None:
    result = check(scope(*headers), HygieneSettings())
    assert refused(result)[0] == status
    assert isinstance(result, Response) and ("connection", "close") in result.headers


def test_header_block_over_the_cap_gets_431() -> None:
    big = scope(("host", "a"), ("x-big", "a" * 100_000))
    assert refused(check(big, HygieneSettings())) == (431, "headers_too_large")
    many = scope(("host", "a"), *((f"x-{i}", "1") for i in range(300)))
    assert refused(check(many, HygieneSettings())) == (431, "headers_too_large")
    assert isinstance(check(big, HygieneSettings(max_header_bytes=200_000)), Exchange)


def test_hop_by_hop_and_identity_headers_are_removed() -> None:
    ex = check(
        scope(
            ("host", "API.Example.com:8443"),
            ("connection", "keep-alive, x-secret, host, authorization"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-connection", "x"),
            ("authorization", "Bearer t"),
            ("x-meshgate-principal", "admin"),
            ("x-meshgate-peer", "spiffe://x/ns/a/sa/b"),
            ("x-forwarded-client-cert", "By=spiffe://evil"),
            ("x-request-id", "client-chosen"),
            ("accept", "text/plain"),
            ("expect", "100-continue"),
        ),
        HygieneSettings(),
    )
    assert isinstance(ex, Exchange)
    names = [k for k, _ in ex.headers]
    assert ex.host == "api.example.com"
    for gone in (
        "connection",
        "keep-alive",
        "x-secret",
        "te",
        "upgrade",
        "proxy-connection",
        "x-meshgate-principal",
        "x-meshgate-peer",
        "x-forwarded-client-cert",
        "expect",  # answered at the edge (100 Continue when the body is read), never forwarded
    ):
        assert gone not in names, gone
    # Connection cannot strip what the gateway relies on
    assert ex.header("authorization") == "Bearer t"
    assert ex.header("accept") == "text/plain"
    assert ex.header("x-request-id") not in (None, "client-chosen")
    assert ex.header("x-forwarded-host") == "API.Example.com:8443"
    assert ex.query == "q=1" and ex.path == "/x"


def test_x_forwarded_for_is_ignored_without_trusted_hops() -> None:
    ex = check(scope(("host", "a"), ("x-forwarded-for", "1.2.3.4")), HygieneSettings())
    assert isinstance(ex, Exchange)
    assert ex.client_address == "198.51.100.9"
    assert ex.header("x-forwarded-for") == "198.51.100.9"


def test_x_forwarded_for_counts_through_the_trusted_hops_only() -> None:
    # client 1.2.3.4 spoofs 6.6.6.6; the trusted load balancer 10.0.0.5 appended the real one
    ex = check(
        scope(("host", "a"), ("x-forwarded-for", "6.6.6.6, 1.2.3.4"), client="10.0.0.5"),
        HygieneSettings(trusted_hops=1),
    )
    assert isinstance(ex, Exchange)
    assert ex.client_address == "1.2.3.4"
    assert ex.header("x-forwarded-for") == "6.6.6.6, 1.2.3.4, 10.0.0.5"
    junk = check(
        scope(("host", "a"), ("x-forwarded-for", "nonsense"), client="10.0.0.5"),
        HygieneSettings(trusted_hops=1),
    )
    assert isinstance(junk, Exchange) and junk.client_address == "10.0.0.5"


def test_look_alikes_of_identity_headers_are_removed() -> None:
    """Apps that map names CGI-style (``X_Meshgate_Peer`` and ``X-Meshgate-Peer`` both become
    ``HTTP_X_MESHGATE_PEER``) must not see a client's underscore variant; nor a client's X-Real-IP."""
    ex = check(
        scope(
            ("host", "a"),
            ("x_meshgate_principal", "admin"),
            ("X_Meshgate_Peer", "spiffe://x/ns/a/sa/b"),
            ("x_forwarded_for", "10.0.0.1"),
            ("x_request_id", "client-chosen"),
            ("x-real-ip", "10.0.0.1"),
            ("x_custom", "kept"),
        ),
        HygieneSettings(),
    )
    assert isinstance(ex, Exchange)
    names = [k.lower() for k, _ in ex.headers]
    for gone in ("x_meshgate_principal", "x_meshgate_peer", "x_forwarded_for", "x_request_id", "x-real-ip"):
        assert gone not in names, gone
    assert ex.header("x_custom") == "kept"


def test_an_absolute_form_target_is_accepted_and_its_authority_wins() -> None:
    """RFC 9112 section 3.2.2: a server MUST accept the absolute form, and use its host, not Host's."""
    absolute = scope(("host", "ignored.example"), path="http://API.example.com:8080/a/b")
    ex = check(absolute, HygieneSettings())
    assert isinstance(ex, Exchange)
    assert (ex.host, ex.path) == ("api.example.com", "/a/b")
    assert ex.header("x-forwarded-host") == "API.example.com:8080"
    assert refused(check(scope(("host", "a"), path="http:///nohost"), HygieneSettings()))[0] == 400
