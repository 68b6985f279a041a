"""Print a demo JWT the demo gateway accepts (ES256, signed with jwt/demo-signing-key.pem).

    python examples/demo/mint_jwt.py --sub alice [--role admin] [--ttl 3600]

The key is a DEMO key, committed on purpose so the demo works offline: never trust it anywhere else.
Its public half is inline in policies/edge.yaml (AuthProvider demo-jwt).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jwt

KEY = Path(__file__).resolve().parent / "jwt" / "demo-signing-key.pem"
ISSUER = "https://demo.meshgate.local"
AUDIENCE = "meshgate-demo"


def mint(sub: str, role: str | None = None, ttl: int = 3600, now: float | None = None) -> str:
    """A signed token for ``sub`` (with a ``role`` claim when given), valid for ``ttl`` seconds."""
    issued = int(now if now is not None else time.time())
    claims: dict[str, object] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "iat": issued,
        "exp": issued + ttl,
    }
    if role:
        claims["role"] = role
    return jwt.encode(claims, KEY.read_bytes(), algorithm="ES256", headers={"kid": "demo-1"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sub", default="alice", help="the user (becomes the request principal)")
    parser.add_argument("--role", help="a role claim, e.g. admin")
    parser.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (default 3600)")
    args = parser.parse_args()
    print(mint(args.sub, args.role, args.ttl))


if __name__ == "__main__":
    main()
