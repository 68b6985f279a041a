"""Token introspection (RFC 7662) against a real introspection endpoint on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from authserver_testlib import AuthServer, Received, Reply, free_port, json_reply, run

from gateway.auth.base import EdgeRequest, Verdict
from gateway.auth.introspection import IntrospectionAuthenticator
from shared.config.model.edge import IntrospectionSettings

SECRET_ENV = "MESHGATE_TEST_INTROSPECTION_SECRET"


class FakeClocks:
    """A monotonic and a wall clock that move together."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = 1_700_000_000.0

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


@pytest.fixture(scope="module")
def shared_server() -> Iterator[AuthServer]:
    with AuthServer() as server:
        yield server


TOKENS: dict[str, dict[str, Any]] = {}


def introspect(received: Received) -> Reply:
    form = urllib.parse.parse_qs(received.body.decode())
    token = form.get("token", [""])[0]
    return json_reply(TOKENS.get(token, {"active": False}))


@pytest.fixture
def server(shared_server: AuthServer) -> Iterator[AuthServer]:
    TOKENS.clear()
    TOKENS.update(
        {
            "good": {"active": True, "sub": "user-1", "scope": "read write", "client_id": "app"},
            "by-username": {"active": True, "username": "bob", "client_id": "app"},
            "by-client": {"active": True, "client_id": "service-app"},
            "nobody": {"active": True},
        }
    )
    shared_server.reply = introspect
    shared_server.clear()
    yield shared_server
    TOKENS.clear()


def settings(url: str, **extra: Any) -> IntrospectionSettings:
    return IntrospectionSettings.model_validate(
        {"url": url + "/oauth2/introspect", "clientId": "gateway", "clientSecretEnv": SECRET_ENV, **extra}
    )


def edge(authorization: str | None = "Bearer good") -> EdgeRequest:
    headers = [("authorization", authorization)] if authorization is not None else []
    return EdgeRequest(
        method="GET",
        path="/orders",
        query="",
        host="api.example.com",
        headers=headers,
        client_address="203.0.113.9",
    )


def authenticate(config: IntrospectionSettings, *requests: EdgeRequest, **kwargs: Any) -> list[Verdict]:
    async def main() -> list[Verdict]:
        auth = IntrospectionAuthenticator("idp", config, **kwargs)
        try:
            return [await auth.authenticate(request) for request in requests]
        finally:
            await auth.close()

    return run(main())


def test_no_bearer_credential_is_absent_and_nothing_is_asked(server: AuthServer) -> None:
    verdicts = authenticate(settings(server.url), edge(None), edge("Basic dXNlcjpwYXNz"), edge("Token abc"))
    assert verdicts == [Verdict.absent()] * 3
    assert server.calls == 0


def test_an_empty_or_malformed_bearer_is_rejected_without_asking(server: AuthServer) -> None:
    verdicts = authenticate(settings(server.url), edge("Bearer "), edge("Bearer a b"))
    assert all(v.identity is None and v.denial is None and v.reason for v in verdicts)
    assert server.calls == 0


def test_active_token_is_accepted_with_the_form_post_and_basic_client_auth(
    server: AuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, "s3cret:with+chars")
    [verdict] = authenticate(settings(server.url), edge("bearer good"))
    identity = verdict.identity
    assert identity is not None
    assert identity.principal == "user-1"
    assert identity.provider == "idp"
    assert dict(identity.claims) == TOKENS["good"]
    got = server.last()
    assert got.method == "POST"
    assert got.target == "/oauth2/introspect"
    assert urllib.parse.parse_qs(got.body.decode(), strict_parsing=True) == {
        "token": ["good"],
        "token_type_hint": ["access_token"],
    }
    assert got.header("content-type") == "application/x-www-form-urlencoded"
    scheme, _, encoded = (got.header("authorization") or "").partition(" ")
    assert scheme == "Basic"
    client_id, _, secret = base64.b64decode(encoded).decode().partition(":")
    assert client_id == "gateway"
    assert urllib.parse.unquote_plus(secret) == "s3cret:with+chars"
    assert "cookie" not in got.names()


