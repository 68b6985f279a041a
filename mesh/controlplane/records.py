"""What the control plane stores: registered instances and join tokens, as plain frozen records."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from shared.registry.jointoken import TOKEN_PREFIX, JoinToken

__all__ = ["TOKEN_PREFIX", "CheckSpec", "InstanceRecord", "JoinToken", "TokenRecord", "new_token"]

Health = Literal["passing", "warning", "critical"]


@dataclass(frozen=True)
class CheckSpec:
    """How the sidecar checks its app: ``http`` GET of ``path``, ``tcp`` connect, or ``ttl`` (none)."""

    type: Literal["http", "tcp", "ttl"] = "ttl"
    path: str | None = None
    interval_s: float = 10.0
    timeout_s: float = 2.0


@dataclass(frozen=True)
class InstanceRecord:
    """One registered instance of a service: where its sidecar listens, and its last reported check."""

    id: str
    service: str
    namespace: str
    address: str
    port: int
    identity: str
    metadata: dict[str, str] = field(default_factory=dict)
    check: CheckSpec = field(default_factory=CheckSpec)
    ttl_s: float = 15.0
    registered_at: float = 0.0
    status: Health = "passing"
    output: str = ""

    def to_json(self) -> str:
        """Serialized form for the stores."""
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> InstanceRecord:
        """Inverse of :meth:`to_json`."""
        data: dict[str, Any] = json.loads(text)
        data["check"] = CheckSpec(**data.get("check", {}))
        return cls(**data)

    def with_status(self, status: Health, output: str) -> InstanceRecord:
        """A copy with a new check result."""
        return replace(self, status=status, output=output)


@dataclass(frozen=True)
class TokenRecord:
    """A join token as stored: only the SHA-256 of its secret is kept."""

    id: str
    secret_sha256: str
    service: str
    namespace: str
    expires_at: float
    reusable: bool = False
    used_at: float | None = None
    created_at: float = 0.0

    def to_json(self) -> str:
        """Serialized form for the stores."""
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> TokenRecord:
        """Inverse of :meth:`to_json`."""
        return cls(**json.loads(text))

    def secret_matches(self, secret: str) -> bool:
        """Constant-time comparison of ``secret`` with the stored hash."""
        return hmac.compare_digest(self.secret_sha256, hash_secret(secret))


def hash_secret(secret: str) -> str:
    """Hex SHA-256 of a token secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token(
    service: str, namespace: str, ttl_s: float, now: float, ca_pin: str, reusable: bool = False
) -> tuple[JoinToken, TokenRecord]:
    """A fresh token: what to hand to the workload, and the record to store."""
    token = JoinToken(ca_pin, secrets.token_hex(8), secrets.token_urlsafe(24).replace(".", "_"))
    record = TokenRecord(
        id=token.id,
        secret_sha256=hash_secret(token.secret),
        service=service,
        namespace=namespace,
        expires_at=now + ttl_s,
        reusable=reusable,
        created_at=now,
    )
    return token, record
