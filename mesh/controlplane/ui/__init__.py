"""The operator dashboard at ``/ui``: read-only, server-rendered, behind the admin token.

Pages: services and instances, who may call whom, live traffic, explain, configuration, policy source.
``/ui/data/{services,matrix,graph,config}.json`` serve the same data to the page's script. Nothing is
fetched from the internet: the script and style sheet are this package's ``static/`` files. Without a
valid session cookie, pages redirect to the login form and data endpoints answer 401.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from mesh.controlplane.ui import data, views
from mesh.controlplane.ui.html import login_page
from mesh.controlplane.ui.session import COOKIE, cookie_header, new_session, session_valid, token_matches

if TYPE_CHECKING:
    from mesh.controlplane.core import ControlPlane

STATIC = Path(__file__).resolve().parent / "static"
STATIC_TYPES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
MAX_FORM = 4096

Handler = Callable[[Request], Awaitable[Response]]


def ui_routes(cp: ControlPlane) -> list[Route]:
    """The dashboard's routes, to mount on the control plane's app."""

    def signed_in(request: Request) -> bool:
        return session_valid(cp.admin_token, request.cookies.get(COOKIE))

    def html(text: str, status: int = 200, **headers: str) -> HTMLResponse:
        return HTMLResponse(text, status, headers={**SECURITY_HEADERS, **headers})

    def page(render: Callable[[Request], str | None]) -> Handler:
        async def handler(request: Request) -> Response:
            if not signed_in(request):
                return RedirectResponse("/ui/login", 303, headers=SECURITY_HEADERS)
            await cp.registry.sync()
            text = render(request)
            if text is None:
                return html("<p>not found</p>", 404)
            return html(text)

        return handler

    def data_endpoint(build: Callable[[], object]) -> Handler:
        async def handler(request: Request) -> Response:
            if not signed_in(request):
                return JSONResponse(
                    {"error": "unauthenticated", "message": "log in at /ui/login"},
                    401,
                    headers=SECURITY_HEADERS,
                )
            await cp.registry.sync()
            return JSONResponse(build(), headers=SECURITY_HEADERS)

        return handler

    async def login_form(request: Request) -> Response:
        return html(login_page())

    async def login(request: Request) -> Response:
        # read at most MAX_FORM bytes, whatever Content-Length says or omits (reading the whole body
        # first let one unauthenticated request hold hundreds of MB)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_FORM:
                return html(login_page("form too large"), 413)
            chunks.append(chunk)
        body = b"".join(chunks)
        offered = parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0]
        if cp.admin_token is None or not token_matches(cp.admin_token, offered):
            return html(login_page("That is not the admin token."), 401)
        return RedirectResponse(
            "/ui", 303, headers={**SECURITY_HEADERS, "set-cookie": cookie_header(new_session(cp.admin_token))}
        )

    async def logout(request: Request) -> Response:
        return RedirectResponse(
            "/ui/login", 303, headers={**SECURITY_HEADERS, "set-cookie": cookie_header("", 0)}
        )

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_TYPES:
            return PlainTextResponse("not found\n", 404, headers=SECURITY_HEADERS)
        return Response((STATIC / name).read_bytes(), media_type=STATIC_TYPES[name], headers=SECURITY_HEADERS)

    def query(request: Request) -> dict[str, str]:
        return {k: v for k, v in request.query_params.items()}

    return [
        Route("/ui/login", login_form, methods=["GET"]),
        Route("/ui/login", login, methods=["POST"]),
        Route("/ui/logout", logout, methods=["POST"]),
        Route("/ui/static/{name}", static, methods=["GET"]),
        Route("/ui", page(lambda r: views.services_page(cp, r.query_params.get("q", ""))), methods=["GET"]),
        Route("/ui/access", page(lambda r: views.access_page(cp)), methods=["GET"]),
        Route("/ui/traffic", page(lambda r: views.traffic_page(cp)), methods=["GET"]),
        Route("/ui/explain", page(lambda r: views.explain_page(cp, query(r))), methods=["GET"]),
        Route("/ui/config", page(lambda r: views.config_page(cp)), methods=["GET"]),
        Route(
            "/ui/source",
            page(
                lambda r: views.source_page(
                    cp, r.query_params.get("file", ""), r.query_params.get("line", "")
                )
            ),
            methods=["GET"],
        ),
        Route("/ui/data/services.json", data_endpoint(lambda: data.services_data(cp)), methods=["GET"]),
        Route("/ui/data/matrix.json", data_endpoint(lambda: data.matrix_data(cp)), methods=["GET"]),
        Route("/ui/data/graph.json", data_endpoint(lambda: data.graph_data(cp)), methods=["GET"]),
        Route("/ui/data/config.json", data_endpoint(lambda: data.config_data(cp)), methods=["GET"]),
    ]
