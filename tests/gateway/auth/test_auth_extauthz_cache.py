"""The decision cache: unit behaviour on a fake clock, then ext_authz with a real auth service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from authserver_testlib import AuthServer, Reply, run

from gateway.auth.base import Denial, EdgeRequest, Identity, Verdict
from gateway.auth.decisioncache import DecisionCache, SingleFlight, digest_key
from gateway.auth.extauthz import ExtAuthzAuthenticator
from shared.config.model.edge import ExtAuthzSettings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


ALLOW = Verdict.accept(Identity(principal="alice", provider="authz"))
DENY = Verdict.deny(Denial(403, [], b"no"), "denied")
REJECT = Verdict.reject("bad token")


# ----- DecisionCache on its own ------------------------------------------------------------------------


def test_accepts_live_for_ttl_and_denials_and_rejections_for_deny_ttl() -> None:
    clock = FakeClock()
    cache = DecisionCache(ttl=30, deny_ttl=5, max_entries=10, clock=clock)
    cache.put("allow", ALLOW)
    cache.put("deny", DENY)
    cache.put("reject", REJECT)
    assert cache.get("allow") is ALLOW
    assert cache.get("deny") is DENY
    assert cache.get("reject") is REJECT
    clock.advance(4.9)
    assert cache.get("deny") is DENY
    clock.advance(0.1)
    assert cache.get("deny") is None
    assert cache.get("reject") is None
    assert cache.get("allow") is ALLOW
    clock.advance(25)
    assert cache.get("allow") is None
    assert cache.stats == {"hits": 5, "misses": 3, "evictions": 0, "expired": 3}
    assert len(cache) == 0


def test_absent_is_never_cached_and_a_zero_lifetime_stores_nothing() -> None:
    cache = DecisionCache(ttl=30, deny_ttl=0, max_entries=10, clock=FakeClock())
    cache.put("absent", Verdict.absent())
    cache.put("deny", DENY)
    cache.put("allow", ALLOW, ttl=0)
    assert len(cache) == 0
    assert cache.get("absent") is None


def test_a_per_entry_ttl_replaces_the_default() -> None:
    clock = FakeClock()
    cache = DecisionCache(ttl=30, deny_ttl=5, max_entries=10, clock=clock)
    cache.put("short", ALLOW, ttl=2)
    clock.advance(2)
    assert cache.get("short") is None


def test_entries_are_bounded_and_the_least_recently_used_goes_first() -> None:
    cache = DecisionCache(ttl=30, deny_ttl=5, max_entries=3, clock=FakeClock())
    for key in "abc":
        cache.put(key, ALLOW)
    assert cache.get("a") is ALLOW  # a is now the most recently used
    cache.put("d", ALLOW)
    assert cache.entry_keys() == ["c", "a", "d"]
    cache.put("c", DENY)  # an update refreshes too
    cache.put("e", ALLOW)
    assert cache.entry_keys() == ["d", "c", "e"]
    assert cache.get("c") is DENY
    assert cache.stats["evictions"] == 2
    for n in range(100):
        cache.put(f"k{n}", ALLOW)
    assert len(cache) == 3
    assert cache.stats["evictions"] == 102


def test_max_entries_must_be_positive() -> None:
    with pytest.raises(ValueError):
        DecisionCache(ttl=1, deny_ttl=1, max_entries=0)


def test_digest_key_separates_parts() -> None:
    assert digest_key(["ab", "c"]) != digest_key(["a", "bc"])
    assert digest_key(["a", ""]) != digest_key(["a"])
    assert len(digest_key(["Bearer secret"])) == 64


def test_single_flight_shares_one_call_and_survives_a_cancelled_waiter() -> None:
    async def main() -> tuple[int, list[Verdict], int]:
        flights = SingleFlight()
        calls = 0
        gate = asyncio.Event()

        async def call() -> Verdict:
            nonlocal calls
            calls += 1
            await asyncio.wait_for(gate.wait(), 5)
            return ALLOW

        first = asyncio.create_task(flights.run("k", call))
        others = [asyncio.create_task(flights.run("k", call)) for _ in range(9)]
        await asyncio.sleep(0)
        first.cancel()  # the first caller gives up; the call goes on for the rest
        await asyncio.sleep(0)
        gate.set()
        results = await asyncio.wait_for(asyncio.gather(*others), 5)
        assert first.cancelled()
        left = len(flights)
        await flights.close()
        return calls, results, left

    calls, results, left = run(main())
    assert calls == 1
    assert all(result is ALLOW for result in results)
    assert left == 0


# ----- ext_authz with a real auth service --------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_server() -> Iterator[AuthServer]:
    with AuthServer() as server:
        yield server


@pytest.fixture
def server(shared_server: AuthServer) -> AuthServer:
    shared_server.allow([("x-meshgate-principal", "alice")])
    shared_server.clear()
    return shared_server


def settings(url: str, **cache: Any) -> ExtAuthzSettings:
    extra = cache.pop("extra", {})
    return ExtAuthzSettings.model_validate(
        {"url": url, "timeout": "300ms", "cache": {"ttl": "30s", "denyTtl": "5s", **cache}, **extra}
    )


def edge(auth: str = "Bearer t0k", path: str = "/orders/42", **kwargs: Any) -> EdgeRequest:
    headers = kwargs.pop("headers", [("authorization", auth)])
    return EdgeRequest(
        method=kwargs.pop("method", "GET"),
        path=path,
        query=kwargs.pop("query", ""),
        host="api.example.com",
        headers=headers,
        client_address="203.0.113.9",
        **kwargs,
    )


def test_100_identical_requests_make_one_call_and_the_key_holds_no_secret(server: AuthServer) -> None:
    clock = FakeClock()

    async def main() -> tuple[list[Verdict], list[str], dict[str, int]]:
        auth = ExtAuthzAuthenticator("authz", settings(server.url), clock=clock)
        try:
            verdicts = [await auth.authenticate(edge("Bearer s3cr3t-token")) for _ in range(100)]
            assert auth.cache is not None
            return verdicts, auth.cache.entry_keys(), dict(auth.cache.stats)
        finally:
            await auth.close()

    verdicts, keys, stats = run(main())
    assert server.calls == 1
    assert all(v.identity is not None and v.identity.principal == "alice" for v in verdicts)
    assert stats["hits"] == 99
    assert len(keys) == 1
    assert "s3cr3t" not in keys[0]
    assert len(keys[0]) == 64


def test_100_concurrent_identical_requests_make_one_call(server: AuthServer) -> None:
    server.slow(0.1, Reply(200, [("x-meshgate-principal", "alice")]))

    async def main() -> list[Verdict]:
        auth = ExtAuthzAuthenticator("authz", settings(server.url))
        try:
            return await asyncio.gather(*(auth.authenticate(edge()) for _ in range(100)))
        finally:
            await auth.close()

    verdicts = run(main())
    assert server.calls == 1
    assert all(v.identity is not None and v.identity.principal == "alice" for v in verdicts)


def test_an_allow_is_asked_again_after_ttl(server: AuthServer) -> None:
    clock = FakeClock()

    async def main() -> None:
        auth = ExtAuthzAuthenticator("authz", settings(server.url), clock=clock)
        try:
            await auth.authenticate(edge())
            clock.advance(29.9)
            await auth.authenticate(edge())
            assert server.calls == 1
            clock.advance(0.1)
            server.deny(401, body=b"revoked")
            verdict = await auth.authenticate(edge())
            assert server.calls == 2
            assert verdict.denial is not None
            assert verdict.denial.status == 401
        finally:
            await auth.close()

    run(main())


def test_an_allow_expires_on_the_real_clock_too(server: AuthServer) -> None:
    async def main() -> None:
        auth = ExtAuthzAuthenticator("authz", settings(server.url, ttl="200ms"))
        try:
            await auth.authenticate(edge())
            await auth.authenticate(edge())
            assert server.calls == 1
            await asyncio.sleep(0.25)
            await auth.authenticate(edge())
            assert server.calls == 2
        finally:
            await auth.close()

    run(main())


def test_a_denial_is_cached_for_deny_ttl_only(server: AuthServer) -> None:
    clock = FakeClock()
    server.deny(403, [("content-type", "text/plain")], b"nope")

    async def main() -> None:
        auth = ExtAuthzAuthenticator("authz", settings(server.url), clock=clock)
        try:
            for _ in range(10):
                verdict = await auth.authenticate(edge())
                assert verdict.denial is not None
                assert verdict.denial.body == b"nope"
            assert server.calls == 1
            clock.advance(5)  # deny_ttl 5s, ttl 30s
            server.allow([("x-meshgate-principal", "alice")])
            verdict = await auth.authenticate(edge())
            assert verdict.identity is not None
            assert server.calls == 2
            clock.advance(5)
            await auth.authenticate(edge())
            assert server.calls == 2  # the allow lives longer
        finally:
            await auth.close()

    run(main())


def test_each_authorization_path_method_and_query_is_its_own_entry(server: AuthServer) -> None:
    async def main() -> int:
        auth = ExtAuthzAuthenticator("authz", settings(server.url))
        try:
            requests = [
                edge("Bearer a"),
                edge("Bearer b"),
                edge("Bearer a", path="/orders/43"),
                edge("Bearer a", method="POST"),
                edge("Bearer a", query="x=1"),
                edge(headers=[]),
            ]
            for request in requests * 3:
                await auth.authenticate(request)
            assert auth.cache is not None
            return len(auth.cache)
        finally:
            await auth.close()

    assert run(main()) == 6
    assert server.calls == 6


def test_the_key_holds_every_header_the_service_sees_plus_key_headers(server: AuthServer) -> None:
    """authorization and allowedRequestHeaders are always in the key (the service decides on them);
    keyHeaders adds others. (With keyHeaders alone, a second Authorization got the first one's allow.)"""
    config = settings(
        server.url, keyHeaders=["x-tenant"], extra={"allowedRequestHeaders": ["x-api-key", "cookie"]}
    )

    async def main() -> None:
        auth = ExtAuthzAuthenticator("authz", config)
        try:
            await auth.authenticate(edge(headers=[("x-api-key", "k1"), ("authorization", "Bearer a")]))
            await auth.authenticate(edge(headers=[("x-api-key", "k1"), ("authorization", "Bearer a")]))
            assert server.calls == 1
            await auth.authenticate(edge(headers=[("x-api-key", "k1"), ("authorization", "Bearer b")]))
            assert server.calls == 2  # authorization is sent, so it is keyed
            await auth.authenticate(edge(headers=[("x-api-key", "k2"), ("authorization", "Bearer a")]))
            assert server.calls == 3
            session = [("authorization", "Bearer a"), ("x-api-key", "k1"), ("cookie", "s=alice")]
            await auth.authenticate(edge(headers=session))
            assert server.calls == 4  # a cookie session is not the cookie-less request's decision
            await auth.authenticate(edge(headers=[*session, ("x-tenant", "t")]))
            assert server.calls == 5  # keyHeaders add to the key
        finally:
            await auth.close()

    run(main())


def test_with_include_body_the_body_is_part_of_the_key(server: AuthServer) -> None:
    config = settings(server.url, extra={"includeBody": True})

    async def main() -> None:
        auth = ExtAuthzAuthenticator("authz", config)
        try:
            for body in (b"a", b"b", b"a"):
                await auth.authenticate(edge(method="POST", body=body))
            assert server.calls == 2
        finally:
            await auth.close()

    run(main())


def test_failures_are_never_cached(server: AuthServer) -> None:
    async def main() -> None:
        for failure_mode_allow in (False, True):
            server.clear()
            config = settings(server.url, extra={"failureModeAllow": failure_mode_allow})
            auth = ExtAuthzAuthenticator("authz", config)
            try:
                server.fail(500)
                await auth.authenticate(edge())
                await auth.authenticate(edge())
                server.slow(2.0)
                await auth.authenticate(edge())
                assert server.calls == 3
                server.allow([("x-meshgate-principal", "alice")])
                verdict = await auth.authenticate(edge())
                assert verdict.identity is not None
                assert verdict.identity.principal == "alice"
                assert server.calls == 4
                assert auth.cache is not None
                assert len(auth.cache) == 1
            finally:
                await auth.close()

    run(main())


def test_entries_stay_bounded(server: AuthServer) -> None:
    async def main() -> tuple[int, int]:
        auth = ExtAuthzAuthenticator("authz", settings(server.url, maxEntries=3))
        try:
            for n in range(10):
                await auth.authenticate(edge(f"Bearer user-{n}"))
            await auth.authenticate(edge("Bearer user-9"))
            await auth.authenticate(edge("Bearer user-0"))  # evicted: asked again
            assert auth.cache is not None
            return len(auth.cache), auth.cache.stats["evictions"]
        finally:
            await auth.close()

    size, evictions = run(main())
    assert size == 3
    assert evictions == 8
    assert server.calls == 11


def test_without_a_cache_every_request_is_checked(server: AuthServer) -> None:
    config = ExtAuthzSettings.model_validate({"url": server.url})

    async def main() -> None:
        auth = ExtAuthzAuthenticator("authz", config)
        try:
            assert auth.cache is None
            started = time.monotonic()
            for _ in range(5):
                await auth.authenticate(edge())
            assert time.monotonic() - started < 5
        finally:
            await auth.close()

    run(main())
    assert server.calls == 5


def test_max_entries_in_a_policy_is_bounded() -> None:
    from pydantic import ValidationError

    ok = ExtAuthzSettings.model_validate({"url": "http://a", "cache": {"maxEntries": 1_000_000}})
    assert ok.cache is not None and ok.cache.max_entries == 1_000_000
    with pytest.raises(ValidationError, match="less than or equal to 1000000"):
        ExtAuthzSettings.model_validate({"url": "http://a", "cache": {"maxEntries": 1_000_001}})
