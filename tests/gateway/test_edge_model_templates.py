"""Path templates: the policy model (shared/config/model/edge.py) refuses exactly the templates the
gateway's router cannot compile, so a set that passes ``meshgate policy check`` and the control plane's
loader never fails in ``GatewayRuntime.apply``."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.routing import Router
from shared.config.model.edge import PathMatch, Route, RouteMatch

TEMPLATES = [
    # compiled by the router
    "/",
    "//",
    "/orders/{id}",
    "/orders/{id}/",
    "/shops/{shop}/items/{item}",
    "/files/{path=**}",
    "/files/{path=**}/",
    "/{rest=**}",
    "/{=**}",
    "/{a}/{b=**}",
    "/a/{**}/b",
    "/a/{x=*}/b",
    "/a/{b}c/d",
    "/a/{b=**}c/d",
    "/a/x{b=**}/d",
    "/a//b",
    "/{}",
    "/{p=**",
    "/files/{p=**}}",
    "/{rest=**}/",
    # refused by the router: a {name=**} segment that is not the last one
    "/files/{p=**}/x",
    "/{p=**}/{q=**}",
    "/a/{=**}/b",
    "/{p=**}//x",
    "/{a}/{p=**}/{b}",
]


def _router_accepts(template: str) -> bool:
    # the router is handed a Route that skips the model's validation (as a snapshot from an older
    # control plane would carry), so that only its own grammar decides
    path = PathMatch.model_construct(exact=None, prefix=None, template=template)
    match = RouteMatch.model_construct(path=path, methods=[], headers=[])
    route = Route.model_construct(name="t", hosts=["*"], match=match, backends=[])
    try:
        Router([route])
    except ValueError:
        return False
    return True


def _model_accepts(template: str) -> bool:
    try:
        PathMatch.model_validate({"template": template})
    except ValidationError:
        return False
    return True


def test_the_model_accepts_exactly_the_templates_the_router_compiles() -> None:
    router = {t: _router_accepts(t) for t in TEMPLATES}
    model = {t: _model_accepts(t) for t in TEMPLATES}
    assert set(router.values()) == {True, False}  # the list holds both kinds
    assert model == router, {t: (model[t], router[t]) for t in TEMPLATES if model[t] != router[t]}


def test_a_rest_segment_that_is_not_last_is_refused_with_a_hint() -> None:
    spec: dict[str, Any] = {
        "apiVersion": "meshgate/v1",
        "kind": "Route",
        "name": "badtpl",
        "match": {"path": {"template": "/files/{p=**}/x"}},
        "backends": [{"service": "orders"}],
    }
    with pytest.raises(ValidationError) as info:
        Route.model_validate(spec)
    message = str(info.value)
    assert "'/files/{p=**}/x'" in message
    assert "must be the last segment" in message
    assert "/files/{p=**}" in message
