"""Compile the matchers of one rule into small predicates over (caller, normalized request)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from shared.config.model import ClaimMatch, Condition, HeaderMatch, Operation, Source
from shared.policy.request import Caller

#: A compiled test: (caller, method, normalized path, headers) -> bool.
Predicate = Callable[[Caller, str, str, Mapping[str, str]], bool]
StringTest = Callable[[str], bool]


def glob(patterns: Sequence[str]) -> StringTest:
    """Exact values, ``prefix*``, ``*suffix`` and ``*``, ORed, as one test."""
    if "*" in patterns:
        return lambda _value: True
    exact = frozenset(p for p in patterns if "*" not in p)
    prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))
    suffixes = tuple(p[1:] for p in patterns if p.startswith("*") and not p.endswith("*"))

    def test(value: str) -> bool:
        return (
            value in exact
            or (bool(prefixes) and value.startswith(prefixes))
            or (bool(suffixes) and value.endswith(suffixes))
        )

    return test


def claim_value(claims: Mapping[str, Any], name: str) -> Any:
    """A claim by name; a dotted name falls back to nested lookup (``realm.roles``)."""
    if name in claims:
        return claims[name]
    node: Any = claims
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _claim_test(match: ClaimMatch) -> Callable[[Caller], bool]:
    name = match.claim
    if match.equals is not None:
        want = match.equals
        return lambda c: _same(claim_value(c.claims, name), want)
    item = match.contains

    def contains(c: Caller) -> bool:
        value = claim_value(c.claims, name)
        if isinstance(value, list | tuple):
            return any(_same(v, item) for v in value)
        if isinstance(value, str) and isinstance(item, str):
            return item in value.split(" ")  # OAuth2 scope strings
        return False

    return contains


def _same(value: Any, want: Any) -> bool:
    if isinstance(value, bool) or isinstance(want, bool):
        return value is want
    return bool(value == want)


def exact_services(source: Source) -> frozenset[str] | None:
    """The caller services a ``from`` block names, when all are exact names (usable as an index key)."""
    if not source.services or any("*" in s for s in source.services):
        return None
    return frozenset(source.services)


def source_predicates(source: Source, trust_domain: str, *, indexed: bool = False) -> list[Predicate]:
    """Predicates for a rule's ``from`` block; bare names match only the mesh's own trust domain.

    ``indexed``: the caller was already looked up by its service name (see :func:`exact_services`),
    so the services test is left out.
    """
    preds: list[Predicate] = []
    if source.services and not indexed:
        svc = glob(source.services)
        preds.append(
            lambda c, m, p, h: c.trust_domain == trust_domain and c.service is not None and svc(c.service)
        )
    if source.namespaces:
        ns = glob(source.namespaces)
        preds.append(
            lambda c, m, p, h: c.trust_domain == trust_domain and c.namespace is not None and ns(c.namespace)
        )
    if source.principals:
        ids = glob(source.principals)
        preds.append(lambda c, m, p, h: c.identity is not None and ids(c.identity))
    if source.request_principals:
        users = glob(source.request_principals)
        preds.append(lambda c, m, p, h: c.principal is not None and users(c.principal))
    if source.ip_blocks:
        nets = tuple(ipaddress.ip_network(b) for b in source.ip_blocks)
        preds.append(lambda c, m, p, h: c.address is not None and any(c.address in n for n in nets))
    if source.not_ip_blocks:
        not_nets = tuple(ipaddress.ip_network(b) for b in source.not_ip_blocks)
        preds.append(lambda c, m, p, h: c.address is not None and not any(c.address in n for n in not_nets))
    for claim in source.claims:
        test = _claim_test(claim)
        preds.append(lambda c, m, p, h, test=test: test(c))  # type: ignore[misc]
    return preds


def _header_test(match: HeaderMatch) -> Callable[[Mapping[str, str]], bool]:
    name = match.name
    if match.present is not None:
        want = match.present
        return lambda h: (name in h) is want
    if match.exact is not None:
        exact = match.exact
        return lambda h: h.get(name) == exact
    if match.prefix is not None:
        prefix = match.prefix
        return lambda h: (v := h.get(name)) is not None and v.startswith(prefix)
    pattern = re.compile(match.regex or "")
    return lambda h: (v := h.get(name)) is not None and pattern.fullmatch(v) is not None


PathParts = tuple[bool, frozenset[str], tuple[str, ...], tuple[str, ...]]


def path_parts(patterns: Sequence[str]) -> PathParts:
    """(matches any, exact paths, prefixes, suffixes) of path patterns, for inline matching."""
    if not patterns or "*" in patterns:
        return True, frozenset(), (), ()
    exact = frozenset(p for p in patterns if "*" not in p)
    prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))
    suffixes = tuple(p[1:] for p in patterns if p.startswith("*") and not p.endswith("*"))
    return False, exact, prefixes, suffixes


def method_set(op: Operation) -> frozenset[str] | None:
    """The methods an operation allows, or None for any."""
    if not op.methods or "*" in op.methods:
        return None
    return frozenset(op.methods)


def operation_predicates(op: Operation) -> list[Predicate]:
    """Predicates for a rule's ``to`` block, apart from methods and paths (see :func:`path_parts`)."""
    preds: list[Predicate] = []
    if op.not_paths:
        not_paths = glob(op.not_paths)  # same patterns as paths: exact, /prefix/*, *suffix, *
        preds.append(lambda c, m, p, h: not not_paths(p))
    for header in op.headers:
        test = _header_test(header)
        preds.append(lambda c, m, p, h, test=test: test(h))  # type: ignore[misc]
    return preds


