"""Route matching: host, path (exact, prefix, template), method and header matches -> one Route.

Order, most specific first: hosts (exact name, then ``*.suffix`` wildcards by length, then ``*``), then
within a host exact paths, then templates (more literal segments first), then prefixes (longest
first); among equal paths, routes with more header matches, then with a method list, first; remaining
ties keep the order of the policy documents (by name). Prefixes match whole segments:
``/api`` takes ``/api`` and ``/api/x`` but not ``/apix``. Templates: ``{name}`` is one segment,
``{name=**}`` (last only) the rest of the path.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from shared.config.model.access import HeaderMatch
from shared.config.model.edge import Backend, Route


@dataclass(frozen=True)
class Match:
    """A route chosen for a request: the backend picked by weight and the path to send upstream."""

    route: Route
    backend: Backend
    upstream_path: str  # path (with the query) after the route's rewrite
    params: Mapping[str, str]  # template captures


#: RFC 3986 pchar characters (and "/") that need no percent-encoding in a path.
_PATH_SAFE = "/-._~!$&'()*+,;=:@"


class _Template:
    def __init__(self, template: str) -> None:
        self.parts: list[tuple[str, str]] = []  # ("lit", text) | ("var", name) | ("rest", name)
        segments = template.strip("/").split("/") if template.strip("/") else []
        for i, seg in enumerate(segments):
            if seg.startswith("{") and seg.endswith("}"):
                name = seg[1:-1]
                if name.endswith("=**"):
                    if i != len(segments) - 1:
                        raise ValueError(f"{template}: {{{name}}} must be the last segment")
                    self.parts.append(("rest", name[:-3]))
                else:
                    self.parts.append(("var", name))
            else:
                self.parts.append(("lit", seg))
        self.literals = sum(1 for kind, _ in self.parts if kind == "lit")

    def match(self, path: str) -> dict[str, str] | None:
        segments = path.strip("/").split("/") if path.strip("/") else []
        params: dict[str, str] = {}
        for i, (kind, text) in enumerate(self.parts):
            if kind == "rest":
                params[text] = "/".join(segments[i:])
                return params
            if i >= len(segments):
                return None
            if kind == "lit":
                if segments[i] != text:
                    return None
            else:
                if not segments[i]:
                    return None
                params[text] = segments[i]
        return params if len(segments) == len(self.parts) else None


def _prefix_matches(prefix: str, path: str) -> bool:
    if prefix == "/" or path == prefix:
        return True
    base = prefix.rstrip("/")
    return path.startswith(base + "/") or path == base


def _header_ok(rules: Sequence[HeaderMatch], headers: Mapping[str, str]) -> bool:
    for rule in rules:
        value = headers.get(rule.name.lower())
        if rule.present is not None and (value is not None) != rule.present:
            return False
        if rule.exact is not None and value != rule.exact:
            return False
        if rule.prefix is not None and (value is None or not value.startswith(rule.prefix)):
            return False
        if rule.regex is not None and (value is None or not _regex(rule.regex).fullmatch(value)):
            return False
    return True


@functools.lru_cache(maxsize=1024)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


@dataclass
class _Entry:
    route: Route
    kind: int  # 0 exact, 1 template, 2 prefix
    rank: tuple[int, ...]
    template: _Template | None = None

    def path_params(self, path: str) -> dict[str, str] | None:
        pm = self.route.match.path
        if pm.exact is not None:
            return {} if path == pm.exact else None
        if pm.template is not None:
            assert self.template is not None
            return self.template.match(path)
        assert pm.prefix is not None
        return {} if _prefix_matches(pm.prefix, path) else None


def _host_rank(host: str) -> tuple[int, int]:
    if host == "*":
        return (2, 0)
    if host.startswith("*."):
        return (1, -len(host))
    return (0, 0)


def _host_matches(pattern: str, host: str) -> bool:
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


class Router:
    """Routes compiled once per policy set; :meth:`match` per request."""

    def __init__(self, routes: Iterable[Route], *, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        entries: list[tuple[tuple[int, int], str, _Entry]] = []
        for route in sorted(routes, key=lambda r: r.name):
            pm = route.match.path
            # among equal paths, the route with more conditions (headers, methods) is tried first
            narrower = (-len(route.match.headers), -int(bool(route.match.methods)))
            if pm.exact is not None:
                entry = _Entry(route, 0, (0, -len(pm.exact), *narrower))
            elif pm.template is not None:
                template = _Template(pm.template)
                entry = _Entry(route, 1, (1, -template.literals, -len(template.parts), *narrower), template)
            else:
                assert pm.prefix is not None
                entry = _Entry(route, 2, (2, -len(pm.prefix.rstrip("/")), *narrower))
            for host in route.hosts:
                entries.append((_host_rank(host.lower()), host.lower(), entry))
        entries.sort(key=lambda e: (e[0], e[2].rank))
        self._entries = entries
        self.routes = {entry.route.name: entry.route for _, _, entry in entries}

    def match(
        self, host: str, method: str, path: str, query: str, headers: Mapping[str, str]
    ) -> Match | None:
        """The route for this request (``host`` without the port, lower case), or None."""
        method = method.upper()
        for _, pattern, entry in self._entries:
            if not _host_matches(pattern, host):
                continue
            route = entry.route
            if route.match.methods and method not in route.match.methods:
                continue
            params = entry.path_params(path)
            if params is None:
                continue
            if route.match.headers and not _header_ok(route.match.headers, headers):
                continue
            upstream = quote(_rewrite(route, path), safe=_PATH_SAFE)  # the canonical path, re-encoded
            if query:
                upstream = f"{upstream}?{query}"
            return Match(route, self._pick(route.backends), upstream, params)
        return None

    def _pick(self, backends: Sequence[Backend]) -> Backend:
        if len(backends) == 1:
            return backends[0]
        total = sum(b.weight for b in backends)
        if total <= 0:
            return backends[0]
        point = self._rng.uniform(0, total)
        for backend in backends:
            point -= backend.weight
            if point < 0:
                return backend
        return backends[-1]


def _rewrite(route: Route, path: str) -> str:
    """Replace the matched prefix (or the exact path) with ``rewrite.prefix``; templates and routes
    without a rewrite keep the path."""
    if route.rewrite is None:
        return path
    pm = route.match.path
    new = route.rewrite.prefix
    matched = pm.prefix if pm.prefix is not None else pm.exact
    if matched is None:
        return path
    rest = path[len(matched.rstrip("/")) :] if matched != "/" else path
    if not rest:
        return new
    if new.endswith("/") and rest.startswith("/"):
        return new + rest[1:]
    if not new.endswith("/") and not rest.startswith("/"):
        return new + "/" + rest
    return new + rest