def test_unset_secret_env_sends_an_empty_secret(server: AuthServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    authenticate(settings(server.url), edge())
    assert server.last().header("authorization") == "Basic " + base64.b64encode(b"gateway:").decode()


def test_principal_is_sub_else_username_else_client_id(server: AuthServer) -> None:
    verdicts = authenticate(
        settings(server.url), edge("Bearer good"), edge("Bearer by-username"), edge("Bearer by-client")
    )
    assert [v.identity.principal if v.identity else None for v in verdicts] == [
        "user-1",
        "bob",
        "service-app",
    ]


def test_active_but_naming_nobody_is_rejected(server: AuthServer) -> None:
    [verdict] = authenticate(settings(server.url), edge("Bearer nobody"))
    assert verdict.identity is None
    assert verdict.reason


def test_inactive_token_is_rejected_and_cached(server: AuthServer) -> None:
    verdicts = authenticate(settings(server.url), edge("Bearer revoked"), edge("Bearer revoked"))
    for verdict in verdicts:
        assert verdict.identity is None
        assert verdict.denial is None
        assert verdict.reason == "token inactive"
    assert server.calls == 1


def test_results_are_cached_by_token_hash_for_cache_ttl(server: AuthServer) -> None:
    clocks = FakeClocks()

    async def main() -> None:
        auth = IntrospectionAuthenticator(
            "idp", settings(server.url, cacheTtl="60s"), clock=clocks.monotonic, wall_clock=clocks.time
        )
        try:
            for _ in range(20):
                assert (await auth.authenticate(edge("Bearer good"))).identity is not None
            assert server.calls == 1
            await auth.authenticate(edge("Bearer by-username"))
            assert server.calls == 2
            assert all("good" not in key and len(key) == 64 for key in auth.cache.entry_keys())
            clocks.advance(59.9)
            await auth.authenticate(edge("Bearer good"))
            assert server.calls == 2
            clocks.advance(0.1)
            TOKENS["good"] = {"active": False}
            verdict = await auth.authenticate(edge("Bearer good"))
            assert verdict.reason == "token inactive"
            assert server.calls == 3
        finally:
            await auth.close()

    run(main())


def test_an_accept_is_never_cached_past_exp(server: AuthServer) -> None:
    clocks = FakeClocks()
    TOKENS["short"] = {"active": True, "sub": "carol", "exp": int(clocks.wall) + 5}

    async def main() -> None:
        auth = IntrospectionAuthenticator(
            "idp", settings(server.url, cacheTtl="60s"), clock=clocks.monotonic, wall_clock=clocks.time
        )
        try:
            assert (await auth.authenticate(edge("Bearer short"))).identity is not None
            clocks.advance(4.9)
            assert (await auth.authenticate(edge("Bearer short"))).identity is not None
            assert server.calls == 1
            clocks.advance(0.1)  # exp reached: ask again; the server still says active, exp says no
            verdict = await auth.authenticate(edge("Bearer short"))
            assert verdict.identity is None
            assert verdict.reason == "token expired"
            assert server.calls == 2
        finally:
            await auth.close()

    run(main())


@pytest.mark.parametrize(
    "reply",
    [
        Reply(500, [("content-type", "text/plain")], b"down"),
        Reply(401, [("content-type", "application/json")], b'{"error": "invalid_client"}'),
        Reply(200, [("content-type", "application/json")], b"not json"),
        Reply(200, [("content-type", "application/json")], b'["active", true]'),
    ],
    ids=["500", "401", "not-json", "not-an-object"],
)
def test_a_broken_answer_is_unavailable_and_not_cached(server: AuthServer, reply: Reply) -> None:
    server.reply = reply
    verdicts = authenticate(settings(server.url), edge(), edge())
    assert all(v.identity is None and v.reason == "introspection unavailable" for v in verdicts)
    assert server.calls == 2


def test_timeout_is_unavailable_within_the_bound_and_not_cached(server: AuthServer) -> None:
    server.slow(2.0, json_reply({"active": True, "sub": "late"}))
    started = time.monotonic()
    verdicts = authenticate(settings(server.url, timeout="150ms"), edge(), edge())
    elapsed = time.monotonic() - started
    assert all(v.identity is None and v.reason == "introspection unavailable" for v in verdicts)
    assert server.calls == 2
    assert elapsed < 1.5, elapsed


def test_connection_refused_is_unavailable() -> None:
    [verdict] = authenticate(settings(f"http://127.0.0.1:{free_port()}"), edge())
    assert verdict.identity is None
    assert verdict.reason == "introspection unavailable"


def test_concurrent_lookups_of_one_token_share_one_call(server: AuthServer) -> None:
    def slow_introspect(received: Received) -> Reply:
        reply = introspect(received)
        reply.delay = 0.1
        return reply

    server.reply = slow_introspect

    async def main() -> list[Verdict]:
        auth = IntrospectionAuthenticator("idp", settings(server.url))
        try:
            return await asyncio.gather(*(auth.authenticate(edge()) for _ in range(50)))
        finally:
            await auth.close()

    verdicts = run(main())
    assert server.calls == 1
    assert all(v.identity is not None and v.identity.principal == "user-1" for v in verdicts)
