"""The operator dashboard at /ui on a real in-process control plane (HTTPS): login and session cookie,
pages and data behind it, HTML escaping of hostile values, security headers, the policy source viewer
that reads nothing but loaded policy files, static files, and heartbeat reports shown as services and
traffic edges."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cp_testlib import Endpoint, InProcessControlPlane, error_of, register_body

from mesh.controlplane.ui.session import COOKIE, LIFETIME, new_session, session_valid, token_matches

PAGES = ["/ui", "/ui/access", "/ui/traffic", "/ui/explain", "/ui/config"]
DATA = [f"/ui/data/{name}.json" for name in ("services", "matrix", "graph", "config")]
XSS = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"


def login(ep: Endpoint) -> str:
    """The session cookie value the login form gives for the admin token."""
    with ep.anon() as http:
        r = http.post("/ui/login", data={"token": ep.admin_token})
    assert r.status_code == 303, r.text
    for header in r.headers.get_list("set-cookie"):
        name, _, rest = header.partition("=")
        if name == COOKIE:
            return rest.split(";", 1)[0]
    raise AssertionError(f"no {COOKIE} cookie in {r.headers}")


def with_cookie(value: str) -> dict[str, str]:
    return {"cookie": f"{COOKIE}={value}"}


@pytest.fixture(scope="module")
def session(ep: Endpoint) -> str:
    return login(ep)


@pytest.fixture
def ui(ep: Endpoint, session: str) -> Iterator[httpx.Client]:
    """An anonymous API client that sends the dashboard's session cookie."""
    with ep.anon() as http:
        http.headers.update(with_cookie(session))
        yield http


def assert_security_headers(r: httpx.Response) -> None:
    csp = r.headers.get("content-security-policy", "")
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, r.headers
    assert r.headers.get("x-content-type-options") == "nosniff"
    assert r.headers.get("referrer-policy") == "no-referrer"
    assert r.headers.get("cache-control") == "no-store"


def assert_unescaped_absent(text: str, *hostile: str) -> None:
    for value in hostile:
        assert value not in text, value
        assert "<script>alert" not in text and "<img src=x" not in text


def heartbeat(ep: Endpoint, instance_id: str, report: dict[str, Any], **extra: Any) -> httpx.Response:
    with ep.admin() as http:
        return http.put(f"/v1/heartbeat/{instance_id}", json={"status": "passing", "report": report, **extra})


def register(ep: Endpoint, service: str, n: int, instance_id: str) -> None:
    with ep.admin() as http:
        r = http.post("/v1/register", json=register_body(service, n, id=instance_id))
    assert r.status_code == 201, r.text


# ----- login, session, logout ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [*PAGES, "/ui/source?file=x"])
def test_pages_without_a_session_redirect_to_login(ep: Endpoint, path: str) -> None:
    with ep.anon() as http:
        r = http.get(path)
        bad = http.get(path, headers=with_cookie("1.deadbeef"))
    for resp in (r, bad):
        assert resp.status_code == 303 and resp.headers["location"] == "/ui/login"
        assert_security_headers(resp)


@pytest.mark.parametrize("path", DATA)
def test_data_without_a_session_is_401(ep: Endpoint, path: str) -> None:
    with ep.anon() as http:
        r = http.get(path)
        admin_bearer = http.get(path, headers={"authorization": f"Bearer {ep.admin_token}"})
    assert r.status_code == 401 and r.json()["error"] == "unauthenticated"
    assert_security_headers(r)
    assert admin_bearer.status_code == 401  # the dashboard's data is behind the session, not the API token


