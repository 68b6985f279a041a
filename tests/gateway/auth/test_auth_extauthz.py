"""ext_authz against a real auth service on 127.0.0.1: the check request, allow, deny, failures."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from authserver_testlib import AuthServer, Reply, free_port, run

from gateway.auth.base import EdgeRequest, Verdict
from gateway.auth.extauthz import ExtAuthzAuthenticator
from shared.config.model.edge import ExtAuthzSettings


@pytest.fixture(scope="module")
def shared_server() -> Iterator[AuthServer]:
    with AuthServer() as server:
        yield server


@pytest.fixture
def server(shared_server: AuthServer) -> AuthServer:
    shared_server.allow()
    shared_server.clear()
    return shared_server


def settings(url: str, **extra: Any) -> ExtAuthzSettings:
    return ExtAuthzSettings.model_validate({"url": url, **extra})


def edge(
    method: str = "GET",
    path: str = "/orders/42",
    query: str = "",
    headers: list[tuple[str, str]] | None = None,
    body: bytes | None = None,
    host: str = "api.example.com",
) -> EdgeRequest:
    return EdgeRequest(
        method=method,
        path=path,
        query=query,
        host=host,
        headers=headers if headers is not None else [("authorization", "Bearer t0k")],
        client_address="203.0.113.9",
        body=body,
    )


def check(config: ExtAuthzSettings, request: EdgeRequest, **kwargs: Any) -> Verdict:
    async def main() -> Verdict:
        auth = ExtAuthzAuthenticator("authz", config, **kwargs)
        try:
            return await auth.authenticate(request)
        finally:
            await auth.close()

    return run(main())


# ----- the check request -------------------------------------------------------------------------------


def test_check_request_has_method_prefixed_path_query_host_authorization_and_allowed_headers_only(
    server: AuthServer,
) -> None:
    config = settings(server.url, pathPrefix="/authz", allowedRequestHeaders=["X-Tenant", "x-request-id"])
    request = edge(
        query="expand=items&x=%2F",
        headers=[
            ("authorization", "Bearer t0k"),
            ("cookie", "session=secret"),
            ("x-tenant", "acme"),
            ("user-agent", "curl/8"),
            ("x-tenant", "beta"),
            ("x-request-id", "r-1"),
            ("x-forwarded-for", "10.0.0.1"),
        ],
    )
    verdict = check(config, request)
    assert verdict.identity is not None
    got = server.last()
    assert got.method == "GET"
    assert got.target == "/authz/orders/42?expand=items&x=%2F"
    assert got.headers == [
        ("host", "api.example.com"),
        ("authorization", "Bearer t0k"),
        ("x-tenant", "acme"),
        ("x-tenant", "beta"),
        ("x-request-id", "r-1"),
    ]
    assert got.body == b""


def test_cookies_go_only_when_allowed_and_framing_headers_never(server: AuthServer) -> None:
    config = settings(server.url, allowedRequestHeaders=["cookie", "content-length", "transfer-encoding"])
    request = edge(
        method="DELETE",
        headers=[("cookie", "a=1"), ("content-length", "99"), ("transfer-encoding", "chunked")],
    )
    check(config, request)
    got = server.last()
    assert got.method == "DELETE"
    assert got.target == "/orders/42"
    assert got.headers == [("host", "api.example.com"), ("cookie", "a=1")]


def test_raw_path_is_kept_and_url_path_comes_before_the_prefix(server: AuthServer) -> None:
    config = settings(server.url + "/base/", pathPrefix="/check")
    check(config, edge(path="/files/a%2Fb/caf%C3%A9", headers=[]))
    assert server.last().target == "/base/check/files/a%2Fb/caf%C3%A9"


def test_post_without_include_body_sends_no_body_and_no_content_length(server: AuthServer) -> None:
    config = settings(server.url)
    auth = ExtAuthzAuthenticator("authz", config)
    assert auth.needs_body is False
    run(auth.close())
    verdict = check(config, edge(method="POST", body=b'{"amount": 10}'))
    assert verdict.identity is not None
    got = server.last()
    assert got.method == "POST"
    assert got.body == b""
    assert "content-length" not in got.names()
    assert "transfer-encoding" not in got.names()


def test_include_body_sends_the_body_with_its_length(server: AuthServer) -> None:
    config = settings(server.url, includeBody=True, maxBodyBytes="1KiB")
    auth = ExtAuthzAuthenticator("authz", config)
    assert auth.needs_body is True
    run(auth.close())
    check(config, edge(method="PUT", body=b'{"amount": 10}'))
    got = server.last()
    assert got.body == b'{"amount": 10}'
    assert got.headers == [
        ("host", "api.example.com"),
        ("authorization", "Bearer t0k"),
        ("content-length", "14"),
    ]


def test_body_over_max_body_bytes_is_413_and_the_service_is_not_asked(server: AuthServer) -> None:
    config = settings(server.url, includeBody=True, maxBodyBytes=16)
    verdict = check(config, edge(method="POST", body=b"x" * 17))
    assert verdict.denial is not None
    assert verdict.denial.status == 413
    assert server.calls == 0
    assert check(config, edge(method="POST", body=b"x" * 16)).identity is not None
    assert server.last().body == b"x" * 16


def test_a_client_given_by_the_caller_adds_none_of_its_defaults_and_stays_open(server: AuthServer) -> None:
    config = settings(server.url)

    async def main() -> tuple[Verdict, bool]:
        async with httpx.AsyncClient(
            headers={"x-client-default": "1"}, cookies={"jar": "cookie"}, auth=("u", "p")
        ) as client:
            auth = ExtAuthzAuthenticator("authz", config, client=client)
            verdict = await auth.authenticate(edge())
            await auth.close()
            return verdict, client.is_closed

    verdict, closed = run(main())
    assert verdict.identity is not None
    assert closed is False
    assert server.last().headers == [("host", "api.example.com"), ("authorization", "Bearer t0k")]


# ----- allow -------------------------------------------------------------------------------------------


def test_200_allows_with_allowed_upstream_headers_removals_and_the_services_principal(
    server: AuthServer,
) -> None:
    server.allow(
        [
            ("x-meshgate-principal", "user:alice"),
            ("x-user-id", "alice"),
            ("X-Roles", "admin"),
            ("x-roles", "ops"),
            ("x-not-allowed", "dropped"),
            ("x-envoy-auth-headers-to-remove", "Authorization, x-api-key ,,host"),
            ("x-envoy-auth-headers-to-remove", "cookie"),
        ]
    )
    config = settings(server.url, allowedUpstreamHeaders=["x-user-id", "x-roles", "content-length"])
    verdict = check(config, edge())
    identity = verdict.identity
    assert identity is not None
    assert verdict.denial is None
    assert identity.principal == "user:alice"
    assert identity.provider == "authz"
    assert list(identity.upstream_headers) == [
        ("x-user-id", "alice"),
        ("x-roles", "admin"),
        ("x-roles", "ops"),
    ]
    assert list(identity.remove_headers) == ["authorization", "x-api-key", "cookie"]
    assert dict(identity.claims) == {"x-user-id": "alice", "x-roles": "admin, ops"}


def test_200_without_a_principal_header_names_the_provider(server: AuthServer) -> None:
    verdict = check(settings(server.url), edge())
    assert verdict.identity is not None
    assert verdict.identity.principal == "ext-authz:authz"
    assert list(verdict.identity.upstream_headers) == []
    assert list(verdict.identity.remove_headers) == []
    assert dict(verdict.identity.claims) == {}


def test_head_is_checked_as_head(server: AuthServer) -> None:
    assert check(settings(server.url), edge(method="HEAD")).identity is not None
    assert server.last().method == "HEAD"


# ----- deny --------------------------------------------------------------------------------------------


def test_401_is_relayed_with_status_body_and_allowed_client_headers_only(server: AuthServer) -> None:
    server.deny(
        401,
        [
            ("content-type", "application/json"),
            ("www-authenticate", 'Bearer realm="api"'),
            ("x-reason", "expired"),
            ("x-internal", "do-not-leak"),
            ("set-cookie", "tracking=1"),
        ],
        b'{"error": "token expired"}',
    )
    verdict = check(settings(server.url, allowedClientHeaders=["x-reason"]), edge())
    assert verdict.identity is None
    denial = verdict.denial
    assert denial is not None
    assert denial.status == 401
    assert denial.body == b'{"error": "token expired"}'
    assert list(denial.headers) == [
        ("content-type", "application/json"),
        ("www-authenticate", 'Bearer realm="api"'),
        ("x-reason", "expired"),
    ]
    assert verdict.reason is not None


def test_a_redirect_is_relayed_with_its_location_not_followed(server: AuthServer) -> None:
    server.deny(302, [("location", "https://login.example.com/?next=/orders/42")])
    verdict = check(settings(server.url), edge())
    assert verdict.denial is not None
    assert verdict.denial.status == 302
    assert ("location", "https://login.example.com/?next=/orders/42") in verdict.denial.headers
    assert server.calls == 1


def test_403_with_a_big_body_relays_at_most_64_kib(server: AuthServer) -> None:
    server.deny(403, [("content-type", "text/plain")], b"y" * (200 * 1024))
    verdict = check(settings(server.url), edge())
    assert verdict.denial is not None
    assert verdict.denial.status == 403
    assert verdict.denial.body == b"y" * (64 * 1024)
    assert ("content-length", str(200 * 1024)) not in verdict.denial.headers


def test_a_2xx_other_than_200_denies_like_envoy(server: AuthServer) -> None:
    server.deny(204)
    verdict = check(settings(server.url), edge())
    assert verdict.identity is None
    assert verdict.denial is not None
    assert verdict.denial.status == 204


# ----- failures ----------------------------------------------------------------------------------------


def assert_failed_closed(verdict: Verdict) -> None:
    assert verdict.identity is None
    denial = verdict.denial
    assert denial is not None
    assert denial.status == 403
    assert ("x-meshgate-error", "ext_authz_failed") in denial.headers
    assert len(denial.body) < 100
    assert b"auth service is broken" not in denial.body


def assert_failed_open(verdict: Verdict) -> None:
    assert verdict.denial is None
    identity = verdict.identity
    assert identity is not None
    assert identity.principal == "anonymous"
    assert identity.provider == "authz"
    assert list(identity.upstream_headers) == [("x-meshgate-ext-authz-failed", "true")]


@pytest.mark.parametrize("status", [500, 503])
def test_5xx_denies_403_or_allows_anonymous_with_failure_mode_allow(server: AuthServer, status: int) -> None:
    server.fail(status)
    assert_failed_closed(check(settings(server.url), edge()))
    assert_failed_open(check(settings(server.url, failureModeAllow=True), edge()))
    assert server.calls == 2


def test_timeout_denies_403_or_allows_anonymous_within_the_bound(server: AuthServer) -> None:
    server.slow(2.0)
    for failure_mode_allow, expect in ((False, assert_failed_closed), (True, assert_failed_open)):
        config = settings(server.url, timeout="150ms", failureModeAllow=failure_mode_allow)
        started = time.monotonic()
        verdict = check(config, edge())
        elapsed = time.monotonic() - started
        expect(verdict)
        assert 0.1 <= elapsed < 1.0, elapsed


def test_default_timeout_is_200ms(server: AuthServer) -> None:
    server.slow(1.0)
    started = time.monotonic()
    assert_failed_closed(check(settings(server.url), edge()))
    assert time.monotonic() - started < 0.8


def test_connection_refused_denies_403_or_allows_anonymous() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert_failed_closed(check(settings(url), edge()))
    assert_failed_open(check(settings(url, failureModeAllow=True), edge()))


def test_a_server_that_answers_slowly_then_well_is_used_again(server: AuthServer) -> None:
    config = settings(server.url, timeout="150ms")

    async def main() -> list[Verdict]:
        auth = ExtAuthzAuthenticator("authz", config)
        try:
            server.slow(2.0)
            first = await auth.authenticate(edge())
            server.reply = Reply(200, [("x-meshgate-principal", "bob")])
            second = await auth.authenticate(edge())
            return [first, second]
        finally:
            await auth.close()

    first, second = run(main())
    assert_failed_closed(first)
    assert second.identity is not None
    assert second.identity.principal == "bob"


def test_the_service_gets_the_clients_host_as_sent(server: AuthServer) -> None:
    """As Envoy sends :authority: case and port kept (the gateway keeps it in x-forwarded-host; the
    request's ``host`` is the normalized one used for routing)."""
    request = edge(headers=[("x-forwarded-host", "API.Example.com:8443")], host="api.example.com")
    check(settings(server.url), request)
    assert server.last().headers[0] == ("host", "API.Example.com:8443")
