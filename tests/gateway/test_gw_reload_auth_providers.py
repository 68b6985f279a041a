"""A live change of an AuthProvider document: requests in flight finish with the provider they started
with (it is closed only after a grace period longer than its timeout, or when the runtime stops)."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from gateway_testlib import BASE, edge, run
from meshrig_testlib import engine_from

import gateway.state as gateway_state
from gateway.auth.extauthz import ExtAuthzAuthenticator
from gateway.state import GatewayConfig, GatewayRuntime
from shared.config.model.edge import AuthProvider
from shared.config.policyset import PolicySet

SLOW = 1.0  # seconds the authorization service takes for /slow paths


@asynccontextmanager
async def authz_service() -> AsyncIterator[int]:
    """An ext_authz service on loopback: allows everything, after SLOW seconds for /slow paths."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if b" /slow" in head.split(b"\r\n", 1)[0]:
                await asyncio.sleep(SLOW)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


def policies(port: int, timeout: str, cache: bool) -> str:
    cached = "\n  cache: {ttl: 30s, denyTtl: 5s}" if cache else ""
    return f"""\
apiVersion: meshgate/v1
kind: Route
name: r
match: {{path: {{prefix: /}}}}
backends: [{{service: orders}}]
auth: [authz]
---
apiVersion: meshgate/v1
kind: AuthProvider
name: authz
type: extAuthz
extAuthz:
  url: http://127.0.0.1:{port}
  timeout: {timeout}{cached}
"""


def policy_set(folder: Path, port: int, timeout: str, cache: bool = False) -> PolicySet:
    return engine_from(folder, BASE + "---\n" + textwrap.dedent(policies(port, timeout, cache))).policy_set


def ext_authz(runtime: GatewayRuntime) -> ExtAuthzAuthenticator:
    assert runtime.state is not None
    return cast(ExtAuthzAuthenticator, runtime.state.providers["authz"])


def is_closed(provider: ExtAuthzAuthenticator) -> bool:
    return bool(provider._client.is_closed)


@pytest.mark.parametrize("cache", [False, True], ids=["no-cache", "cache"])
def test_a_request_waiting_on_ext_authz_survives_a_change_of_that_provider(
    tmp_path: Path, cache: bool
) -> None:
    async def go() -> None:
        async with authz_service() as port, edge(tmp_path, policies(port, "3s", cache)) as gw:
            headers = {"authorization": "Bearer a"}
            assert (await gw.http.get("/warm", headers=headers)).status_code == 200
            before = ext_authz(gw.runtime)
            waiting = asyncio.create_task(
                gw.http.get("/slow/inflight", headers={"authorization": "Bearer b"})
            )
            await asyncio.sleep(SLOW / 3)
            assert not waiting.done()
            gw.runtime.apply(policy_set(tmp_path / "new", port, "4s", cache))
            after = ext_authz(gw.runtime)
            assert after is not before and after.settings.timeout == timedelta(seconds=4)
            response = await asyncio.wait_for(waiting, 10)
            assert response.status_code == 200, (response.status_code, response.headers, response.text)
            assert not is_closed(before)  # still within its grace period
            assert (await gw.http.get("/after", headers={"authorization": "Bearer c"})).status_code == 200

    run(go())


class _FakeMeshClient:
    class _Pool:
        opened = 0
        connects_failed = 0

        def close(self) -> None:
            pass

    pool = _Pool()

    def update(self, endpoints: dict[str, Any], policies: dict[str, Any]) -> None:
        pass


def _runtime() -> GatewayRuntime:
    return GatewayRuntime(GatewayConfig(admin=None), client=cast(Any, _FakeMeshClient()))


def test_a_replaced_provider_is_closed_after_its_grace_period(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway_state, "CLOSE_GRACE_FLOOR", 0.2, raising=False)
    monkeypatch.setattr(gateway_state, "CLOSE_GRACE_MARGIN", 0.1, raising=False)

    async def go() -> None:
        runtime = _runtime()
        runtime.apply(policy_set(tmp_path / "v1", 9, "50ms"))
        first = ext_authz(runtime)
        runtime.apply(policy_set(tmp_path / "v2", 9, "60ms"))
        second = ext_authz(runtime)
        await asyncio.sleep(0.05)
        assert not is_closed(first), "closed before its grace period ended"
        await asyncio.sleep(0.5)
        assert is_closed(first)
        assert not is_closed(second)
        await runtime.stop()
        assert is_closed(second)

    run(go())


def test_stopping_the_runtime_closes_replaced_providers_at_once(tmp_path: Path) -> None:
    async def go() -> None:
        runtime = _runtime()
        runtime.apply(policy_set(tmp_path / "v1", 9, "3s"))
        first = ext_authz(runtime)
        runtime.apply(policy_set(tmp_path / "v2", 9, "4s"))
        second = ext_authz(runtime)
        await asyncio.sleep(0.05)
        assert not is_closed(first)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await runtime.stop()
        assert loop.time() - started < 2  # not the 11 s grace period
        assert is_closed(first) and is_closed(second)

    run(go())


def _provider(kind: str, **settings: Any) -> AuthProvider:
    blocks: dict[str, Any] = {
        "extAuthz": {"extAuthz": {"url": "http://127.0.0.1:9", **settings}},
        "introspection": {"introspection": {"url": "http://127.0.0.1:9", "clientId": "gw", **settings}},
        "jwt": {"jwt": {"issuer": "https://issuer.test/", "jwksUri": "https://issuer.test/jwks"}},
    }
    return AuthProvider.model_validate(
        {"apiVersion": "meshgate/v1", "kind": "AuthProvider", "name": "p", "type": kind, **blocks[kind]}
    )


def test_the_grace_period_outlasts_the_provider_timeout() -> None:
    close_grace = gateway_state.close_grace
    assert close_grace(_provider("extAuthz")) == 11.0  # 200ms: the 10 s floor
    assert close_grace(_provider("extAuthz", timeout="30s")) == 31.0
    assert close_grace(_provider("extAuthz", timeout="0s")) == 301.0  # no limit
    assert close_grace(_provider("introspection", timeout="45s")) == 46.0
    assert close_grace(_provider("jwt")) == 11.0
    assert close_grace(None) == 11.0
