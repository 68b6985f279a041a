"""Gateway kinds: ``Route`` (what the edge serves), ``AuthProvider`` (who the caller is), ``RateLimit``."""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from shared.config.model.access import HeaderMatch
from shared.config.model.base import Document
from shared.config.model.types import Duration, HeaderName, Method, Name, Size, Spec


def template_error(template: str) -> str | None:
    """Why the gateway's router cannot compile ``template``, or None when it can.

    The grammar is gateway/routing.py's ``_Template`` (shared/ does not import gateway/; a test feeds
    the same templates to both): segments between '/', a segment ``{name}`` is one path segment,
    ``{name=**}`` the rest of the path and must therefore be the last segment, anything else is
    literal text."""
    stripped = template.strip("/")
    segments = stripped.split("/") if stripped else []
    for i, seg in enumerate(segments):
        if seg.startswith("{") and seg.endswith("}") and seg[1:-1].endswith("=**") and i != len(segments) - 1:
            head = "/".join(segments[: i + 1])
            return (
                f"template {template!r}: {seg} takes the rest of the path, so it must be the last "
                f"segment (as in /{head})"
            )
    return None


class PathMatch(Spec):
    """Exactly one of ``exact``, ``prefix`` or ``template`` (``/orders/{id}``, ``/files/{path=**}``)."""

    exact: str | None = None
    prefix: str | None = None
    template: str | None = None

    @model_validator(mode="after")
    def _one(self) -> PathMatch:
        given = [v for v in (self.exact, self.prefix, self.template) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of exact, prefix or template")
        if not given[0].startswith("/"):
            raise ValueError(f"path {given[0]!r} must start with '/'")
        if self.template is not None:
            problem = template_error(self.template)
            if problem is not None:
                raise ValueError(problem)
        return self


class RouteMatch(Spec):
    """Which requests the route takes. Omitted parts match everything."""

    path: PathMatch = Field(default_factory=lambda: PathMatch(prefix="/"))
    methods: list[Method] = Field(default_factory=list)
    headers: list[HeaderMatch] = Field(default_factory=list)


class Backend(Spec):
    """A mesh service the route sends to; ``weight`` splits traffic between backends (canaries)."""

    service: Name
    weight: int = Field(default=100, ge=0, le=10_000)


class Rewrite(Spec):
    """Replace the matched path prefix before forwarding."""

    prefix: str = Field(pattern=r"^/")


#: A field name (RFC 9110 token); checked whole (``HeaderName`` lets a trailing newline through).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: Headers about the connection or the message framing, which the gateway manages and a route cannot
#: set: hop-by-hop ones are dropped on the way (HTTP/2 forbids them), a fixed length breaks the framing.
UNSETTABLE_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade", "content-length"}
)


def _char_name(c: str) -> str:
    named = {"\r": "CR (\\r)", "\n": "LF (\\n)", "\x00": "NUL (\\0)"}
    return named.get(c, f"U+{ord(c):04X}")


def field_value_error(value: str) -> str | None:
    """Why ``value`` cannot be sent as an HTTP field value (RFC 9110 section 5.5: visible characters,
    bytes 0x80-0xFF, spaces and tabs inside), or None."""
    for c in value:
        if c == "\t" or " " <= c <= "~" or "\x80" <= c <= "\xff":
            continue
        if c > "\xff":
            return (
                f"holds {c!r} ({_char_name(c)}), which is not one byte: header values are bytes "
                "(latin-1); percent-encode it or write ASCII"
            )
        return f"holds {_char_name(c)}, a control character, which no HTTP header value may contain"
    if value != value.strip(" \t"):
        return "starts or ends with white space (HTTP trims it): remove it"
    return None


def _header_names(names: list[str]) -> None:
    for name in names:
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"invalid header name {name!r}")


