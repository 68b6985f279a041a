"""Field types shared by every policy kind: names, durations, percentages, sizes, methods, CIDRs."""

from __future__ import annotations

import ipaddress
import re
import re._constants as _sre  # type: ignore[import-not-found]  # the parser's node types
import re._parser as _sre_parser  # type: ignore[import-not-found]  # for the backtracking check
from datetime import timedelta
from typing import Annotated, Any, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from shared.config.durations import format_duration, parse_duration, parse_percent, parse_size
from shared.policy.paths import normalize_path


def camel(name: str) -> str:
    """``default_access`` -> ``defaultAccess``; digits stay as written (``consecutive_5xx``)."""
    head, *rest = name.rstrip("_").split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


class Spec(BaseModel):
    """Base of every policy structure: frozen, unknown fields rejected, camelCase in YAML."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=camel,
        populate_by_name=True,
        validate_default=False,
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML's true/false/yes/no are not numbers (pydantic would read ``requests: true`` as 1)."""
        if isinstance(value, bool) and info.field_name is not None:
            field = cls.model_fields.get(info.field_name)
            if field is not None and _numeric(field.annotation):
                raise ValueError(f"expected a number, not {str(value).lower()}")
        return value


def _numeric(annotation: Any) -> bool:
    """``annotation`` is int or float, or a union holding one and not bool."""
    if annotation in (int, float):
        return True
    args = get_args(annotation)
    return bool(args) and bool not in args and any(a in (int, float) for a in args)


def _duration(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 250ms or 2s")
    if isinstance(value, int | float):
        if value == 0:
            return timedelta(0)
        raise ValueError(f"a duration needs a unit: write {value}s or {value}ms")
    if isinstance(value, str):
        return parse_duration(value)
    return value


def _positive(value: timedelta) -> timedelta:
    if value.total_seconds() < 0:
        raise ValueError("a duration cannot be negative")
    return value


Duration = Annotated[
    timedelta,
    BeforeValidator(_duration),
    AfterValidator(_positive),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h|d))+$", "examples": ["250ms", "2s"]}
    ),
]

Percent = Annotated[
    float,
    BeforeValidator(parse_percent),
    PlainSerializer(lambda v: f"{v * 100:g}%", return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?%$", "examples": ["20%"]}),
]

Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^\d+\s*(B|KB|KiB|MB|MiB|GB|GiB)?$"},
            ]
        }
    ),
]

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _name(value: str) -> str:
    if not _NAME.fullmatch(value) or len(value) > 63:
        raise ValueError(
            f"invalid name {value!r}: use 1-63 lower-case letters, digits and '-', starting and ending "
            "with a letter or digit (as a DNS label)"
        )
    return value


Name = Annotated[str, AfterValidator(_name), WithJsonSchema({"type": "string", "pattern": _NAME.pattern})]

_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]{1,255}$")


def _trust_domain(value: str) -> str:
    if not _TRUST_DOMAIN.fullmatch(value):
        raise ValueError(
            f"invalid trust domain {value!r}: use lower-case letters, digits, '.', '_' and '-' "
            "(at most 255), no scheme, port or path"
        )
    return value


TrustDomain = Annotated[
    str, AfterValidator(_trust_domain), WithJsonSchema({"type": "string", "pattern": _TRUST_DOMAIN.pattern})
]

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


def _method(value: str) -> str:
    upper = value.upper()
    if upper != "*" and upper not in HTTP_METHODS:
        raise ValueError(f"unknown HTTP method {value!r}; use one of {', '.join(sorted(HTTP_METHODS))} or *")
    return upper


Method = Annotated[str, AfterValidator(_method)]

_HEADER = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _header_name(value: str) -> str:
    if not _HEADER.fullmatch(value):
        raise ValueError(f"invalid header name {value!r}")
    return value.lower()


HeaderName = Annotated[str, AfterValidator(_header_name)]


