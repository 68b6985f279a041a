"""Join tokens, as workloads hold them: ``mgt1.<ca-pin>.<id>.<secret>``."""

from __future__ import annotations

from dataclasses import dataclass

#: Join tokens read ``mgt1.<ca-pin>.<id>.<secret>``: like Docker Swarm's join tokens they carry the
#: SHA-256 of a trusted root certificate, so a workload that has nothing else can check it is talking
#: to the right control plane before it sends its secret.
TOKEN_PREFIX = "mgt1."


@dataclass(frozen=True)
class JoinToken:
    """The parts of a join token string."""

    ca_pin: str
    id: str
    secret: str

    def __str__(self) -> str:
        return f"{TOKEN_PREFIX}{self.ca_pin}.{self.id}.{self.secret}"

    @classmethod
    def parse(cls, text: str) -> JoinToken | None:
        """Split ``mgt1.<pin>.<id>.<secret>``; None when the text is not shaped like a token."""
        text = text.strip()
        if not text.startswith(TOKEN_PREFIX):
            return None
        parts = text[len(TOKEN_PREFIX) :].split(".")
        if len(parts) != 3:
            return None
        pin, token_id, secret = parts
        if len(pin) != 64 or len(token_id) != 16 or not secret:
            return None
        if any(c not in "0123456789abcdef" for c in pin + token_id):
            return None
        return cls(pin, token_id, secret)