class HeaderOps(Spec):
    """Headers to set (overwriting) and to remove. Values must be valid HTTP field values (no CR, LF,
    NUL or other control character; latin-1); hop-by-hop and framing headers cannot be set."""

    set: dict[HeaderName, str] = Field(default_factory=dict)
    remove: list[HeaderName] = Field(default_factory=list)

    @field_validator("set")
    @classmethod
    def _settable(cls, value: dict[str, str]) -> dict[str, str]:
        _header_names(list(value))
        for name, text in value.items():
            if name.lower() == "connection" and text.strip().lower() == "close":
                continue  # the gateway's server honours it: closes the connection after the answer
            if name.lower() in UNSETTABLE_HEADERS:
                raise ValueError(
                    f"header {name!r} cannot be set: it describes the connection or the message "
                    "framing, which the gateway manages"
                )
            problem = field_value_error(text)
            if problem is not None:
                raise ValueError(f"header {name!r}: value {text!r} {problem}")
        return value

    @field_validator("remove")
    @classmethod
    def _removable(cls, value: list[str]) -> list[str]:
        _header_names(value)
        return value


class Cors(Spec):
    """CORS answers the gateway gives on this route's behalf."""

    allow_origins: list[str] = Field(min_length=1)
    allow_methods: list[Method] = Field(default_factory=lambda: ["GET", "POST"])
    allow_headers: list[HeaderName] = Field(default_factory=list)
    expose_headers: list[HeaderName] = Field(default_factory=list)
    allow_credentials: bool = False
    max_age: Duration = timedelta(minutes=10)

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> Cors:
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError(
                "allowCredentials needs the origins listed: with '*' any site could read as the user"
            )
        return self


class RouteRetries(Spec):
    """Per-route retry override (through the mesh client)."""

    attempts: int = Field(default=2, ge=0, le=10)
    per_try_timeout: Duration | None = None


class GrpcJson(Spec):
    """JSON <-> gRPC transcoding: the methods with ``google.api.http`` rules in a descriptor set
    (``protoc --include_imports --descriptor_set_out=FILE``). ``descriptorSet`` is a path relative to
    the policy file; the loader reads it and ships its content (``descriptor``, base64) with the set."""

    descriptor_set: str | None = None
    descriptor: str | None = None
    services: list[str] = Field(default_factory=list)
    preserve_proto_field_names: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> GrpcJson:
        if self.descriptor_set is None and self.descriptor is None:
            raise ValueError("give descriptorSet (a file made by protoc --descriptor_set_out)")
        return self


_HOST_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


def route_host(value: str) -> str:
    """One ``Route.hosts`` entry, normalized (lower case, no trailing dot: requests are matched so),
    or ValueError: ``*``, a DNS name (ASCII: punycode for international names), ``*.`` and a DNS name,
    or a bracketed IPv6 address; never a port."""
    if not value.isascii():
        try:
            puny: str | None = value.lower().rstrip(".").encode("idna").decode("ascii")
        except UnicodeError:
            puny = None
        hint = f": write {puny!r}" if puny else ""
        raise ValueError(f"host {value!r} is not ASCII; give its punycode (IDNA) form{hint}")
    host = value.lower()
    if host == "*":
        return host
    if host.startswith("["):
        end = host.find("]")
        if end > 0 and host[end + 1 :].startswith(":"):
            raise ValueError(
                f"host {value!r} has a port: a route matches the host without its port; "
                f"write {host[: end + 1]!r}"
            )
        try:
            if end != len(host) - 1:
                raise ValueError(host)
            ipaddress.IPv6Address(host[1:end])
        except ValueError:
            raise ValueError(f"host {value!r} is not a valid bracketed IPv6 address") from None
        return host  # as written (lower case): requests are matched by their text, not compressed
    if host.count(":") == 1:
        name = host.split(":", 1)[0]
        raise ValueError(
            f"host {value!r} has a port: a route matches the host without its port; write {name!r}"
        )
    if ":" in host:
        raise ValueError(f"host {value!r}: write an IPv6 address in brackets ([2001:db8::1])")
    if host.endswith("."):
        host = host[:-1]  # a fully qualified name: requests for api.example.com. are matched without it
    if host in ("", "*"):
        raise ValueError(f"host {value!r} names no host")
    wildcard = host.startswith("*.")
    name = host[2:] if wildcard else host
    if "*" in name:
        rest = host.lstrip("*.")
        hint = f"; did you mean {'*.' + rest!r}?" if host.startswith("*") and rest and "*" not in rest else ""
        raise ValueError(
            f"host {value!r}: a wildcard is '*' alone or '*.' before a domain (*.example.org), "
            f"matching its subdomains{hint}"
        )
    if not name:
        raise ValueError(f"host {value!r} names no host")
    if len(name) > 253:
        raise ValueError(f"host {value!r} is longer than 253 characters")
    for label in name.split("."):
        if not _HOST_LABEL.fullmatch(label):
            what = "an empty label (two dots in a row?)" if not label else f"label {label!r}"
            raise ValueError(
                f"host {value!r} has {what}: a label is 1-63 letters, digits, '-' (not first or last) and '_'"
            )
    return f"*.{name}" if wildcard else name


