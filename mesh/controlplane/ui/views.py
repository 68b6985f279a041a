"""The dashboard's pages, server-rendered. Each takes the control plane and the request's query."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mesh.controlplane.ui.data import config_data, graph_data, matrix_data, services_data
from mesh.controlplane.ui.html import ago, duration, esc, link, page, rule_link, url
from shared.policy.explain import Answer, Question, explain

if TYPE_CHECKING:
    from mesh.controlplane.core import ControlPlane

HEALTH = {"passing": "ok", "warning": "warn", "critical": "bad"}


def services_page(cp: ControlPlane, q: str) -> str:
    """Every service and instance; ``q`` filters by service name, instance id, address or health."""
    needle = q.strip().lower()
    rows = []
    for service in services_data(cp):
        for inst in service["instances"] or [None]:
            text = " ".join(
                str(x) for x in (service["name"], *(inst.values() if inst else ())) if x is not None
            ).lower()
            if needle and needle not in text:
                continue
            if inst is None:
                rows.append(
                    f'<tr data-search="{esc(text)}"><td>{esc(service["name"])}</td>'
                    f'<td colspan="7" class="muted">declared, no instance registered</td></tr>'
                )
                continue
            health = inst["health"]
            rows.append(
                f'<tr data-search="{esc(text)}"><td>{esc(service["name"])}</td><td>{esc(inst["id"])}</td>'
                f"<td>{esc(inst['address'])}</td>"
                f'<td><span class="pill {HEALTH.get(health, "")}" title="{esc(inst["checkOutput"])}">'
                f"{esc(health)}</span></td>"
                f"<td>{esc(inst['version'] or '—')}</td>"
                f"<td><code>{esc(inst['policyVersion'] or '—')}</code></td>"
                f"<td>{duration(inst['certificateExpiresIn'])}</td><td>{ago(inst['lastHeartbeatAgo'])}</td></tr>"
            )
    summary = ", ".join(f"{esc(s['name'])} {s['healthy']}/{len(s['instances'])}" for s in services_data(cp))
    body = f"""<form method="get" action="/ui" class="filter">
<input type="search" name="q" value="{esc(q)}" placeholder="filter: service, instance, address, health"
 aria-label="filter" data-filter="#services tbody tr"><button type="submit">Filter</button></form>
<p class="muted">healthy/instances: {summary or "none"}</p>
<table id="services"><thead><tr><th>service</th><th>instance</th><th>address</th><th>health</th>
<th>version</th><th>policy version</th><th>certificate expires in</th><th>last heartbeat</th></tr></thead>
<tbody>{"".join(rows) or '<tr><td colspan="8" class="muted">nothing matches</td></tr>'}</tbody></table>"""
    return page("Services", body, "/ui")


def access_page(cp: ControlPlane) -> str:
    """The who-may-call-whom matrix: rows are callers, columns targets."""
    data = matrix_data(cp)
    if data is None:
        return page("Who may call whom", '<p class="bad">no valid policy set loaded yet</p>', "/ui/access")
    cells = {(c["from"], c["to"]): c for c in data["cells"]}
    services = data["services"]
    head = "".join(f'<th scope="col">{esc(t)}</th>' for t in services)
    rows = []
    for source in services:
        tds = []
        for target in services:
            c = cells[(source, target)]
            marks = ("default " if c["default"] else "") + ("audit" if c["audit"] else "")
            shown = next((p for p in c["probes"] if p["rule"] == c["rule"]), c["probes"][0])
            explain_href = url(
                "/ui/explain",
                **{"from": source, "to": target, "method": shown["method"], "path": shown["path"]},
            )
            probes = "; ".join(
                f"{p['method']} {p['path']}: {'allow' if p['allowed'] else 'deny'} ({p['rule']})"
                for p in c["probes"]
            )
            tds.append(
                f'<td class="cell {esc(c["verdict"])} {esc(marks)}" data-from="{esc(source)}" '
                f'data-to="{esc(target)}" title="{esc(c["reason"])} | {esc(probes)}">'
                f'<span class="verdict">{esc(c["verdict"].upper())}</span>'
                + (f' <span class="mark">{esc(marks.strip())}</span>' if marks else "")
                + f"<br>{rule_link(c['rule'])}<br>{link(explain_href, 'explain', class_='small')}</td>"
            )
        rows.append(f'<tr><th scope="row">{esc(source)}</th>{"".join(tds)}</tr>')
    body = f"""<p>Computed by the policy engine from the <code>AccessPolicy</code> documents: for each caller