def _path_pattern(value: str) -> str:
    if value == "*":
        return value
    if value.startswith("*"):
        if "*" in value[1:]:
            raise ValueError(f"path pattern {value!r}: '*' may stand only at the start or the end")
        return value
    if not value.startswith("/"):
        raise ValueError(f"path pattern {value!r} must start with '/' (or be '*', '/prefix/*', '*suffix')")
    if "*" in value[:-1]:
        raise ValueError(f"path pattern {value!r}: '*' may stand only at the start or the end")
    if "?" in value or "#" in value:
        raise ValueError(f"path pattern {value!r} must not contain a query or fragment")
    # requests are matched after normalization: /a%2Fb, //x or /x/../y in a rule never match
    # anything (a deny rule that silently allows). A prefix is checked as the start of a path
    # ("/static/." + "x"), so that a partial last segment such as /.* (dotfiles) stays allowed
    star = value.endswith("*")
    sample = value[:-1] + "x" if star else value
    normal = normalize_path(sample)
    if normal != sample:
        canonical = (normal[:-1] + "*" if star else normal) if normal else None
        hint = f"; write {canonical!r}" if canonical else ""
        raise ValueError(
            f"path pattern {value!r} is not in the normalized form requests are matched in{hint}"
        )
    return value


PathPattern = Annotated[str, AfterValidator(_path_pattern)]


def validate_cidr(value: str) -> str:
    """Normalise an address or CIDR block; ValueError names the bad text."""
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ValueError(f"invalid IP address or CIDR block {value!r}") from None


Cidr = Annotated[str, AfterValidator(validate_cidr)]


MAX_REGEX_CHARS = 1024


def _regex(value: str) -> str:
    if len(value) > MAX_REGEX_CHARS:
        raise ValueError(f"regular expression over {MAX_REGEX_CHARS} characters")
    try:
        re.compile(value)
        nested = _nested_repeat(_sre_parser.parse(value))
    except (re.error, OverflowError, RecursionError) as exc:
        raise ValueError(f"invalid regular expression {value[:60]!r}: {exc}") from None
    if nested:
        # Python's re backtracks: (a+)+$ against 30 a's and a b takes minutes, and a client chooses
        # the header it is matched against. Envoy uses RE2 for this reason
        raise ValueError(
            f"regular expression {value[:60]!r} repeats a repetition (as in (a+)+): it can take "
            "exponential time on hostile input; write it without the nested repetition"
        )
    return value


def _nested_repeat(items: Any) -> bool:
    """True when a repetition that may run long (unbounded, or over 16 times) repeats nothing but
    another repetition, directly or as one alternative: (a+)+, (a*)*, (x|y+)*, the classic shapes of
    catastrophic backtracking. [a-z]+(-[a-z]+)* passes (the '-' anchors each round). A heuristic:
    it does not see every ambiguous pattern."""
    for op, av in items:
        if op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT):
            _low, high, sub = av
            if (high == _sre.MAXREPEAT or high > 16) and _only_a_repeat(sub):
                return True
            if _nested_repeat(sub):
                return True
        elif op is _sre.SUBPATTERN:
            if _nested_repeat(av[-1]):
                return True
        elif op is _sre.BRANCH:
            if any(_nested_repeat(branch) for branch in av[1]):
                return True
        elif op in (_sre.ASSERT, _sre.ASSERT_NOT):
            if _nested_repeat(av[1]):
                return True
    return False


def _only_a_repeat(items: Any) -> bool:
    """``items`` is one repetition of more than one round (through groups), or a choice of which
    one alternative is."""
    items = list(items)
    while len(items) == 1 and items[0][0] is _sre.SUBPATTERN:
        items = list(items[0][1][-1])
    if len(items) != 1:
        return False
    op, av = items[0]
    if op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT):
        return bool(av[1] > 1)
    if op is _sre.BRANCH:
        return any(_only_a_repeat(branch) for branch in av[1])
    return False


Regex = Annotated[str, AfterValidator(_regex)]


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"port {value} is outside 1..65535")
    return value


Port = Annotated[int, AfterValidator(_port)]
