"""The admin port every Meshgate process serves (DESIGN): ``/healthz``, ``/readyz``, ``/metrics``
(Prometheus text), ``/config`` (the effective configuration as JSON) and, where the process takes it,
``POST /quitquitquit``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mesh.transport.messages import Request, Response, body_of, target_path
from shared.telemetry.metrics import CONTENT_TYPE


def text_response(status: int, text: str, content_type: str = "text/plain; charset=utf-8") -> Response:
    """A small text answer with its length."""
    data = text.encode()
    return Response(
        status, [("content-type", content_type), ("content-length", str(len(data)))], body_of(data)
    )


async def admin_response(
    request: Request,
    *,
    ready: Callable[[], bool],
    metrics: Callable[[], str],
    describe: Callable[[], dict[str, Any]],
    quit: Callable[[], None] | None = None,
    why_not_ready: Callable[[], str] | None = None,
) -> Response:
    """Answer one admin request (the body, if any, is read and dropped). ``why_not_ready`` says
    what ``/readyz`` answers when not ready."""
    path = target_path(request.path)
    async for _ in request.body:
        pass
    if path == "/healthz":
        return text_response(200, "ok\n")
    if path == "/readyz":
        if ready():
            return text_response(200, "ready\n")
        why = why_not_ready() if why_not_ready is not None else "no certificate or configuration"
        return text_response(503, f"not ready: {why}\n")
    if path == "/metrics":
        return text_response(200, metrics(), CONTENT_TYPE)
    if path == "/config":
        return text_response(200, json.dumps(describe(), indent=2) + "\n", "application/json")
    if path == "/quitquitquit" and quit is not None:
        if request.method != "POST":
            answer = text_response(405, "POST /quitquitquit stops the sidecar\n")
            answer.headers.append(("allow", "POST"))
            return answer
        quit()
        return text_response(200, "stopping\n")
    return text_response(404, "not found\n")