def test_login_form_is_served_with_security_headers(ep: Endpoint) -> None:
    with ep.anon() as http:
        r = http.get("/ui/login")
        slash = http.get("/ui/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'action="/ui/login"' in r.text and 'type="password"' in r.text
    assert_security_headers(r)
    assert slash.status_code == 308 and slash.headers["location"] == "/ui"


@pytest.mark.parametrize("offered", ["wrong", "", "x" * 64, "ADMIN"])
def test_a_wrong_token_is_401_without_a_cookie(ep: Endpoint, offered: str) -> None:
    token = ep.admin_token.upper() if offered == "ADMIN" else offered
    assume_differs = token != ep.admin_token
    with ep.anon() as http:
        r = http.post("/ui/login", data={"token": token})
        missing = http.post("/ui/login", data={})
    assert assume_differs
    for resp in (r, missing):
        assert resp.status_code == 401
        assert "set-cookie" not in resp.headers
        assert "That is not the admin token." in resp.text
        assert_security_headers(resp)


def test_an_oversized_login_form_is_413(ep: Endpoint) -> None:
    with ep.anon() as http:
        r = http.post("/ui/login", data={"token": ep.admin_token, "pad": "x" * 5000})
    assert r.status_code == 413 and "set-cookie" not in r.headers


def test_the_right_token_gives_a_strict_session_cookie(ep: Endpoint) -> None:
    with ep.anon() as http:
        r = http.post("/ui/login", data={"token": f"  {ep.admin_token}\n"})  # pasted with whitespace
    assert r.status_code == 303 and r.headers["location"] == "/ui"
    assert_security_headers(r)
    (cookie,) = r.headers.get_list("set-cookie")
    value, *attrs = [part.strip() for part in cookie.split(";")]
    name, _, session = value.partition("=")
    assert name == COOKIE and session_valid(ep.admin_token, session)
    lowered = {a.lower() for a in attrs}
    assert {"httponly", "secure", "samesite=strict", "path=/ui"} <= lowered, cookie
    assert f"max-age={LIFETIME}" in lowered
    assert not any(a.startswith("domain=") for a in lowered)
    assert ep.admin_token not in cookie  # the cookie is a signature, not the token


def test_the_cookie_jar_of_a_client_carries_the_session(ep: Endpoint) -> None:
    with ep.anon() as http:
        assert http.post("/ui/login", data={"token": ep.admin_token}).status_code == 303
        r = http.get("/ui")  # the cookie was stored (Secure, over HTTPS) and is sent back
    assert r.status_code == 200 and "<h1>Services</h1>" in r.text


def test_logout_clears_the_cookie(ep: Endpoint, session: str) -> None:
    with ep.anon() as http:
        r = http.post("/ui/logout", headers=with_cookie(session))
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    (cookie,) = r.headers.get_list("set-cookie")
    parts = [p.strip().lower() for p in cookie.split(";")]
    assert parts[0] == f"{COOKIE}=" and "max-age=0" in parts and "path=/ui" in parts
    assert {"httponly", "secure", "samesite=strict"} <= set(parts)


def test_expired_and_forged_sessions_are_refused(ep: Endpoint) -> None:
    expired = new_session(ep.admin_token, now=time.time() - LIFETIME - 5)
    almost = new_session(ep.admin_token, lifetime=60)
    expires, mac = almost.split(".")
    forged = [
        expired,
        new_session("not-the-admin-token"),
        f"{int(expires) + 10**6}.{mac}",  # later expiry, old signature
        f"{expires}.{'0' * 64}",
        f"{expires}.{mac}.extra",
        f"-{expires}.{mac}",
        almost.upper(),
        "",
    ]
    with ep.anon() as http:
        assert http.get("/ui", headers=with_cookie(almost)).status_code == 200
        for value in forged:
            page = http.get("/ui", headers=with_cookie(value))
            data = http.get("/ui/data/services.json", headers=with_cookie(value))
            assert page.status_code == 303, value
            assert data.status_code == 401, value


def test_session_signature_and_expiry_rules() -> None:
    now = 1_700_000_000.0
    value = new_session("token-a", now=now, lifetime=100)
    assert session_valid("token-a", value, now=now + 99)
    assert not session_valid("token-a", value, now=now + 100)  # expired at its time
    assert not session_valid("token-b", value, now=now)  # another admin token: another key
    assert not session_valid(None, value, now=now)
    assert not session_valid("token-a", None, now=now)
    assert token_matches("token-a", " token-a\n") and not token_matches("token-a", "token-")
    assert not token_matches(None, "")


def test_changing_the_admin_token_ends_every_session(fresh_cp: InProcessControlPlane) -> None:
    ep = fresh_cp.endpoint
    session = login(ep)
    with ep.anon() as http:
        assert http.get("/ui", headers=with_cookie(session)).status_code == 200
        assert fresh_cp.cp is not None
        fresh_cp.cp.admin_token = "a-new-admin-token-" + "x" * 20
        assert http.get("/ui", headers=with_cookie(session)).status_code == 303
        assert http.get("/ui/data/config.json", headers=with_cookie(session)).status_code == 401
        old = http.post("/ui/login", data={"token": ep.admin_token})
        new = http.post("/ui/login", data={"token": fresh_cp.cp.admin_token})
    assert old.status_code == 401 and new.status_code == 303


# ----- pages and data with a session ------------------------------------------------------------------------


@pytest.mark.parametrize("path", PAGES)
def test_every_page_renders_with_security_headers(ui: httpx.Client, path: str) -> None:
    r = ui.get(path)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert_security_headers(r)
    assert r.text.startswith("<!doctype html>") and "Log out" in r.text
    assert 'src="/ui/static/app.js"' in r.text and "http://" not in r.text and "https://" not in r.text


@pytest.mark.parametrize("path", DATA)
def test_every_data_endpoint_answers_json(ui: httpx.Client, path: str) -> None:
    r = ui.get(path)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert_security_headers(r)
    assert r.json() is not None


def test_matrix_and_config_data_describe_the_loaded_policies(ui: httpx.Client) -> None:
    matrix = ui.get("/ui/data/matrix.json").json()
    assert matrix["services"] == ["catalog", "gateway", "orders", "web"]
    cells = {(c["from"], c["to"]): c for c in matrix["cells"]}
    assert len(cells) == 16
    assert cells[("gateway", "web")]["verdict"] == "allow"
    assert cells[("web", "orders")]["verdict"] == "partial" and cells[("web", "orders")]["audit"]
    assert cells[("web", "gateway")]["default"] and cells[("web", "gateway")]["rule"] == "default"
    config = ui.get("/ui/data/config.json").json()
    assert config["ok"] and config["version"] and config["errors"] == []
    assert any(f.endswith("access.yaml") for f in config["files"])
    access = ui.get("/ui/access")
    assert 'id="matrix"' in access.text and "PARTIAL" in access.text and "/ui/source?file=" in access.text


def test_the_services_filter_is_escaped(ui: httpx.Client) -> None:
    r = ui.get("/ui", params={"q": XSS})
    assert r.status_code == 200
    assert_unescaped_absent(r.text, XSS)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text
    quoted = ui.get("/ui", params={"q": '" autofocus onfocus="alert(1)'})
    assert 'value="&quot; autofocus onfocus=&quot;alert(1)"' in quoted.text


def test_explain_escapes_every_field_and_answers_like_the_engine(ui: httpx.Client) -> None:
    hostile = {
        "from": IMG,
        "to": XSS,
        "method": "<b>GET</b>",
        "path": '/"><script>alert(2)</script>',
        "headers": f"x-a={XSS}",
        "claims": f"role={IMG}",
        "principal": XSS,
    }
    r = ui.get("/ui/explain", params=hostile)
    assert r.status_code == 200
    assert_unescaped_absent(r.text, IMG, XSS, "<b>GET</b>", "<script>alert(2)")
    assert "&lt;img src=x onerror=alert(1)&gt;" in r.text
    assert 'id="answer"' in r.text  # it was decided, not refused
    malformed = ui.get("/ui/explain", params={"from": "web", "to": "orders", "headers": f"{XSS} no equals"})
    assert malformed.status_code == 200 and 'role="alert"' in malformed.text
    assert_unescaped_absent(malformed.text, XSS)
    good = ui.get("/ui/explain", params={"from": "web", "to": "orders", "method": "post", "path": "/orders"})
    assert "ALLOW" in good.text and "web-and-gateway" in good.text
    assert "spiffe://demo.meshgate.local/ns/default/sa/web" in good.text
    admin = ui.get("/ui/explain", params={"from": "web", "to": "orders", "path": "/admin"})
    assert '<p class="verdict">DENY</p>' in admin.text and "no-admin-from-mesh" in admin.text


def test_hostile_heartbeat_values_are_escaped_on_the_services_page(ep: Endpoint, ui: httpx.Client) -> None:
    register(ep, "web", 91, "web-ui-91")
    r = heartbeat(
        ep,
        "web-ui-91",
        {"version": XSS, "policyVersion": IMG},
        output=f'"><svg onload=alert(3)>{XSS}',
    )
    assert r.status_code == 200, r.text
    page = ui.get("/ui", params={"q": "web-ui-91"})
    assert page.status_code == 200 and "web-ui-91" in page.text
    assert_unescaped_absent(page.text, XSS, IMG, "<svg onload")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


# ----- policy source ----------------------------------------------------------------------------------------


def _access_file(ui: httpx.Client) -> str:
    files: list[str] = ui.get("/ui/data/config.json").json()["files"]
    return next(f for f in files if f.endswith("access.yaml"))


@pytest.mark.parametrize(
    "file",
    [
        "/etc/passwd",
        "../pyproject.toml",
        "pyproject.toml",
        "policies/access.yaml",  # relative: not the name it was loaded under
        "",
        "/proc/self/environ",
    ],
)
def test_source_refuses_files_that_are_not_loaded_policies(ui: httpx.Client, file: str) -> None:
    r = ui.get("/ui/source", params={"file": file, "line": "1"})
    assert r.status_code == 404
    assert "root:" not in r.text and "[project]" not in r.text
    assert_security_headers(r)


def test_source_refuses_paths_that_lead_out_of_a_loaded_file(ui: httpx.Client) -> None:
    access = _access_file(ui)
    for file in (f"{access}/../../pyproject.toml", access + "\x00", access.replace("access", "./access")):
        r = ui.get("/ui/source", params={"file": file})
        assert r.status_code == 404, file


def test_source_shows_a_policy_file_with_the_line_highlighted(ui: httpx.Client) -> None:
    access = _access_file(ui)
    r = ui.get("/ui/source", params={"file": access, "line": "7"})
    assert r.status_code == 200
    assert_security_headers(r)
    assert '<tr id="L7" class="hit">' in r.text
    assert r.text.count('class="hit"') == 1
    assert "no-admin-from-mesh" in r.text and "orders-access" in r.text
    assert "&quot;/admin&quot;" in r.text  # file content is escaped too
    plain = ui.get("/ui/source", params={"file": access, "line": "seven"})
    assert plain.status_code == 200 and 'class="hit"' not in plain.text


def test_rule_links_of_the_matrix_open_in_the_source_viewer(ui: httpx.Client) -> None:
    cells = ui.get("/ui/data/matrix.json").json()["cells"]
    rules = {c["rule"] for c in cells if c["rule"] != "default"}
    assert rules
    for rule in rules:
        file, _, line = rule.rpartition(":")
        r = ui.get("/ui/source", params={"file": file, "line": line})
        assert r.status_code == 200 and f'<tr id="L{line}" class="hit">' in r.text, rule


# ----- static files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "ctype"), [("app.js", "text/javascript"), ("app.css", "text/css")])
def test_static_files_have_their_content_type(ep: Endpoint, name: str, ctype: str) -> None:
    with ep.anon() as http:
        r = http.get(f"/ui/static/{name}")
    assert r.status_code == 200 and r.content
    assert r.headers["content-type"].split(";")[0] == ctype
    assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "name", ["app.jsx", "nope.css", "__init__.py", "..%2F__init__.py", "..%2F..%2Fapi.py", "%2Fetc%2Fpasswd"]
)
def test_unknown_static_names_are_404(ep: Endpoint, name: str) -> None:
    with ep.anon() as http:
        r = http.get(f"/ui/static/{name}")
    assert r.status_code == 404
    assert "import" not in r.text and "root:" not in r.text


