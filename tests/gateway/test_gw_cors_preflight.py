"""CORS preflights on routes that list ``match.methods``: routed by the method they ask for
(``Access-Control-Request-Method``) and answered at the edge from the route's ``cors``, never sent
upstream. A preflight whose route has no ``cors`` is routed as the OPTIONS request it is."""

from __future__ import annotations

from pathlib import Path

from gateway_testlib import edge, run

# the Route example of docs/policies.md: methods listed, cors for the same methods
METHODS_ROUTE = """\
apiVersion: meshgate/v1
kind: Route
name: shop
match: {path: {prefix: /cm}, methods: [GET, POST]}
backends: [{service: orders}]
cors:
  allowOrigins: ["https://shop.example"]
  allowMethods: [GET, POST]
  allowHeaders: [content-type]
  maxAge: 10m
"""

CATCH_ALL = """\
---
apiVersion: meshgate/v1
kind: Route
name: main
match: {path: {prefix: /}}
backends: [{service: billing}]
"""

# the same path split by method: POST has cors, GET has none
SPLIT = """\
apiVersion: meshgate/v1
kind: Route
name: split-post
match: {path: {prefix: /split}, methods: [POST]}
backends: [{service: orders}]
cors: {allowOrigins: ["https://shop.example"], allowMethods: [POST]}
---
apiVersion: meshgate/v1
kind: Route
name: split-get
match: {path: {prefix: /split}, methods: [GET]}
backends: [{service: orders}]
"""

ORIGIN = "https://shop.example"


def _preflight(method: str, origin: str = ORIGIN) -> dict[str, str]:
    return {
        "origin": origin,
        "access-control-request-method": method,
        "access-control-request-headers": "content-type",
    }


def test_preflight_on_a_route_with_methods_is_answered_at_the_edge(tmp_path: Path) -> None:
    async def go() -> None:
        async with edge(tmp_path, METHODS_ROUTE) as gw:
            response = await gw.http.options("/cm/x", headers=_preflight("POST"))
            assert response.status_code == 204, (response.status_code, response.headers)
            assert response.headers.get_list("access-control-allow-origin") == [ORIGIN]
            assert response.headers["access-control-allow-methods"] == "GET, POST"
            assert response.headers["access-control-allow-headers"] == "content-type"
            assert response.headers["access-control-max-age"] == "600"
            assert response.headers.get_list("vary") == ["origin"]
            refused = await gw.http.options("/cm/x", headers=_preflight("POST", "https://evil.example"))
            assert refused.status_code == 403
            assert refused.headers["x-meshgate-error"] == "origin_not_allowed"  # a refusal that says why
            assert refused.headers.get_list("vary") == ["origin"]
            assert "access-control-allow-origin" not in refused.headers
            # a method outside match.methods matches no route, as the actual request would not
            other = await gw.http.options("/cm/x", headers=_preflight("DELETE"))
            assert other.status_code == 404 and other.headers["x-meshgate-error"] == "route_not_found"
            # a plain OPTIONS (no preflight) is routed as before
            plain = await gw.http.options("/cm/x")
            assert plain.status_code == 404
            assert not gw.upstreams["orders"].seen and not gw.upstreams["billing"].seen

    run(go())


def test_preflight_is_not_forwarded_to_a_catch_all_route(tmp_path: Path) -> None:
    async def go() -> None:
        async with edge(tmp_path, METHODS_ROUTE + CATCH_ALL) as gw:
            response = await gw.http.options("/cm/x", headers=_preflight("GET"))
            assert response.status_code == 204, (response.status_code, response.headers)
            assert response.headers["access-control-allow-origin"] == ORIGIN
            assert not gw.upstreams["orders"].seen and not gw.upstreams["billing"].seen
            # a preflight whose route has no cors keeps today's behaviour: routed as OPTIONS (and
            # forwarded to the catch-all, which has no cors either)
            delete = await gw.http.options("/cm/x", headers=_preflight("DELETE"))
            assert delete.status_code == 200
            assert "access-control-allow-origin" not in delete.headers
            assert [r.method for r in gw.upstreams["billing"].seen] == ["OPTIONS"]
            assert not gw.upstreams["orders"].seen
            # the actual request goes to the route the preflight was answered for
            actual = await gw.http.post("/cm/x", headers={"origin": ORIGIN}, content=b"{}")
            assert actual.status_code == 200
            assert actual.headers["access-control-allow-origin"] == ORIGIN
            assert [r.method for r in gw.upstreams["orders"].seen] == ["POST"]

    run(go())


def test_preflight_follows_the_requested_method_between_routes_of_one_path(tmp_path: Path) -> None:
    async def go() -> None:
        async with edge(tmp_path, SPLIT) as gw:
            post = await gw.http.options("/split", headers=_preflight("POST"))
            assert post.status_code == 204, (post.status_code, post.headers)
            assert post.headers["access-control-allow-methods"] == "POST"
            # GET's route has no cors: routed as OPTIONS, which no route takes
            get = await gw.http.options("/split", headers=_preflight("GET"))
            assert get.status_code == 404
            assert not gw.upstreams["orders"].seen

    run(go())
