"""Router: host, path (exact, prefix, template), method and header matches; weights; rewrites."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from gateway.routing import Router
from shared.config.model.edge import Route


def route(name: str, **spec: Any) -> Route:
    spec.setdefault("backends", [{"service": "orders"}])
    return Route.model_validate({"apiVersion": "meshgate/v1", "kind": "Route", "name": name, **spec})


def pick(
    router: Router, path: str, *, host: str = "any.test", method: str = "GET", **headers: str
) -> str | None:
    match = router.match(host, method, path, "", headers)
    return match.route.name if match else None


def test_exact_beats_template_beats_longest_prefix() -> None:
    router = Router(
        [
            route("root", match={"path": {"prefix": "/"}}),
            route("api", match={"path": {"prefix": "/api"}}),
            route("orders", match={"path": {"prefix": "/api/orders"}}),
            route("one", match={"path": {"template": "/api/orders/{id}"}}),
            route("health", match={"path": {"exact": "/api/orders/health"}}),
        ]
    )
    assert pick(router, "/api/orders/health") == "health"
    assert pick(router, "/api/orders/42") == "one"
    assert pick(router, "/api/orders/42/items") == "orders"
    assert pick(router, "/api/ordersX") == "api"  # prefixes match whole segments
    assert pick(router, "/apix") == "root"
    assert pick(router, "/") == "root"


def test_templates_capture_segments_and_the_rest() -> None:
    router = Router(
        [
            route("item", match={"path": {"template": "/shops/{shop}/items/{item}"}}),
            route("files", match={"path": {"template": "/files/{path=**}"}}),
        ]
    )
    match = router.match("h", "GET", "/shops/s1/items/i9", "", {})
    assert match is not None and match.params == {"shop": "s1", "item": "i9"}
    assert router.match("h", "GET", "/shops/s1/items", "", {}) is None
    assert router.match("h", "GET", "/shops//items/x", "", {}) is None  # empty segment is no value
    files = router.match("h", "GET", "/files/a/b/c.txt", "", {})
    assert files is not None and files.params == {"path": "a/b/c.txt"}


def test_hosts_exact_then_wildcard_then_any() -> None:
    router = Router(
        [
            route("any", hosts=["*"]),
            route("wild", hosts=["*.example.com"]),
            route("exact", hosts=["api.example.com"]),
        ]
    )
    assert pick(router, "/", host="api.example.com") == "exact"
    assert pick(router, "/", host="www.example.com") == "wild"
    assert pick(router, "/", host="example.com") == "any"  # *.example.com needs a label
    assert pick(router, "/", host="other.test") == "any"


def test_methods_and_headers_narrow_a_route() -> None:
    router = Router(
        [
            route("writes", match={"path": {"prefix": "/"}, "methods": ["POST"]}),
            route(
                "beta",
                match={"path": {"prefix": "/"}, "headers": [{"name": "x-beta", "exact": "1"}]},
                backends=[{"service": "billing"}],
            ),
            route("regex", match={"path": {"exact": "/r"}, "headers": [{"name": "x-v", "regex": "v[0-9]+"}]}),
        ]
    )
    assert pick(router, "/x", method="POST") == "writes"
    assert pick(router, "/x", **{"x-beta": "1"}) == "beta"
    assert pick(router, "/x") is None
    assert pick(router, "/r", **{"x-v": "v12"}) == "regex"
    assert pick(router, "/r", **{"x-v": "v12x"}) is None


@pytest.mark.parametrize(
    ("prefix", "rewrite", "path", "expected"),
    [
        ("/api/orders", "/orders", "/api/orders/7", "/orders/7"),
        ("/api/orders", "/orders", "/api/orders", "/orders"),
        ("/shop", "/", "/shop/cart", "/cart"),
        ("/shop", "/", "/shop", "/"),
        ("/shop/", "/v2/", "/shop/cart", "/v2/cart"),
    ],
)
def test_prefix_rewrite(prefix: str, rewrite: str, path: str, expected: str) -> None:
    router = Router([route("r", match={"path": {"prefix": prefix}}, rewrite={"prefix": rewrite})])
    match = router.match("h", "GET", path, "a=1", {})
    assert match is not None and match.upstream_path == f"{expected}?a=1"


def test_weighted_backends_split_traffic() -> None:
    router = Router(
        [
            route(
                "canary", backends=[{"service": "orders", "weight": 90}, {"service": "billing", "weight": 10}]
            )
        ],
        rng=random.Random(7),
    )
    counts = Counter(router.match("h", "GET", "/", "", {}).backend.service for _ in range(5000))  # type: ignore[union-attr]
    assert 0.87 < counts["orders"] / 5000 < 0.93
    assert counts["billing"] > 0


def test_among_equal_paths_the_narrower_route_is_tried_first() -> None:
    router = Router(
        [
            route("a-any", match={"path": {"prefix": "/rpc"}}),
            route(
                "b-web",
                match={"path": {"prefix": "/rpc"}, "headers": [{"name": "x-grpc-web", "present": True}]},
            ),
            route("c-post", match={"path": {"prefix": "/rpc"}, "methods": ["POST"]}),
        ]
    )
    assert pick(router, "/rpc/x", **{"x-grpc-web": "1"}) == "b-web"
    assert pick(router, "/rpc/x", method="POST") == "c-post"
    assert pick(router, "/rpc/x") == "a-any"