# ----- heartbeat reports ------------------------------------------------------------------------------------

BUCKETS = [0.01, 0.1, 1.0]


def traffic(requests: int, errors: int, denied: int, hist: list[int]) -> dict[str, Any]:
    return {"requests": requests, "errors": errors, "denied": denied, "buckets": BUCKETS, "counts": hist}


def test_a_heartbeat_report_shows_in_services_and_the_traffic_graph(ep: Endpoint, ui: httpx.Client) -> None:
    register(ep, "orders", 92, "orders-ui-92")
    first = {
        "version": "1.4.0",
        "policyVersion": "pv-abc",
        "certificateExpiresIn": 3600.4,
        "inbound": {"web": traffic(10, 0, 0, [10, 10, 10, 10]), "catalog": traffic(5, 0, 5, [5, 5, 5, 5])},
    }
    assert heartbeat(ep, "orders-ui-92", first).status_code == 200
    second = first | {
        "inbound": {"web": traffic(30, 2, 0, [20, 30, 30, 30]), "catalog": traffic(9, 0, 9, [9, 9, 9, 9])}
    }
    r = heartbeat(ep, "orders-ui-92", second)
    assert r.status_code == 200 and r.json()["id"] == "orders-ui-92"

    services = {s["name"]: s for s in ui.get("/ui/data/services.json").json()}
    (inst,) = [i for i in services["orders"]["instances"] if i["id"] == "orders-ui-92"]
    assert (inst["version"], inst["policyVersion"], inst["certificateExpiresIn"]) == ("1.4.0", "pv-abc", 3600)
    assert inst["health"] == "passing" and inst["address"] == "10.1.0.92:15006"
    assert services["orders"]["declared"] and services["orders"]["healthy"] >= 1

    graph = ui.get("/ui/data/graph.json").json()
    assert graph["window"] == 30 and {"web", "orders", "catalog"} <= set(graph["nodes"])
    edges = {(e["source"], e["target"]): e for e in graph["edges"]}
    web = edges[("web", "orders")]
    assert web["requests"] == 20 and web["rps"] > 0 and web["errorRate"] == pytest.approx(0.1)
    assert web["policy"] == "partial" and web["denied"] is False
    assert web["p99Ms"] is not None and 10 <= web["p99Ms"] <= 100
    catalog = edges[("catalog", "orders")]
    assert catalog["deniedRps"] > 0 and catalog["denied"] is True and catalog["policy"] == "deny"

    page = ui.get("/ui", params={"q": "orders-ui-92"})
    assert "1.4.0" in page.text and "pv-abc" in page.text and "1 h 0 min" in page.text
    table = ui.get("/ui/traffic")
    assert 'id="edges"' in table.text and '<tr class="denied"><td>catalog</td><td>orders</td>' in table.text