and target it decides one request per method and path the target's rules name (and <code>GET /</code>).
<span class="cell allow">ALLOW</span> every one, <span class="cell deny">DENY</span> none,
<span class="cell partial">PARTIAL</span> some. <em>default</em>: no rule decided (Mesh default or the
implicit deny of a target with policies); <em>audit</em>: an audit-mode policy would decide otherwise.
Each cell links to its deciding rule.</p>
<table id="matrix" class="matrix"><thead><tr><th>from \\ to</th>{head}</tr></thead>
<tbody>{"".join(rows)}</tbody></table>"""
    return page("Who may call whom", body, "/ui/access")


def traffic_page(cp: ControlPlane) -> str:
    """The live graph (drawn by app.js from /ui/data/graph.json) and the same edges as a table."""
    data = graph_data(cp)
    rows = "".join(_edge_row(e) for e in data["edges"])
    body = f"""<p>Services as nodes, calls seen by the sidecars in the last {data["window"]:.0f} s as edges:
requests per second, error rate (5xx) and P99 latency. Red dashed edges are calls the policy denies.
Refreshes every 2 s.</p>
<div id="graph" data-src="/ui/data/graph.json" aria-label="traffic graph"></div>
<table id="edges"><thead><tr><th>from</th><th>to</th><th>req/s</th><th>errors</th><th>P99 ms</th>
<th>denied/s</th><th>policy</th></tr></thead><tbody>{rows}</tbody></table>"""
    return page("Traffic", body, "/ui/traffic")


def _edge_row(e: dict[str, Any]) -> str:
    p99 = "—" if e["p99Ms"] is None else f"{e['p99Ms']:.1f}"
    denied = "denied" if e["denied"] else ""
    return (
        f'<tr class="{denied}"><td>{esc(e["source"])}</td><td>{esc(e["target"])}</td>'
        f"<td>{e['rps']:.2f}</td><td>{e['errorRate'] * 100:.1f}%</td><td>{p99}</td>"
        f"<td>{e['deniedRps']:.2f}</td><td>{esc(e['policy'] or '—')}</td></tr>"
    )


def _pairs(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if line.strip():
            if not sep or not key.strip():
                raise ValueError(f"expected NAME=VALUE, got {line.strip()!r}")
            out[key.strip().lower()] = value.strip()
    return out


def explain_page(cp: ControlPlane, query: dict[str, str]) -> str:
    """A form with the questions of ``meshgate policy explain`` and, when asked, the answer."""
    current = cp.watcher.current
    services = sorted(current.services) if current is not None else []
    routes = sorted(current.routes) if current is not None else []
    options = "".join(f'<option value="{esc(s)}">' for s in [*services, *routes])
    f = {
        k: query.get(k, "")
        for k in ("from", "to", "method", "path", "headers", "principal", "claims", "route")
    }
    result = ""
    if f["from"] and f["to"] and current is not None:
        try:
            claims: dict[str, Any] = {}
            for key, value in _pairs(f["claims"]).items():
                try:
                    claims[key] = json.loads(value)
                except (ValueError, RecursionError):  # not JSON (or nested past Python's stack)
                    claims[key] = value
            answer: Answer = explain(
                current,
                Question(
                    f["from"],
                    f["to"],
                    route=bool(f["route"]),
                    method=f["method"] or "GET",
                    path=f["path"] or "/",
                    headers=_pairs(f["headers"]),
                    principal=f["principal"] or None,
                    claims=claims,
                ),
            )
        except ValueError as exc:
            result = f'<p class="bad" role="alert">{esc(exc)}</p>'
        else:
            d = answer.decision
            verdict = "ALLOW" if d.allowed else "DENY"
            audit = ""
            if d.audit is not None:
                shadow = "ALLOW" if d.audit.allowed else "DENY"
                audit = (
                    f"<p>audit: {shadow} {rule_link(d.audit.rule)} "
                    f"(AccessPolicy/{esc(d.audit.policy)}, not enforced)</p>"
                )
            notes = "".join(f'<p class="muted">note: {esc(n)}</p>' for n in answer.notes)
            result = f"""<section id="answer" class="answer {verdict.lower()}">
