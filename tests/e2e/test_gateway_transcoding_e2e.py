"""JSON <-> gRPC transcoding at the edge, end to end: curl-like JSON clients -> gateway (route with a
descriptor set) -> mTLS HTTP/2 -> the service's sidecar -> a grpcio server built from the same proto."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from e2e_lib import MESHGATE, MeshStack, grpc_server, running
from protos_testlib import compile_protos

POLICIES = """
apiVersion: meshgate/v1
kind: Mesh
trustDomain: json-edge.test
defaultAccess: deny
---
apiVersion: meshgate/v1
kind: Service
name: gateway
---
apiVersion: meshgate/v1
kind: Service
name: shop
protocol: grpc
---
apiVersion: meshgate/v1
kind: AccessPolicy
name: shop-from-gateway
target: {service: shop}
rules:
  - action: allow
    from: {services: [gateway]}
---
apiVersion: meshgate/v1
kind: Route
name: shop-json
match: {path: {prefix: /v1}}
backends: [{service: shop}]
translate: grpc-json
grpcJson: {descriptorSet: shop.pb}
"""


def make_servicer(pb: Any) -> dict[str, grpc.RpcMethodHandler]:
    def get_book(request: Any, context: grpc.ServicerContext) -> Any:
        return pb.Book(id=request.id, title=f"{request.shelf or 'any'}-{request.id}", in_stock=True)

    def create_book(request: Any, context: grpc.ServicerContext) -> Any:
        book = pb.Book()
        book.CopyFrom(request.book)
        book.id = 1001
        book.tags.append(request.shelf)
        return book

    def list_books(request: Any, context: grpc.ServicerContext) -> Any:
        books = [
            pb.Book(
                id=i, title=f"{request.shelf}-{i}", tags=list(request.tags), in_stock=request.filter.in_stock
            )
            for i in range(request.page_size)
        ]
        return pb.ListBooksResponse(books=books, total=request.page_size)

    def watch(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        for i in range(request.page_size):
            yield pb.Book(id=i, title=f"update {i}")

    def import_books(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        books = list(requests)
        return pb.ListBooksResponse(books=books, total=len(books))

    def fail(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.NOT_FOUND, f"book {request.id} is not here")

    def unary(fn: Any, req: Any, resp: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(fn, req.FromString, resp.SerializeToString)

    return {
        "GetBook": unary(get_book, pb.GetBookRequest, pb.Book),
        "CreateBook": unary(create_book, pb.CreateBookRequest, pb.Book),
        "ListBooks": unary(list_books, pb.ListBooksRequest, pb.ListBooksResponse),
        "ListTitles": unary(list_books, pb.ListBooksRequest, pb.ListBooksResponse),
        "Search": unary(list_books, pb.ListBooksRequest, pb.ListBooksResponse),
        "Watch": grpc.unary_stream_rpc_method_handler(
            watch, pb.ListBooksRequest.FromString, pb.Book.SerializeToString
        ),
        "Import": grpc.stream_unary_rpc_method_handler(
            import_books, pb.Book.FromString, pb.ListBooksResponse.SerializeToString
        ),
        "Fail": unary(fail, pb.GetBookRequest, pb.Book),
    }


@dataclass
class Edge:
    url: str
    http: httpx.Client


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    tmp = tmp_path_factory.mktemp("json-edge")
    policies = tmp / "policies"
    descriptor, pb = compile_protos(policies)
    with grpc_server("shop.v1.Shop", make_servicer(pb)) as app_port, running(tmp) as procs:
        (policies / "mesh.yaml").write_text(POLICIES)
        assert descriptor.name == "shop.pb"
        stack = MeshStack(procs, tmp)
        stack.start_control_plane(policies)
        stack.start_sidecar("shop", app_port)
        gateway = stack.start_gateway(knows=["shop"])
        with httpx.Client(base_url=gateway.url, timeout=10) as http:
            yield Edge(gateway.url, http)


def test_path_variables_and_additional_bindings(edge: Edge) -> None:
    response = edge.http.get("/v1/shelves/fiction/books/42")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.json() == {"id": "42", "title": "fiction-42", "inStock": True}  # int64 as a string
    assert edge.http.get("/v1/books/7").json()["title"] == "any-7"


def test_body_field_and_path_variable(edge: Edge) -> None:
    response = edge.http.post(
        "/v1/shelves/new/books", json={"title": "Dune", "author": "Herbert", "pages": 412}
    )
    assert response.status_code == 200
    assert response.json() == {
        "id": "1001",
        "title": "Dune",
        "author": "Herbert",
        "pages": 412,
        "tags": ["new"],
    }


def test_query_parameters_nested_and_repeated(edge: Edge) -> None:
    response = edge.http.get("/v1/shelves/s1/books?pageSize=2&tags=a&tags=b&filter.inStock=true")
    data = response.json()
    assert data["total"] == 2
    assert data["books"][1] == {"id": "1", "title": "s1-1", "tags": ["a", "b"], "inStock": True}
    assert edge.http.get("/v1/shelves/s1/books?page_size=1").json()["total"] == 1  # proto names too


def test_response_body_and_whole_body_request(edge: Edge) -> None:
    titles = edge.http.get("/v1/shelves/s2/titles?pageSize=2").json()
    assert [b["title"] for b in titles] == ["s2-0", "s2-1"]
    found = edge.http.post("/v1/search", json={"shelf": "x", "pageSize": 1, "filter": {"author": "a"}}).json()
    assert found["books"][0]["title"] == "x-0"


def test_server_streaming_is_newline_delimited_json(edge: Edge) -> None:
    with edge.http.stream("GET", "/v1/shelves/s/books:watch?pageSize=3") as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert lines == [
        {"title": "update 0"},
        {"id": "1", "title": "update 1"},
        {"id": "2", "title": "update 2"},
    ]


def test_client_streaming_reads_newline_delimited_json(edge: Edge) -> None:
    body = b'{"title": "a"}\n{"title": "b", "id": "5"}\n'
    response = edge.http.post(
        "/v1/books:import", content=body, headers={"content-type": "application/x-ndjson"}
    )
    assert response.json() == {"books": [{"title": "a"}, {"id": "5", "title": "b"}], "total": 2}


def test_grpc_errors_become_http_statuses_with_a_json_body(edge: Edge) -> None:
    response = edge.http.get("/v1/fail/3")
    assert response.status_code == 404
    assert response.json() == {"code": 5, "message": "book 3 is not here", "details": []}


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/v1/shelves/s/books/not-a-number", None, 400),
        ("POST", "/v1/search", b"{not json", 400),
        ("POST", "/v1/search", b'{"noSuchField": 1}', 400),
        ("POST", "/v1/search", b"[1, 2]", 400),
        ("GET", "/v1/shelves/s/books?pageSize=x", None, 400),
        ("DELETE", "/v1/books/1", None, 404),
        ("GET", "/v1/nothing/here", None, 404),
    ],
)
def test_bad_requests_get_clear_json_errors(
    edge: Edge, method: str, path: str, body: bytes | None, status: int
) -> None:
    response = edge.http.request(method, path, content=body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"code", "message", "details"}


def test_policy_check_reports_a_missing_descriptor_set(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(POLICIES.replace("shop.pb", "missing.pb"))
    out = subprocess.run(
        [MESHGATE, "policy", "check", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1
    assert "grpcJson.descriptorSet" in out.stderr and "missing.pb" in out.stderr
