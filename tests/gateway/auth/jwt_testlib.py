"""Helpers for the JWT, JWKS and API key tests.

- :class:`JwksServer`: a real HTTP server on 127.0.0.1 (asyncio streams, one request per
  connection) serving a key set that a test can change, break (500, bad JSON, a bad key, a hang)
  or take down (connection refused) and bring back on the same port.
- signing keys made with ``cryptography`` (cached per kid: RSA generation is slow) and tokens
  minted with PyJWT.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac
import json
import socket
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

from gateway.auth.base import EdgeRequest
from shared.config.model.edge import JwtSettings

T = TypeVar("T")

ISSUER = "https://issuer.test/"
AUDIENCE = "api"
ALL_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run ``coro`` in a fresh loop, bounded by ``timeout`` seconds."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate()`` every 20 ms until it is true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int, size: int | None = None) -> str:
    length = size if size is not None else (value.bit_length() + 7) // 8
    return b64u(value.to_bytes(length, "big"))


@dataclass(frozen=True)
class SigningKey:
    """A private key, its kid and the algorithm it signs with."""

    kid: str
    alg: str
    private: Any

    @property
    def public(self) -> Any:
        return self.private.public_key()

    def jwk(self, **extra: Any) -> dict[str, Any]:
        """The public JWK (plus ``extra`` members such as ``use`` or ``alg``)."""
        pub = self.public
        doc: dict[str, Any]
        if isinstance(pub, rsa.RSAPublicKey):
            numbers = pub.public_numbers()
            doc = {"kty": "RSA", "n": _uint(numbers.n), "e": _uint(numbers.e)}
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            numbers_ec = pub.public_numbers()
            size = (pub.curve.key_size + 7) // 8
            crv = {"secp256r1": "P-256", "secp384r1": "P-384"}[pub.curve.name]
            doc = {"kty": "EC", "crv": crv, "x": _uint(numbers_ec.x, size), "y": _uint(numbers_ec.y, size)}
        else:
            raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            doc = {"kty": "OKP", "crv": "Ed25519", "x": b64u(raw)}
        doc["kid"] = self.kid
        doc.update(extra)
        return doc

    def public_pem(self) -> bytes:
        pem: bytes = self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem


@functools.cache
def rsa_key(kid: str, alg: str = "RS256") -> SigningKey:
    return SigningKey(kid, alg, rsa.generate_private_key(public_exponent=65537, key_size=2048))


@functools.cache
def ec_key(kid: str, curve: str = "P-256") -> SigningKey:
    if curve == "P-256":
        return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))
    return SigningKey(kid, "ES384", ec.generate_private_key(ec.SECP384R1()))


@functools.cache
def ed_key(kid: str) -> SigningKey:
    return SigningKey(kid, "EdDSA", ed25519.Ed25519PrivateKey.generate())


def claims(**over: Any) -> dict[str, Any]:
    """Valid claims for the test issuer and audience; ``over`` replaces (None removes)."""
    now = int(time.time())
    doc: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    }
    for name, value in over.items():
        if value is None:
            doc.pop(name, None)
        else:
            doc[name] = value
    return doc


def mint(
    key: SigningKey, payload: dict[str, Any] | None = None, *, alg: str | None = None, **header: Any
) -> str:
    """A token signed by ``key`` (kid in the header unless ``kid=None`` is given)."""
    headers: dict[str, Any] = {"kid": key.kid}
    headers.update(header)
    if headers.get("kid") is None:
        headers.pop("kid")
    return pyjwt.encode(
        payload if payload is not None else claims(), key.private, algorithm=alg or key.alg, headers=headers
    )


def mint_raw(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    """A token assembled by hand (no checks at all)."""
    head = b64u(json.dumps(header).encode())
    body = b64u(json.dumps(payload).encode())
    return f"{head}.{body}.{b64u(signature)}"


def mint_bytes(key: SigningKey, header: dict[str, Any], payload: bytes) -> str:
    """A token whose payload is any bytes, genuinely signed by ``key`` (PyJWT refuses odd claims)."""
    head = b64u(json.dumps({"alg": key.alg, "kid": key.kid, **header}).encode())
    signing_input = f"{head}.{b64u(payload)}"
    algorithm = get_default_algorithms()[header.get("alg", key.alg)]
    return f"{signing_input}.{b64u(algorithm.sign(signing_input.encode(), key.private))}"


def mint_hmac(secret: bytes, header: dict[str, Any], payload: dict[str, Any], alg: str = "HS256") -> str:
    """A token MACed with ``secret`` (PyJWT refuses PEM secrets, which is the point of the attack)."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    head = b64u(json.dumps({**header, "alg": alg}).encode())
    body = b64u(json.dumps(payload).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), digest).digest()
    return f"{head}.{body}.{b64u(mac)}"


def settings(jwks_uri: str, **over: Any) -> JwtSettings:
    base: dict[str, Any] = {
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "jwks_uri": jwks_uri,
        "algorithms": ALL_ALGORITHMS,
        "leeway": timedelta(seconds=30),
        "refresh_interval": timedelta(minutes=10),
    }
    base.update(over)
    return JwtSettings(**base)


def request(headers: list[tuple[str, str]] | None = None, query: str = "") -> EdgeRequest:
    return EdgeRequest(
        method="GET",
        path="/api",
        query=query,
        host="api.test",
        headers=headers or [],
        client_address="127.0.0.1",
    )


def bearer(token: str) -> EdgeRequest:
    return request([("authorization", f"Bearer {token}")])


class JwksServer:
    """A JWKS endpoint on 127.0.0.1. ``mode``: ``ok`` (serve ``document``), ``500``, ``bad-json``,
    ``hang`` (read the request, never answer). ``requests`` counts the requests read."""

    def __init__(self, *keys: SigningKey) -> None:
        self.document: Any = {"keys": [k.jwk() for k in keys]}
        self.mode = "ok"
        self.requests = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/.well-known/jwks.json"
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._release = asyncio.Event()

    def publish(self, *keys: SigningKey, **extra: Any) -> None:
        self.document = {"keys": [k.jwk(**extra) for k in keys]}

    async def start(self) -> JwksServer:
        self._release = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        """Close the listener and every connection (later connects are refused)."""
        if self._server is not None:
            self._server.close()
            self._release.set()
            await self._server.wait_closed()
            self._server = None
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def __aenter__(self) -> JwksServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                async with asyncio.timeout(5):
                    await reader.readuntil(b"\r\n\r\n")
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            self.requests += 1
            if self.mode == "hang":
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(10):
                        await self._release.wait()
                return
            status, body = "200 OK", json.dumps(self.document).encode()
            if self.mode == "500":
                status, body = "500 Internal Server Error", b"oops"
            elif self.mode == "bad-json":
                body = b'{"keys": [ {"kty": "RSA", '
            head = (
                f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._tasks.discard(task)
