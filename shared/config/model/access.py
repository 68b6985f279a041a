"""``AccessPolicy``: who may call a service or a gateway route."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field, model_validator

from shared.config.model.base import Document
from shared.config.model.types import (
    Cidr,
    HeaderName,
    Method,
    Name,
    PathPattern,
    Regex,
    Spec,
    validate_cidr,
)


class Target(Spec):
    """What the policy protects: exactly one of ``service`` or ``route``."""

    service: Name | None = None
    route: Name | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Target:
        if (self.service is None) == (self.route is None):
            raise ValueError("give exactly one of service or route")
        return self


class ClaimMatch(Spec):
    """A JWT claim test: ``equals`` a value, or (for list claims) ``contains`` one."""

    claim: str = Field(min_length=1)
    equals: str | int | bool | None = None
    contains: str | int | None = None

    @model_validator(mode="after")
    def _one_test(self) -> ClaimMatch:
        if (self.equals is None) == (self.contains is None):
            raise ValueError("give exactly one of equals or contains")
        return self


class HeaderMatch(Spec):
    """A request header test: ``exact``, ``prefix``, ``regex`` or ``present``."""

    name: HeaderName
    exact: str | None = None
    prefix: str | None = None
    regex: Regex | None = None
    present: bool | None = None

    @model_validator(mode="after")
    def _one_test(self) -> HeaderMatch:
        given = [k for k in ("exact", "prefix", "regex", "present") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of exact, prefix, regex or present")
        return self


def _service_pattern(value: str) -> str:
    if value != "*" and not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\*?|\*", value):
        raise ValueError(f"{value!r} is not a service name (write full SPIFFE IDs under principals)")
    return value


def _principal_pattern(value: str) -> str:
    if value != "*" and not value.startswith("spiffe://"):
        raise ValueError(f"{value!r} is not a SPIFFE ID (spiffe://...); bare names go under services")
    return value


#: One entry of ``from.services`` / ``from.principals``; checked per item so errors name the item's line.
ServicePattern = Annotated[str, AfterValidator(_service_pattern)]
PrincipalPattern = Annotated[str, AfterValidator(_principal_pattern)]


class Source(Spec):
    """Who the caller is. Fields are ANDed; the values of one field are ORed. Empty matches anyone."""

    services: list[ServicePattern] = Field(default_factory=list)
    namespaces: list[str] = Field(default_factory=list)
    principals: list[PrincipalPattern] = Field(default_factory=list)
    request_principals: list[str] = Field(default_factory=list)
    ip_blocks: list[Cidr] = Field(default_factory=list)
    not_ip_blocks: list[Cidr] = Field(default_factory=list)
    claims: list[ClaimMatch] = Field(default_factory=list)


class Operation(Spec):
    """What is called. Fields are ANDed; values ORed. Paths: exact, ``/prefix/*``, ``*suffix``, ``*``."""

    methods: list[Method] = Field(default_factory=list)
    paths: list[PathPattern] = Field(default_factory=list)
    not_paths: list[PathPattern] = Field(default_factory=list)
    headers: list[HeaderMatch] = Field(default_factory=list)


_WHEN_KEY = re.compile(
    r"^(request\.headers\[[^\]]+\]|request\.auth\.claims\[[^\]]+\](\[[^\]]+\])*|request\.auth\.principal"
    r"|source\.ip|source\.principal|source\.namespace|source\.service)$"
)


class Condition(Spec):
    """An Istio-style condition: ``key`` with ``values`` (any matches) and/or ``notValues`` (none)."""

    key: str
    values: list[str] = Field(default_factory=list)
    not_values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> Condition:
        if not _WHEN_KEY.match(self.key):
            raise ValueError(
                f"unknown condition key {self.key!r}; use request.headers[NAME], request.auth.claims[NAME], "
                "request.auth.principal, source.ip, source.principal, source.namespace or source.service"
            )
        if not self.values and not self.not_values:
            raise ValueError("give values or notValues")
        if self.key == "source.ip":
            for value in (*self.values, *self.not_values):
                validate_cidr(value)
        return self


class Rule(Spec):
    """``action`` applies when ``from``, ``to`` and every ``when`` condition match."""

    name: str | None = None
    action: Literal["allow", "deny"]
    from_: Source = Field(default_factory=Source, alias="from")
    to: Operation = Field(default_factory=Operation)
    when: list[Condition] = Field(default_factory=list)


class AccessPolicy(Document):
    """Allow/deny rules for one target. Deny wins; with any policy, what no rule allows is denied."""

    KIND: ClassVar[str] = "AccessPolicy"
    kind: Literal["AccessPolicy"]
    target: Target
    mode: Literal["enforce", "audit"] = "enforce"
    rules: list[Rule] = Field(min_length=1)
