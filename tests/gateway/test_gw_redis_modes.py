"""Rate limits at the edge with a real Redis, killed mid-test for each failure mode; and the spans a
request leaves (server, auth, rate limit, one client span per upstream attempt)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path

import pytest
from gateway_testlib import edge, run
from ratelimit_testlib import RedisServer

POLICY = """\
apiVersion: meshgate/v1
kind: Route
name: limited
match: {path: {prefix: /limited}}
backends: [{service: orders}]
rateLimit: three
---
apiVersion: meshgate/v1
kind: RateLimit
name: three
key: [{type: clientAddress}]
limits: [{requests: 3, per: 1m}]
failureMode: MODE
"""


async def statuses(gw, n: int) -> list[int]:  # type: ignore[no-untyped-def]
    return [(await gw.http.get("/limited")).status_code for _ in range(n)]


@pytest.mark.parametrize(
    ("mode", "while_down"),
    [
        ("allow", [200, 200, 200, 200, 200]),
        ("deny", [429, 429, 429, 429, 429]),
        ("allow-local", [200, 200, 200, 429, 429]),  # an in-process bucket with the same limit
    ],
)
def test_redis_killed_mid_test_follows_the_failure_mode_and_recovers(
    tmp_path: Path, mode: str, while_down: list[int]
) -> None:
    server = RedisServer().start()

    async def go() -> None:
        async with edge(tmp_path, POLICY.replace("MODE", mode), redis=server.url) as gw:
            assert await statuses(gw, 2) == [200, 200]
            assert gw.runtime.limiter.redis_ok
            server.kill()
            started = time.monotonic()
            assert await statuses(gw, 5) == while_down
            assert time.monotonic() - started < 5  # a dead Redis costs no connect timeout per request
            assert not gw.runtime.limiter.redis_ok
            server.start()  # same port, empty (it kept nothing): a fresh quota once Redis is back
            deadline = time.monotonic() + 5
            while not gw.runtime.limiter.redis_ok and time.monotonic() < deadline:
                await gw.http.get("/limited")
                await asyncio.sleep(0.2)
            assert gw.runtime.limiter.redis_ok, "decisions never went back to Redis"
            await gw.http.get("/limited")
            with server.client() as client:
                assert client.dbsize() >= 1  # the limiter's keys are in Redis again

    try:
        run(go())
    finally:
        server.stop()


TRACED = """\
apiVersion: meshgate/v1
kind: Route
name: traced
match: {path: {prefix: /traced}}
backends: [{service: orders}]
auth: [keys]
rateLimit: roomy
---
apiVersion: meshgate/v1
kind: AuthProvider
name: keys
type: apiKey
apiKey:
  keys: [{name: alice, sha256: HASH}]
---
apiVersion: meshgate/v1
kind: RateLimit
name: roomy
key: [{type: apiKey}]
limits: [{requests: 100, per: 1s}]
"""


def test_a_request_leaves_server_auth_rate_limit_and_client_spans_in_one_trace(tmp_path: Path) -> None:
    spans_file = tmp_path / "spans.jsonl"
    policy = TRACED.replace("HASH", hashlib.sha256(b"k-alice").hexdigest())

    async def go() -> None:
        async with edge(tmp_path, policy, trace_file=spans_file) as gw:
            parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            response = await gw.http.get("/traced/x", headers={"x-api-key": "k-alice", "traceparent": parent})
            assert response.status_code == 200
            seen = dict(response.json()["headers"])
            assert seen["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")

    run(go())
    spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
    assert {s["context"]["trace_id"] for s in spans} == {"0x0af7651916cd43dd8448eb211c80319c"}
    names = sorted(s["name"] for s in spans)
    assert "auth" in names and "rate_limit" in names
    (server,) = [s for s in spans if s["kind"] == "SpanKind.SERVER"]
    (client,) = [s for s in spans if s["kind"] == "SpanKind.CLIENT"]
    assert server["parent_id"] == "0xb7ad6b7169203331"
    for child in spans:
        if child is not server:
            assert child["parent_id"] == server["context"]["span_id"], child["name"]
    assert client["attributes"]["server.port"] > 0
