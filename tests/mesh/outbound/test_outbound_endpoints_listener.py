"""EndpointTable updates and the outbound listener's routing (service_of, proxy-mode targets)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mesh.outbound.endpoints import EndpointTable
from mesh.outbound.listener import OutboundHandler, service_of
from mesh.transport.h1 import ClientInfo
from mesh.transport.messages import Request, Response


def item(eid: str, port: int, identity: str = "spiffe://rig.test/ns/default/sa/orders") -> dict[str, Any]:
    return {"id": eid, "address": "127.0.0.1", "port": port, "identity": identity}


def test_endpoint_table_keeps_counters_of_endpoints_that_stay() -> None:
    table = EndpointTable()
    table.update({"orders": [item("a", 1), item("b", 2)], "web": [item("w", 3)]})
    a, b = table.get("orders")
    a.active, a.consecutive_5xx, a.ejections, a.ejected_until = 2, 3, 1, 99.0
    b.active = 5
    table.update({"orders": [item("a", 1), item("b", 9), item("c", 4)]})
    a2, b2, c2 = table.get("orders")
    assert a2 is a and (a2.active, a2.consecutive_5xx, a2.ejections, a2.ejected_until) == (2, 3, 1, 99.0)
    assert b2 is not b and b2.active == 0 and b2.port == 9  # moved: a new endpoint
    assert c2.id == "c" and c2.identity.endswith("/orders")
    assert table.get("web") == [] and table.services() == ["orders"]
    assert table.get("nope") == []


def test_endpoint_table_reads_metadata_and_tolerates_missing_identity() -> None:
    table = EndpointTable()
    table.update({"orders": [{"id": 7, "address": "127.0.0.1", "port": 80, "metadata": {"zone": "a"}}]})
    (ep,) = table.get("orders")
    assert (ep.id, ep.identity, dict(ep.metadata)) == ("7", "", {"zone": "a"})


@pytest.mark.parametrize(
    ("host", "service"),
    [
        ("orders", "orders"),
        ("orders:8080", "orders"),
        ("ORDERS.mesh", "orders"),
        ("orders.mesh:80", "orders"),
        ("orders.default.svc", "orders"),
        ("orders.default.svc.cluster.local:443", "orders"),
        ("orders.default", "orders"),
        ("user:pw@orders.mesh", "orders"),
        ("orders.mesh.", "orders"),
        ("Orders.Default.SVC.cluster.local.:80", "orders"),
        # another namespace keeps its name: the registry lists those instances as SERVICE.NAMESPACE
        ("orders.sandbox", "orders.sandbox"),
        ("orders.sandbox.svc.cluster.local", "orders.sandbox"),
        # not mesh names: outside hosts are never captured by a service sharing their first label
        ("orders.example.com", None),
        ("api.github.com:443", None),
        ("orders.other.svc.cluster.example", None),
        ("orders.svc", "orders.svc"),  # namespace "svc"
        ("svc", "svc"),  # a service may be called svc, or mesh, or local
        ("mesh", "mesh"),
        ("orders.ns.svc.cluster", None),
        ("127.0.0.1:8080", None),
        ("10.1.2.3", None),
        ("[::1]:80", None),
        ("or_ders", None),
        ("orders..mesh", None),
        ("", None),
    ],
)
def test_service_of(host: str, service: str | None) -> None:
    assert service_of(host) == service


def test_service_of_the_meshs_own_namespace_is_the_bare_name() -> None:
    assert service_of("orders.shop", namespace="shop") == "orders"
    assert service_of("orders.default", namespace="shop") == "orders.default"


class FakeClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Request]] = []

    async def request(self, service: str, request: Request) -> Response:
        self.calls.append((service, request))
        return Response(200)


INFO = ClientInfo("127.0.0.1", 5555)


def route(request: Request, fixed: str | None = None) -> tuple[Response, FakeClient]:
    client = FakeClient()
    handler = OutboundHandler(client, fixed)  # type: ignore[arg-type]
    return asyncio.run(handler(request, INFO)), client


def test_proxy_mode_absolute_target_names_the_service() -> None:
    response, client = route(Request("GET", "http://orders.mesh:8080/a/b?x=1", "ignored"))
    assert response.status == 200
    ((service, sent),) = client.calls
    assert service == "orders"
    assert (sent.path, sent.authority, sent.scheme) == ("/a/b?x=1", "orders", "http")


def test_host_header_names_the_service_for_origin_form_targets() -> None:
    _, client = route(Request("POST", "/pay", "billing.default.svc.cluster.local"))
    assert [(s, r.path) for s, r in client.calls] == [("billing", "/pay")]


def test_absolute_target_without_path_becomes_slash() -> None:
    _, client = route(Request("GET", "http://orders", ""))
    assert client.calls[0][1].path == "/"


def test_fixed_service_port_ignores_the_host() -> None:
    _, client = route(Request("GET", "/x", "whatever.example.com"), fixed="orders")
    assert client.calls[0][0] == "orders"


def test_no_service_named_is_a_400_and_connect_is_not_available() -> None:
    response, client = route(Request("GET", "/x", ""))
    assert response.status == 400 and response.header("x-meshgate-error") == "no_service"
    response, client = route(Request("CONNECT", "orders:5432", "orders:5432"))
    assert response.status == 501 and not client.calls
    # the absolute form too (it opened a tunnel to an HTTP app)
    response, client = route(Request("CONNECT", "http://orders/", "orders"))
    assert response.status == 501 and not client.calls


@pytest.mark.parametrize(
    "target",
    ["http://orders.example.com/v1/pay", "http://127.0.0.1:8080/", "http://[::1]/", "http://10.1.2.3/"],
)
def test_outside_hosts_are_refused_not_routed(target: str) -> None:
    response, client = route(Request("GET", target, "ignored", headers=[("authorization", "Bearer s")]))
    assert response.status == 404 and response.header("x-meshgate-error") == "unknown_service"
    assert not client.calls