class Route(Document):
    """A gateway route: match -> backends, with auth, rate limit and translation."""

    KIND: ClassVar[str] = "Route"
    kind: Literal["Route"]
    hosts: list[str] = Field(default_factory=lambda: ["*"])
    match: RouteMatch = Field(default_factory=RouteMatch)
    backends: list[Backend] = Field(min_length=1)
    rewrite: Rewrite | None = None
    auth: list[Name] = Field(default_factory=list)
    rate_limit: Name | None = None
    translate: Literal["none", "grpc", "grpc-web", "grpc-json", "websocket"] = "none"
    timeout: Duration | None = None
    retries: RouteRetries | None = None
    request_headers: HeaderOps = Field(default_factory=HeaderOps)
    response_headers: HeaderOps = Field(default_factory=HeaderOps)
    cors: Cors | None = None
    max_body_size: Size = 10 * 1024 * 1024
    grpc_json: GrpcJson | None = None

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(route_host(host) for host in value))

    @field_validator("backends")
    @classmethod
    def _some_weight(cls, value: list[Backend]) -> list[Backend]:
        if value and sum(b.weight for b in value) == 0:
            raise ValueError(
                "every backend has weight 0, so no request could be sent: give at least one a weight above 0"
            )
        return value

    @model_validator(mode="after")
    def _transcoding_settings(self) -> Route:
        if self.translate == "grpc-json" and self.grpc_json is None:
            raise ValueError("translate grpc-json needs a grpcJson block (descriptorSet)")
        if self.grpc_json is not None and self.translate != "grpc-json":
            raise ValueError("grpcJson is only for translate: grpc-json")
        return self


class ClaimToHeader(Spec):
    """Copy a verified JWT claim into an upstream request header."""

    claim: str
    header: HeaderName


JwtAlgorithm = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]
DEFAULT_JWT_ALGORITHMS: tuple[JwtAlgorithm, ...] = ("RS256", "ES256")


class JwtSettings(Spec):
    """JWT validation: issuer, audiences, keys from a JWKS URL (``jwksUri``, refreshed) or given inline
    (``jwks``, a JWKS object with public keys: for fixed keys and demos), explicit algorithms."""

    issuer: str
    audiences: list[str] = Field(default_factory=list)
    jwks_uri: str | None = Field(default=None, pattern=r"^https?://")
    jwks: dict[str, Any] | None = None
    algorithms: list[JwtAlgorithm] = Field(default_factory=lambda: list(DEFAULT_JWT_ALGORITHMS))
    leeway: Duration = timedelta(seconds=30)
    refresh_interval: Duration = timedelta(minutes=10)
    principal_claim: str = "sub"
    claims_to_headers: list[ClaimToHeader] = Field(default_factory=list)
    header: HeaderName = "authorization"

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtSettings:
        if (self.jwks_uri is None) == (self.jwks is None):
            raise ValueError("give exactly one of jwksUri (a URL) and jwks (inline keys)")
        if self.jwks is not None:
            keys = self.jwks.get("keys")
            if not isinstance(keys, list) or not keys or not all(isinstance(k, dict) for k in keys):
                raise ValueError("jwks must be a JWK set: {keys: [ {kty: ..., ...}, ... ]}")
            if any("d" in k for k in keys):
                raise ValueError("jwks holds a private key (field d): give only public keys")
        return self


class ApiKeyEntry(Spec):
    """One API key, stored as the hex SHA-256 of the key; ``name`` becomes the principal."""

    name: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ApiKeySettings(Spec):
    """Where the key is read from and where hashed keys are stored (this file or Redis)."""

    header: HeaderName = "x-api-key"
    query_param: str | None = None
    keys: list[ApiKeyEntry] = Field(default_factory=list)
    redis_prefix: str | None = None

    @model_validator(mode="after")
    def _some_store(self) -> ApiKeySettings:
        if not self.keys and self.redis_prefix is None:
            raise ValueError("give keys (hashed) or redisPrefix (keys stored in Redis)")
        return self