_CLAIM_KEY = re.compile(r"\[([^\]]+)\]")


def _extractor(key: str) -> Callable[[Caller, Mapping[str, str]], list[str]]:
    if key.startswith("request.headers["):
        name = key[len("request.headers[") : -1].lower()
        return lambda c, h: [h[name]] if name in h else []
    if key.startswith("request.auth.claims["):
        path = _CLAIM_KEY.findall(key)

        def claims(c: Caller, h: Mapping[str, str]) -> list[str]:
            node: Any = c.claims
            for part in path:
                if not isinstance(node, Mapping) or part not in node:
                    return []
                node = node[part]
            if isinstance(node, list | tuple):
                return [str(v) for v in node]
            return [str(node)]

        return claims
    fields: dict[str, Callable[[Caller], str | None]] = {
        "request.auth.principal": lambda c: c.principal,
        "source.principal": lambda c: c.identity,
        "source.namespace": lambda c: c.namespace,
        "source.service": lambda c: c.service,
        "source.ip": lambda c: str(c.address) if c.address is not None else None,
    }
    get = fields[key]
    return lambda c, h: [v] if (v := get(c)) is not None else []


def condition_predicate(cond: Condition) -> Predicate:
    """An Istio-style ``when`` condition: some value matches ``values``, none matches ``notValues``."""
    extract = _extractor(cond.key)
    if cond.key == "source.ip":
        nets = tuple(ipaddress.ip_network(v) for v in cond.values)
        not_nets = tuple(ipaddress.ip_network(v) for v in cond.not_values)

        def ip_test(c: Caller, m: str, p: str, h: Mapping[str, str]) -> bool:
            if c.address is None:
                return False
            if nets and not any(c.address in n for n in nets):
                return False
            return not any(c.address in n for n in not_nets)

        return ip_test
    yes = glob(cond.values) if cond.values else None
    no = glob(cond.not_values) if cond.not_values else None
    if cond.key.startswith("request.headers[") and yes is not None and no is None:
        name = cond.key[len("request.headers[") : -1].lower()
        only = yes
        return lambda c, m, p, h: (v := h.get(name)) is not None and only(v)

    def test(c: Caller, m: str, p: str, h: Mapping[str, str]) -> bool:
        values = extract(c, h)
        if yes is not None and not any(yes(v) for v in values):
            return False
        return not (no is not None and any(no(v) for v in values))

    return test
