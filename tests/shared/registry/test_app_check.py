"""The app check a sidecar runs locally and reports with its heartbeats."""

from __future__ import annotations

import asyncio

from mesh.transport.h1 import ClientInfo, H1Server
from mesh.transport.messages import Request, Response, body_of
from shared.registry.health import AppCheck


async def _app(request: Request, info: ClientInfo) -> Response:
    status = {"/healthz": 200, "/busy": 429}.get(request.path, 500)
    return Response(status, [("content-length", "2")], body_of(b"ok"))


def _run(check_path: str | None, kind: str = "http", dead: bool = False) -> tuple[str, str]:
    async def go() -> tuple[str, str]:
        server = await asyncio.start_server(H1Server(_app), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        if dead:
            server.close()
            await server.wait_closed()
        check = AppCheck(kind, "127.0.0.1", port, check_path or "/", timeout=2)  # type: ignore[arg-type]
        result = await check.run()
        if not dead:
            server.close()
            await server.wait_closed()
        return result

    return asyncio.run(asyncio.wait_for(go(), 10))


def test_http_2xx_is_passing() -> None:
    assert _run("/healthz")[0] == "passing"


def test_http_429_is_warning_and_5xx_critical() -> None:
    assert _run("/busy")[0] == "warning"
    status, output = _run("/broken")
    assert status == "critical" and "500" in output


def test_unreachable_app_is_critical_for_http_and_tcp() -> None:
    assert _run("/healthz", dead=True)[0] == "critical"
    status, output = _run(None, "tcp", dead=True)
    assert status == "critical" and output.startswith("tcp 127.0.0.1")


def test_tcp_connect_is_passing_and_ttl_always_passes() -> None:
    assert _run(None, "tcp")[0] == "passing"
    assert asyncio.run(AppCheck().run()) == ("passing", "")
