"""Typed, frozen models of the policy documents (``apiVersion: meshgate/v1``)."""

from shared.config.model.access import (
    AccessPolicy,
    ClaimMatch,
    Condition,
    HeaderMatch,
    Operation,
    Rule,
    Source,
)
from shared.config.model.base import API_VERSION, Document
from shared.config.model.edge import AuthProvider, RateLimit, Route
from shared.config.model.mesh import Mesh, Service, TrafficPolicy

#: Every kind, by the name written in ``kind:``.
KINDS: dict[str, type[Document]] = {
    cls.KIND: cls for cls in (Mesh, Service, AccessPolicy, Route, AuthProvider, RateLimit)
}

__all__ = [
    "API_VERSION",
    "KINDS",
    "AccessPolicy",
    "AuthProvider",
    "ClaimMatch",
    "Condition",
    "Document",
    "HeaderMatch",
    "Mesh",
    "Operation",
    "RateLimit",
    "Route",
    "Rule",
    "Service",
    "Source",
    "TrafficPolicy",
]
