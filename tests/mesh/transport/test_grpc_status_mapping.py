"""gRPC callers never see an HTTP error status: locally generated errors map by their
``x-meshgate-error`` code, an upstream that is not gRPC by its HTTP status
(grpc/grpc doc/http-grpc-status-mapping.md)."""

from __future__ import annotations

import pytest

from mesh.transport.messages import Request, Response, body_of, error_response, for_caller

GRPC = Request("POST", "/pkg.Svc/Call", "svc", headers=[("content-type", "application/grpc+proto")])


def _closed() -> tuple[Response, list[bool]]:
    closed: list[bool] = []
    page = body_of(b"<h1>Not Found</h1>")
    return Response(0, [("content-type", "text/html")], page, on_close=lambda: closed.append(True)), closed


@pytest.mark.parametrize(
    ("status", "grpc_status"),
    [
        (400, "13"),
        (401, "16"),
        (403, "7"),
        (404, "12"),
        (429, "14"),
        (502, "14"),
        (503, "14"),
        (504, "14"),
        (500, "2"),
        (418, "2"),
        (204, "2"),
    ],
)
def test_an_upstream_http_status_maps_to_a_grpc_status(status: int, grpc_status: str) -> None:
    upstream, closed = _closed()
    upstream.status = status
    answer = for_caller(GRPC, upstream)
    assert answer.status == 200
    assert answer.headers_only
    assert answer.header("content-type") == "application/grpc"
    assert answer.header("grpc-status") == grpc_status
    assert answer.header("x-meshgate-upstream-status") == str(status)
    assert answer.header("x-meshgate-error") is None  # the upstream's answer, not a local error
    assert closed == [True]  # the replaced response is released


def test_local_errors_still_map_by_their_code() -> None:
    answer = for_caller(GRPC, error_response(503, "no_healthy_upstream", "none"))
    assert (answer.header("grpc-status"), answer.header("x-meshgate-error")) == ("14", "no_healthy_upstream")


def test_non_grpc_callers_and_200_answers_pass_unchanged() -> None:
    upstream, closed = _closed()
    upstream.status = 404
    plain = Request("GET", "/", "svc", headers=[("content-type", "text/plain")])
    assert for_caller(plain, upstream) is upstream
    ok = Response(200, [("content-type", "application/grpc")])
    assert for_caller(GRPC, ok) is ok
    assert closed == []