class DecisionCache(Spec):
    """Cache ext_authz answers: ``ttl`` for allows, ``denyTtl`` for denials. The key always holds every
    header sent to the service (``authorization`` and ``allowedRequestHeaders``); ``keyHeaders`` adds
    others."""

    ttl: Duration = timedelta(seconds=30)
    deny_ttl: Duration = timedelta(seconds=5)
    key_headers: list[HeaderName] = Field(default_factory=lambda: ["authorization"])
    max_entries: int = Field(default=10_000, ge=1, le=1_000_000)  # ~0.3 KB each: bounded memory


class ExtAuthzSettings(Spec):
    """Envoy's ext_authz HTTP contract, so existing auth services work unchanged."""

    url: str = Field(pattern=r"^https?://")
    path_prefix: str = ""
    timeout: Duration = timedelta(milliseconds=200)
    allowed_request_headers: list[HeaderName] = Field(default_factory=list)
    allowed_upstream_headers: list[HeaderName] = Field(default_factory=list)
    allowed_client_headers: list[HeaderName] = Field(default_factory=list)
    include_body: bool = False
    max_body_bytes: Size = 8192
    failure_mode_allow: bool = False
    cache: DecisionCache | None = None


class IntrospectionSettings(Spec):
    """OAuth2 token introspection (RFC 7662), cached."""

    url: str = Field(pattern=r"^https?://")
    client_id: str
    client_secret_env: str | None = None
    cache_ttl: Duration = timedelta(seconds=60)
    timeout: Duration = timedelta(milliseconds=500)


_PROVIDER_BLOCKS = {
    "jwt": "jwt",
    "apiKey": "api_key",
    "extAuthz": "ext_authz",
    "introspection": "introspection",
}


class AuthProvider(Document):
    """One way to authenticate callers at the edge; ``type`` names the settings block that follows."""

    KIND: ClassVar[str] = "AuthProvider"
    kind: Literal["AuthProvider"]
    type: Literal["jwt", "apiKey", "extAuthz", "introspection"]
    jwt: JwtSettings | None = None
    api_key: ApiKeySettings | None = None
    ext_authz: ExtAuthzSettings | None = None
    introspection: IntrospectionSettings | None = None

    @model_validator(mode="after")
    def _block_matches_type(self) -> AuthProvider:
        for alias, attr in _PROVIDER_BLOCKS.items():
            present = getattr(self, attr) is not None
            if alias == self.type and not present:
                raise ValueError(f"type {self.type} needs a {alias} block")
            if alias != self.type and present:
                raise ValueError(f"{alias} block given but type is {self.type}")
        return self


class KeyPart(Spec):
    """One part of the rate-limit key. ``header`` needs ``name``; it is for trusted, gateway-set headers."""

    type: Literal["apiKey", "subject", "clientAddress", "route", "header", "spiffeId"]
    name: HeaderName | None = None

    @model_validator(mode="after")
    def _name_for_header(self) -> KeyPart:
        if (self.type == "header") != (self.name is not None):
            raise ValueError("name is required for type header and only allowed there")
        return self


class Limit(Spec):
    """``requests`` per ``per`` (e.g. 100 per 1s); ``burst`` defaults to ``requests``."""

    # at most 10^12 (and bursts too): the Redis scripts count in Lua numbers (doubles), exact to
    # 2^53; 10^19 overflowed their integer formatting (RateLimit's r=0 on a fresh key)
    requests: int = Field(ge=1, le=10**12)
    per: Duration
    burst: int | None = Field(default=None, ge=1, le=10**12)

    @model_validator(mode="after")
    def _positive_window(self) -> Limit:
        if self.per.total_seconds() <= 0:
            raise ValueError("per must be longer than 0s")
        return self


class RateLimit(Document):
    """Limits per key, enforced atomically in Redis; ``failureMode`` when Redis is unreachable."""

    KIND: ClassVar[str] = "RateLimit"
    kind: Literal["RateLimit"]
    key: list[KeyPart] = Field(min_length=1)
    limits: list[Limit] = Field(min_length=1)
    algorithm: Literal["gcra", "sliding-window"] = "gcra"
    failure_mode: Literal["allow", "deny", "allow-local"] = "allow-local"
