"""The operator dashboard at ``/ui`` of a ``meshgate up`` demo stack, driven by a real Chromium.

One stack for the whole module (started as test_demo_e2e.py starts it, with free ports) and one browser
session logged in through the form:

1. Without a session, pages redirect to the login form and data endpoints answer 401; a forged cookie
   and a wrong token get nothing; logging out ends the browser's session.
2. The services page lists every instance passing with the policy version in force; the filter narrows.
3. The access matrix shows the engine's verdicts; a rule link opens the policy source at that line.
4. Explain answers as ``meshgate policy explain`` does (same verdict, same deciding rule).
5. The traffic graph gains edges after calls through the gateway without a reload, and a call the
   mesh denies (web -> orders /admin/stats through web's sidecar) marks its edge denied.
6. A screenshot of every page is kept under test-artifacts/dashboard/.
7. Every request the browser made went to the control plane itself.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from e2e_lib import MESHGATE, REPO
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    expect,
    sync_playwright,
)
from playwright.sync_api import Request as BrowserRequest
from test_demo_e2e import Up, demo_copy

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists() and not os.environ.get("CI"):
    pytest.skip(f"{CHROMIUM} is missing (Debian package chromium)", allow_module_level=True)

ARTIFACTS = Path(os.environ.get("MESHGATE_TEST_ARTIFACTS", REPO / "test-artifacts")) / "dashboard"
DATA = ("services", "matrix", "graph", "config")
CREATE_PRODUCT = "/demo.catalog.v1.Catalog/CreateProduct"
WAIT_MS = 20_000  # every browser wait is bounded by this


@dataclass
class Stack:
    """The running demo stack and what the tests need of it."""

    up: Up
    cp: str  # https://127.0.0.1:PORT, also the origin every page request must have
    gateway: str
    token: str
    web_outbound: int  # web's sidecar outbound proxy port (what the web app calls the mesh through)
    requests: list[str] = field(default_factory=list)  # every URL the browser requested
    console_errors: list[str] = field(default_factory=list)


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def cp_request(
    stack: Stack, method: str, path: str, body: str | None = None, cookie: str | None = None
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request to the control plane, unverified TLS, redirects not followed."""
    parts = urllib.parse.urlsplit(stack.cp)
    conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=10, context=_tls())
    headers = {"content-type": "application/x-www-form-urlencoded"} if body is not None else {}
    if cookie is not None:
        headers["cookie"] = f"meshgate_ui={cookie}"
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def get(url: str, proxy: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """Plain HTTP GET (no proxy from the environment); error statuses are returned, not raised."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy} if proxy else {}))
    try:
        with opener.open(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


def _parse_ready(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.removeprefix("ready: ").split())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    up = Up(demo_copy(tmp_path_factory.mktemp("dashboard")))
    try:
        ready = _parse_ready(up.wait_ready())
        token = (up.state_dir / "control-plane" / "admin-token").read_text().strip()
        outbound = next(
            int(m.group(1))
            for line in list(up.lines)
            if line.startswith("web-sidecar ")
            and (m := re.search(r"sidecar for \S+/sa/web: inbound \d+, outbound (\d+)", line))
        )
        yield Stack(up, ready["control-plane"], ready["gateway"], token, outbound)
    except BaseException:
        print("\n".join(up.lines[-80:]))
        raise
    finally:
        code = up.stop(signal.SIGTERM)
    assert code == 0, "\n".join(up.lines[-40:])


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
    yield chromium
    chromium.close()


def new_context(browser: Browser, stack: Stack) -> BrowserContext:
    """A browser context on the control plane whose requests and console errors are recorded."""
    ctx = browser.new_context(
        ignore_https_errors=True, base_url=stack.cp, viewport={"width": 1280, "height": 800}
    )
    ctx.set_default_timeout(WAIT_MS)

    def on_request(request: BrowserRequest) -> None:
        stack.requests.append(request.url)

    def on_console(message: ConsoleMessage) -> None:
        # Expected: the 401 of a wrong token, and Chromium's own /favicon.ico (a 404: there is none).
        url = urllib.parse.urlsplit(message.location.get("url", ""))
        expected = message.text.startswith("Failed to load resource") and (
            url.path == "/favicon.ico" or (url.path == "/ui/login" and "401" in message.text)
        )
        if message.type == "error" and not expected:
            stack.console_errors.append(f"{message.text} ({message.location})")

    def on_page(tab: Page) -> None:
        tab.on("pageerror", lambda error: stack.console_errors.append(f"page error: {error}"))

    ctx.on("request", on_request)
    ctx.on("console", on_console)
    ctx.on("page", on_page)
    return ctx


def log_in(tab: Page, token: str) -> None:
    """Submit the login form with ``token``."""
    tab.fill("#token", token)
    tab.click('form[action="/ui/login"] button[type=submit]')


@pytest.fixture(scope="module")
def context(browser: Browser, stack: Stack) -> Iterator[BrowserContext]:
    ctx = new_context(browser, stack)
    yield ctx
    ctx.close()


@pytest.fixture(scope="module")
def page(context: BrowserContext, stack: Stack) -> Page:
    """A page logged in through the login form (after a wrong token first)."""
    tab = context.new_page()
    tab.goto("/ui")  # no session: the login form
    assert urllib.parse.urlsplit(tab.url).path == "/ui/login"
    log_in(tab, "not-the-admin-token")
    expect(tab.get_by_role("alert")).to_have_text("That is not the admin token.")
    assert not context.cookies()
    log_in(tab, stack.token)
    tab.wait_for_url(f"{stack.cp}/ui")
    return tab


def session_cookie(context: BrowserContext) -> str:
    (cookie,) = [c for c in context.cookies() if c["name"] == "meshgate_ui"]
    return cookie["value"]


def data(stack: Stack, context: BrowserContext, name: str) -> Any:
    status, _, body = cp_request(stack, "GET", f"/ui/data/{name}.json", cookie=session_cookie(context))
    assert status == 200, body
    return json.loads(body)


def test_without_a_session_nothing_is_shown(stack: Stack) -> None:
    forged = "9999999999." + "ab" * 32
    for cookie in (None, forged, "", "1.2", "9999999999." + "0" * 63 + "g"):
        for path in ("/ui", "/ui/access", "/ui/traffic", "/ui/explain", "/ui/config", "/ui/source"):
            status, headers, _ = cp_request(stack, "GET", path, cookie=cookie)
            assert (status, headers["location"]) == (303, "/ui/login"), (path, cookie)
        for name in DATA:
            status, headers, body = cp_request(stack, "GET", f"/ui/data/{name}.json", cookie=cookie)
            assert status == 401, (name, cookie, body)
            assert headers["content-type"].startswith("application/json")
            assert json.loads(body)["error"] == "unauthenticated"

    status, headers, body = cp_request(stack, "POST", "/ui/login", body="token=not-the-admin-token")
    assert status == 401
    assert headers.get_all("set-cookie") is None
    assert b"That is not the admin token." in body

    # The same requests with a real session succeed: the refusals above are about the session.
    status, headers, _ = cp_request(
        stack, "POST", "/ui/login", body=urllib.parse.urlencode({"token": stack.token})
    )
    assert (status, headers["location"]) == (303, "/ui")
    cookie = headers["set-cookie"]
    for attribute in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/ui"):
        assert attribute in cookie
    value = cookie.split(";", 1)[0].removeprefix("meshgate_ui=")
    assert cp_request(stack, "GET", "/ui/access", cookie=value)[0] == 200
    for name in DATA:
        assert cp_request(stack, "GET", f"/ui/data/{name}.json", cookie=value)[0] == 200
    # The source page shows only the policy files the control plane loaded.
    policy = str(REPO / "policies" / "access.yaml")
    for file in ("/etc/passwd", f"{policy}/../../../../etc/passwd", "policies/access.yaml"):
        path = "/ui/source?" + urllib.parse.urlencode({"file": file, "line": "1"})
        assert cp_request(stack, "GET", path, cookie=value)[0] == 404, file
    path = "/ui/source?" + urllib.parse.urlencode({"file": policy, "line": "1"})
    assert cp_request(stack, "GET", path, cookie=value)[0] == 200


def test_a_non_ascii_cookie_is_refused_not_an_error(stack: Stack) -> None:
    cookie = "9999999999." + "\u00e9" * 64  # sent as latin-1 bytes, as a browser may
    status, headers, _ = cp_request(stack, "GET", "/ui", cookie=cookie)
    assert (status, headers["location"]) == (303, "/ui/login")
    assert cp_request(stack, "GET", "/ui/data/services.json", cookie=cookie)[0] == 401


def test_services_page_lists_every_instance_passing(
    stack: Stack, context: BrowserContext, page: Page
) -> None:
    (cookie,) = context.cookies()
    assert (cookie["name"], cookie["path"], cookie["httpOnly"], cookie["secure"], cookie["sameSite"]) == (
        "meshgate_ui",
        "/ui",
        True,
        True,
        "Strict",
    )
    version = data(stack, context, "config")["version"]
    assert re.fullmatch(r"[0-9a-f]{16}", version)

    def rows() -> list[list[str]]:
        return list(
            page.eval_on_selector_all(
                "#services tbody tr",
                "rows => rows.map(r => [...r.cells].map(c => c.innerText.trim()))",
            )
        )

    def complete(found: list[list[str]]) -> bool:
        instances = [r for r in found if r[0] in ("web", "orders", "catalog")]
        return sorted(r[0] for r in instances) == ["catalog", "orders", "orders", "web"] and all(
            r[3] == "passing" and r[5] == version for r in instances
        )

    page.goto("/ui")
    deadline = time.monotonic() + 20  # the first heartbeats carry the policy version
    while not complete(rows()) and time.monotonic() < deadline:
        time.sleep(0.5)
        page.reload()
    assert complete(rows()), rows()
    expect(page.locator("p.muted").first).to_contain_text("orders 2/2")

    page.fill("input[data-filter]", "orders")  # filters as one types, no round trip
    shown = page.locator("#services tbody tr:not([hidden])")
    expect(shown).to_have_count(2)
    assert [c.strip() for c in shown.locator("td:first-child").all_inner_texts()] == ["orders", "orders"]
    page.fill("input[data-filter]", "")
    expect(shown).to_have_count(len(rows()))


def _rule_line(href: str) -> int:
    """The line of a rule link ``/ui/source?file=.../policies/access.yaml&line=N#LN``."""
    parts = urllib.parse.urlsplit(href)
    query = urllib.parse.parse_qs(parts.query)
    assert parts.path == "/ui/source"
    assert query["file"] == [str(REPO / "policies" / "access.yaml")]
    line = query["line"][0]
    assert parts.fragment == f"L{line}"
    return int(line)


def test_matrix_cells_and_rule_links(page: Page) -> None:
    page.goto("/ui/access")
    allowed = page.locator('#matrix td.cell[data-from="gateway"][data-to="web"]')
    expect(allowed).to_have_class(re.compile(r"(^|\s)allow(\s|$)"))
    expect(allowed.locator(".verdict")).to_have_text("ALLOW")
    link = allowed.locator('a[href^="/ui/source"]')
    href = link.get_attribute("href") or ""
    line = _rule_line(href)
    expect(link).to_have_text(f"{REPO / 'policies' / 'access.yaml'}:{line}")
    source = (REPO / "policies" / "access.yaml").read_text().splitlines()
    assert source[line - 1].strip() == "- action: allow"  # web-access: allow from gateway

    denied = page.locator('#matrix td.cell[data-from="catalog"][data-to="web"]')
    expect(denied).to_have_class(re.compile(r"(^|\s)deny(\s|$)"))
    expect(denied.locator(".verdict")).to_have_text("DENY")
    expect(page.locator("#matrix td.cell")).to_have_count(16)  # catalog, gateway, orders, web squared

    link.click()
    page.wait_for_url(re.compile(r"/ui/source\?"))
    hit = page.locator("tr.hit")
    expect(hit).to_have_count(1)
    expect(hit).to_have_attribute("id", f"L{line}")
    expect(hit.locator("pre")).to_have_text(source[line - 1])

    # The cell's explain link asks the same question and gets the same answer.
    page.goto("/ui/access")
    allowed.get_by_role("link", name="explain").click()
    page.wait_for_url(re.compile(r"/ui/explain\?"))
    expect(page.locator("#answer p.verdict")).to_have_text("ALLOW")
    rule = f"{REPO / 'policies' / 'access.yaml'}:{line}"
    expect(page.locator("#answer")).to_contain_text(f"deciding rule: {rule}")


def test_rule_links_have_class_rule(page: Page) -> None:
    page.goto("/ui/access")
    assert page.locator('#matrix td.cell[data-from="gateway"][data-to="web"] a.rule').count() == 1


def cli_explain(*args: str) -> tuple[str, str]:
    """Verdict and deciding rule (the first two lines) of ``meshgate policy explain``."""
    result = subprocess.run(
        [MESHGATE, "policy", "explain", str(REPO / "policies"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    verdict, rule = result.stdout.splitlines()[:2]
    return verdict, rule


def ask(page: Page, fields: dict[str, str], route: bool = False) -> tuple[str, str]:
    """Fill and submit the explain form; the answer's verdict and deciding rule."""
    page.goto("/ui/explain")
    form = page.locator("form.explain")
    for name, value in fields.items():
        form.locator(f'[name="{name}"]').fill(value)
    if route:
        form.locator('input[name="route"]').check()
    form.locator("button[type=submit]").click()
    page.wait_for_url(re.compile(r"/ui/explain\?"))
    answer = page.locator("section#answer")
    expect(answer).to_be_visible()
    rule = answer.locator("p", has_text="deciding rule:").inner_text()
    return answer.locator("p.verdict").inner_text(), rule.removeprefix("deciding rule:").strip()


def test_explain_answers_as_the_cli(page: Page) -> None:
    asked = {"from": "orders", "to": "catalog", "method": "POST", "path": CREATE_PRODUCT}
    got = ask(page, asked)
    assert got[0] == "DENY"
    assert got == cli_explain(
        "--from", "orders", "--to", "catalog", "--method", "POST", "--path", CREATE_PRODUCT
    )

    fields = {
        "from": "gateway",
        "to": "catalog-api",
        "method": "POST",
        "path": "/api/catalog/products",
        "principal": "bob",
        "claims": "role=admin",
    }
    got = ask(page, fields, route=True)
    assert got[0] == "ALLOW"
    assert got == cli_explain(
        "--from",
        "gateway",
        "--to",
        "catalog-api",
        "--route",
        "--method",
        "POST",
        "--path",
        "/api/catalog/products",
        "--principal",
        "bob",
        "--claim",
        "role=admin",
    )
    assert got[1].startswith(f"{REPO / 'policies' / 'edge.yaml'}:")


def _edges(page: Page) -> set[tuple[str, str]]:
    pairs = page.eval_on_selector_all(
        "#graph g.edge", "gs => gs.map(g => [g.dataset.source, g.dataset.target])"
    )
    return {(s, t) for s, t in pairs}


def test_graph_gains_edges_without_a_reload(stack: Stack, page: Page) -> None:
    page.goto("/ui/traffic")
    page.wait_for_selector("#graph[data-edges] svg")
    before = _edges(page)
    assert int(page.get_attribute("#graph", "data-edges") or "-1") == len(before)
    assert ("web", "orders") not in before  # no call went through the mesh yet
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads

    for _ in range(3):
        status, _, body = get(f"{stack.gateway}/shop/")
        assert status == 200, body
        assert b'"shop":"meshgate demo"' in body
    web_orders = page.locator('#graph g.edge[data-source="web"][data-target="orders"]')
    web_orders.wait_for(state="attached", timeout=WAIT_MS)
    for source, target in (("gateway", "web"), ("web", "catalog")):
        page.locator(f'#graph g.edge[data-source="{source}"][data-target="{target}"]').wait_for(
            state="attached", timeout=WAIT_MS
        )
    assert page.evaluate("window.__sameDocument") is True
    after = _edges(page)
    assert {("gateway", "web"), ("web", "orders"), ("web", "catalog")} <= after
    assert int(page.get_attribute("#graph", "data-edges") or "0") == len(after) > len(before)
    assert "denied" not in (web_orders.get_attribute("class") or "").split()  # policy: partial
    expect(page.locator("#edges tbody tr", has_text="orders").first).to_be_attached()

    # What a misbehaving web app could do: call orders' admin endpoint through its own sidecar. The
    # orders sidecar denies it (AccessPolicy orders-access, rule no-admin-from-mesh) and counts it.
    status, headers, body = get("http://orders/admin/stats", proxy=f"http://127.0.0.1:{stack.web_outbound}")
    assert (status, headers.get("x-meshgate-error")) == (403, "policy_denied"), body
    page.locator('#graph g.edge.denied[data-source="web"][data-target="orders"]').wait_for(
        state="attached", timeout=WAIT_MS
    )
    to_orders = page.locator("td:nth-child(2)", has_text="orders")
    row = page.locator("#edges tbody tr.denied").filter(has=to_orders)
    expect(row.first).to_contain_text("web")
    assert page.evaluate("window.__sameDocument") is True


PAGES = {
    "services": "/ui",
    "access": "/ui/access",
    "traffic": "/ui/traffic",
    "explain": "/ui/explain?"
    + urllib.parse.urlencode(
        {
            "from": "gateway",
            "to": "catalog-api",
            "route": "1",
            "method": "POST",
            "path": "/api/catalog/products",
            "principal": "bob",
            "claims": "role=admin",
        }
    ),
    "config": "/ui/config",
}


def test_screenshots_of_every_page(page: Page) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name, path in PAGES.items():
        page.goto(path)
        expect(page.locator("main h1")).to_be_visible()
        if name == "traffic":
            page.wait_for_selector("#graph[data-edges] svg")
        if name == "config":
            expect(page.locator("dd code").first).to_have_text(re.compile(r"^[0-9a-f]{16}$"))
            expect(page.locator("#errors li")).to_have_text(["none"])
        shot = ARTIFACTS / f"{name}.png"
        shot.unlink(missing_ok=True)
        page.screenshot(path=str(shot), full_page=True)
    for name in PAGES:
        shot = ARTIFACTS / f"{name}.png"
        assert shot.is_file() and shot.stat().st_size > 0, shot


def test_log_out_ends_the_browser_session(browser: Browser, stack: Stack) -> None:
    ctx = new_context(browser, stack)
    try:
        tab = ctx.new_page()
        tab.goto("/ui/login")
        log_in(tab, stack.token)
        tab.wait_for_url(f"{stack.cp}/ui")
        tab.get_by_role("button", name="Log out").click()
        tab.wait_for_url(f"{stack.cp}/ui/login")
        assert not ctx.cookies()
        tab.goto("/ui/config")
        assert urllib.parse.urlsplit(tab.url).path == "/ui/login"
    finally:
        ctx.close()


def test_nothing_is_fetched_from_outside(stack: Stack, page: Page) -> None:
    page.goto("/ui/traffic")
    page.wait_for_selector("#graph[data-edges] svg")
    origin = stack.cp + "/"
    assert stack.requests, "no request recorded"
    outside = [url for url in stack.requests if not url.startswith(origin)]
    assert not outside, outside
    paths = {urllib.parse.urlsplit(url).path for url in stack.requests}
    assert {"/ui/login", "/ui", "/ui/static/app.js", "/ui/static/app.css", "/ui/data/graph.json"} <= paths
    assert not stack.console_errors, stack.console_errors