def _callers(n: int) -> dict[str, Any]:
    return {f"svc-{i}": {"requests": 1} for i in range(n)}


@pytest.mark.parametrize(
    ("report", "needle"),
    [
        ({"inbound": _callers(600)}, "inbound"),
        ({"inbound": {"web": {"requests": -1}}}, "requests"),
        ({"inbound": {"web": {"requests": 3, "errors": -1}}}, "errors"),
        ({"inbound": {"web": {"requests": 3, "denied": -2}}}, "denied"),
        ({"inbound": {"web": {"requests": 1, "buckets": [0.1] * 65}}}, "buckets"),
        ({"inbound": {"web": {"requests": 1, "counts": [1] * 66}}}, "counts"),
        ({"inbound": {"web": {"errors": 1}}}, "requests"),
        ({"version": "v" * 65}, "version"),
        ({"inbound": {"web": {"requests": 1, "latency": 3}}}, "unknown field"),
        ({"uptime": 3}, "unknown field"),
        ({"inbound": ["web"]}, "inbound"),
    ],
)
def test_invalid_reports_are_refused_like_other_bad_bodies(
    ep: Endpoint, ui: httpx.Client, report: dict[str, Any], needle: str
) -> None:
    register(ep, "catalog", 93, "catalog-ui-93")
    r = heartbeat(ep, "catalog-ui-93", report)
    assert r.status_code in (400, 422), r.text
    code, message = error_of(r)
    assert code == "invalid_body" and needle in message, message
    services = {s["name"]: s for s in ui.get("/ui/data/services.json").json()}
    (inst,) = [i for i in services["catalog"]["instances"] if i["id"] == "catalog-ui-93"]
    assert inst["version"] is None  # nothing of the refused report was kept