<p class="verdict">{verdict}</p><p>deciding rule: {rule_link(d.rule)}</p>
<p>reason: {esc(d.reason)}</p><p>caller: <code>{esc(answer.identity)}</code></p>{audit}{notes}</section>"""
    checked = " checked" if f["route"] else ""
    body = f"""<form method="get" action="/ui/explain" class="explain">
<datalist id="names">{options}</datalist>
<label>from <input name="from" list="names" value="{esc(f["from"])}" required placeholder="service or spiffe://..."></label>
<label>to <input name="to" list="names" value="{esc(f["to"])}" required></label>
<label><input type="checkbox" name="route" value="1"{checked}> to is a gateway route</label>
<label>method <input name="method" value="{esc(f["method"] or "GET")}"></label>
<label>path <input name="path" value="{esc(f["path"] or "/")}"></label>
<label>headers <textarea name="headers" rows="2"
 placeholder="name=value, one per line">{esc(f["headers"])}</textarea></label>
<label>end-user principal <input name="principal" value="{esc(f["principal"])}"></label>
<label>JWT claims <textarea name="claims" rows="2"
 placeholder="role=admin">{esc(f["claims"])}</textarea></label>
<button type="submit">Explain</button></form>{result}
<p class="muted">The same engine and answer as <code>meshgate policy explain</code>.</p>"""
    return page("Explain", body, "/ui/explain")


def config_page(cp: ControlPlane) -> str:
    """Policy version, load status, the last reload's errors linked to file and line."""
    c = config_data(cp)
    errors = "".join(
        "<li>"
        + rule_link(f"{e['file']}:{e['line']}")
        + f" {esc(e['ref'])} {esc(e['field'])}: {esc(e['message'])}</li>"
        for e in c["errors"]
    )
    state = (
        '<span class="pill ok">valid</span>'
        if c["ok"]
        else '<span class="pill bad">errors: last good set kept</span>'
    )
    files = "".join(f"<li>{link(url('/ui/source', file=f), f)}</li>" for f in c["files"])
    body = f"""<dl class="facts"><dt>policy version in force</dt>
<dd><code>{esc(c["version"] or "none")}</code></dd>
<dt>last load</dt><dd>{state}</dd><dt>generation</dt><dd>{c["generation"]}</dd>
<dt>reloads</dt><dd>{c["reloadsOk"]} ok, {c["reloadsFailed"]} failed</dd>
<dt>folders</dt><dd>{esc(", ".join(c["policies"]))}</dd></dl>
<h2>Last reload errors</h2><ul id="errors">{errors or '<li class="muted">none</li>'}</ul>
<h2>Files</h2><ul>{files}</ul>"""
    return page("Configuration", body, "/ui/config")


def source_page(cp: ControlPlane, file: str, line: str) -> str | None:
    """One policy file with line numbers and ``line`` highlighted; None unless the file is one the
    control plane loaded (no other path is ever read)."""
    if file not in set(cp.watcher.status.files):
        return None
    try:
        lines = Path(file).read_text(errors="replace").splitlines()
    except OSError as exc:
        return page(file, f'<p class="bad">cannot read: {esc(exc.strerror)}</p>', "/ui/config")
    wanted = int(line) if line.isascii() and line.isdigit() and len(line) < 10 else 0
    rows = "".join(
        f'<tr id="L{n}" class="{"hit" if n == wanted else ""}">'
        f'<td class="n">{n}</td><td><pre>{esc(t)}</pre></td></tr>'
        for n, t in enumerate(lines, 1)
    )
    return page(file, f'<table class="source">{rows}</table>', "/ui/config")
