"""HTML for the dashboard: one layout and small builders. Every value is escaped here; pages build
markup only through these functions or with :func:`esc` on every interpolated value."""

from __future__ import annotations

import time
from html import escape
from urllib.parse import urlencode

NAV = (
    ("/ui", "Services"),
    ("/ui/access", "Who may call whom"),
    ("/ui/traffic", "Traffic"),
    ("/ui/explain", "Explain"),
    ("/ui/config", "Configuration"),
)


def esc(value: object) -> str:
    """Text for HTML content and quoted attributes."""
    return escape("" if value is None else str(value), quote=True)


def link(href: str, text: str, **attrs: str) -> str:
    """``<a>`` with escaped href, text and attributes."""
    extra = "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in attrs.items())
    return f'<a href="{esc(href)}"{extra}>{esc(text)}</a>'


def url(base: str, **query: str) -> str:
    """``base?query`` with the query encoded."""
    return f"{base}?{urlencode(query)}" if query else base


def rule_link(rule: str) -> str:
    """A ``FILE:LINE`` rule as a link to its source, ``default`` as plain text."""
    file, sep, line = rule.rpartition(":")
    if not sep or not (line.isascii() and line.isdigit()):
        return f'<span class="rule">{esc(rule)}</span>'
    return link(url("/ui/source", file=file, line=line) + f"#L{line}", rule, class_="rule")


def ago(seconds: float | None) -> str:
    """``12 s ago`` style, or an em dash."""
    if seconds is None:
        return "&mdash;"
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def duration(seconds: float | None) -> str:
    """``23 h 10 min`` style, or an em dash."""
    if seconds is None:
        return "&mdash;"
    if seconds <= 0:
        return '<span class="bad">expired</span>'
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours} h {rest // 60} min" if hours else f"{rest // 60} min {rest % 60} s"


def page(title: str, body: str, active: str = "", refresh_note: str = "") -> str:
    """The whole document: header, navigation, ``body`` (already safe HTML)."""
    nav = " ".join(
        f'<a href="{href}" class="{"on" if href == active else ""}">{esc(text)}</a>' for href, text in NAV
    )
    stamp = time.strftime("%H:%M:%S")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} · Meshgate</title>
<link rel="icon" href="data:,"><link rel="stylesheet" href="/ui/static/app.css">
<script src="/ui/static/app.js" defer></script>
</head><body>
<header><strong>Meshgate</strong> <nav>{nav}</nav>
<form method="post" action="/ui/logout" class="logout"><button type="submit">Log out</button></form></header>
<main><h1>{esc(title)}</h1>{body}</main>
<footer>rendered {stamp}{esc(refresh_note)} · read-only</footer>
</body></html>
"""


def login_page(error: str = "") -> str:
    """The login form (no navigation: nothing else is visible before it)."""
    message = f'<p class="bad" role="alert">{esc(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Log in · Meshgate</title>
<link rel="icon" href="data:,"><link rel="stylesheet" href="/ui/static/app.css"></head><body class="login">
<main><h1>Meshgate dashboard</h1>{message}
<form method="post" action="/ui/login">
<label for="token">Admin token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<p class="hint">It is in the control plane's data folder, file <code>admin-token</code>.</p>
<button type="submit">Log in</button></form></main></body></html>
"""