def test_reports_need_the_instance_owner(ep: Endpoint) -> None:
    with ep.anon() as http:
        r = http.put("/v1/heartbeat/catalog-ui-93", json={"status": "passing", "report": {"version": "x"}})
    assert r.status_code == 401


def test_negative_histogram_counts_are_refused(ep: Endpoint) -> None:
    register(ep, "catalog", 94, "catalog-ui-94")
    report = {"inbound": {"web": {"requests": 1, "buckets": [0.1], "counts": [-5, 1]}}}
    assert heartbeat(ep, "catalog-ui-94", report).status_code == 400


def test_a_non_finite_certificate_expiry_does_not_break_the_dashboard(
    fresh_cp: InProcessControlPlane,
) -> None:
    ep = fresh_cp.endpoint
    register(ep, "orders", 95, "orders-ui-95")
    with ep.admin() as http:
        r = http.put(
            "/v1/heartbeat/orders-ui-95",
            content=b'{"status": "passing", "report": {"certificateExpiresIn": 1e999}}',
            headers={"content-type": "application/json"},
        )
    with ep.anon() as http:
        data = http.get("/ui/data/services.json", headers=with_cookie(login(ep)))
    assert r.status_code == 400 or data.status_code == 200, (r.status_code, data.status_code)


def test_a_non_finite_bucket_bound_does_not_break_the_graph(fresh_cp: InProcessControlPlane) -> None:
    ep = fresh_cp.endpoint
    register(ep, "orders", 96, "orders-ui-96")
    body = (
        b'{"status": "passing", "report": {"inbound": {"web": '
        b'{"requests": 4, "buckets": [0.1, 1e999], "counts": [0, 4, 4]}}}}'
    )
    with ep.admin() as http:
        r = http.put("/v1/heartbeat/orders-ui-96", content=body, headers={"content-type": "application/json"})
    with ep.anon() as http:
        graph = http.get("/ui/data/graph.json", headers=with_cookie(login(ep)))
    assert r.status_code == 400 or graph.status_code == 200, (r.status_code, graph.status_code)


def test_a_huge_login_form_is_refused_before_it_is_read(ep: Endpoint) -> None:
    """The 4 KiB limit holds while reading: a client announcing 100 MB gets 413 after a few KiB,
    without the server waiting for (and holding) the rest (it read the whole body first)."""
    import socket
    import ssl
    from urllib.parse import urlsplit

    from cp_testlib import verify_context

    parts = urlsplit(ep.url)
    context = verify_context(ep.bundle_pem)
    head = (
        f"POST /ui/login HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000000\r\n\r\n"
    )
    answer = b""
    with (
        socket.create_connection((parts.hostname, parts.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=parts.hostname) as tls,
    ):
        tls.sendall(head.encode() + b"token=" + b"x" * 8192)
        try:
            while b"\r\n\r\n" not in answer:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except (TimeoutError, ssl.SSLError, OSError) as exc:
            raise AssertionError(f"no answer before the body ended: {exc!r}") from None
    assert answer.startswith(b"HTTP/1.1 413"), answer[:80]


def test_explain_with_claims_nested_past_the_stack_is_answered_not_a_500(ui: httpx.Client) -> None:
    deep = "[" * 5000 + "]" * 5000
    r = ui.get("/ui/explain", params={"from": "web", "to": "orders", "claims": f"role={deep}"})
    assert r.status_code == 200


def test_a_report_too_large_to_graph_is_refused(ep: Endpoint) -> None:
    """10**400 requests made every operator's Traffic page a 500 (float overflow) while it stood."""
    register(ep, "orders", 1, "orders-huge")
    r = heartbeat(ep, "orders-huge", {"inbound": {"web": {"requests": 10**400}}})
    assert r.status_code == 400
