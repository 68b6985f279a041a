"""JwksCache against a real HTTP server: lookups, rotation, rate-limited refetch, failures."""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt_testlib import JwksServer, b64u, ec_key, ed_key, rsa_key, run, wait_for

from gateway.auth.jwks import JwksCache, JwksError, parse_jwks


def test_keys_are_found_by_kid_and_must_fit_the_algorithm() -> None:
    a, b, c, d = rsa_key("a"), ec_key("b"), ec_key("c", "P-384"), ed_key("d")

    async def main() -> None:
        async with JwksServer(a, b, c, d) as server:
            cache = JwksCache(server.url, refresh_interval=600, min_refetch_interval=0)
            try:
                await cache.start()
                assert cache.stats == {"fetches": 1, "fetch_errors": 0, "refetches_on_unknown_kid": 0}
                rsa_pub = await cache.key("a", "RS256")
                assert isinstance(rsa_pub, rsa.RSAPublicKey)
                assert rsa_pub.public_numbers() == a.public.public_numbers()
                for alg in ("RS384", "RS512", "PS256", "PS384", "PS512"):
                    assert await cache.key("a", alg) is not None
                assert isinstance(await cache.key("b", "ES256"), ec.EllipticCurvePublicKey)
                assert isinstance(await cache.key("c", "ES384"), ec.EllipticCurvePublicKey)
                assert isinstance(await cache.key("d", "EdDSA"), ed25519.Ed25519PublicKey)
                # The key's type must fit the algorithm: a known kid never lends itself to another alg.
                for kid, alg in [
                    ("a", "ES256"),
                    ("a", "EdDSA"),
                    ("a", "HS256"),
                    ("b", "ES384"),
                    ("b", "RS256"),
                    ("c", "ES256"),
                    ("d", "RS256"),
                    ("d", "ES256"),
                ]:
                    assert await cache.key(kid, alg) is None, (kid, alg)
                # ... and a known kid with the wrong alg is no reason to refetch.
                assert cache.stats["refetches_on_unknown_kid"] == 0
                assert server.requests == 1
            finally:
                await cache.close()

    run(main())


def test_kidless_tokens_use_the_only_fitting_key() -> None:
    async def main() -> None:
        async with JwksServer() as server:
            one = rsa_key("x").jwk()
            one.pop("kid")
            server.document = {"keys": [one]}
            cache = JwksCache(server.url, refresh_interval=600, min_refetch_interval=600)
            try:
                await cache.start()
                assert await cache.key(None, "RS256") is not None
                assert await cache.key("x", "RS256") is None  # a kid must match exactly
            finally:
                await cache.close()
            two = [rsa_key("x").jwk(), rsa_key("y").jwk()]
            for k in two:
                k.pop("kid")
            server.document = {"keys": two}
            cache = JwksCache(server.url, refresh_interval=600, min_refetch_interval=600)
            try:
                await cache.start()
                assert await cache.key(None, "RS256") is None  # ambiguous: refuse
            finally:
                await cache.close()

    run(main())


def test_keys_not_for_signatures_are_ignored() -> None:
    a, b, c, e, f = rsa_key("a"), rsa_key("b"), ec_key("c"), rsa_key("e"), rsa_key("f")
    p521 = ec.generate_private_key(ec.SECP521R1()).public_key().public_numbers()
    document = {
        "keys": [
            a.jwk(use="enc"),
            b.jwk(use="sig"),
            c.jwk(),
            e.jwk(alg="RS384"),
            f.jwk(key_ops=["encrypt"]),
            {"kty": "oct", "kid": "sym", "k": b64u(b"0123456789abcdef0123456789abcdef")},
            {
                "kty": "EC",
                "crv": "P-521",
                "kid": "p521",
                "x": b64u(p521.x.to_bytes(66, "big")),
                "y": b64u(p521.y.to_bytes(66, "big")),
            },
            {"kty": "OKP", "crv": "X25519", "kid": "x25519", "x": b64u(bytes(32))},
            rsa_key("priv").jwk(d=b64u(b"private exponent, published by mistake")),
            b.jwk(kid="rsa-oaep", alg="RSA-OAEP"),
        ]
    }
    keys = {k.kid: k.algorithms for k in parse_jwks(json.dumps(document).encode())}
    assert set(keys) == {"b", "c", "e"}
    assert keys["e"] == {"RS384"}
    assert keys["c"] == {"ES256"}

    async def main() -> None:
        async with JwksServer() as server:
            server.document = document
            cache = JwksCache(server.url, refresh_interval=600, min_refetch_interval=600)
            try:
                await cache.start()
                assert await cache.key("a", "RS256") is None
                assert await cache.key("b", "RS256") is not None
                assert await cache.key("e", "RS256") is None
                assert await cache.key("e", "RS384") is not None
                assert await cache.key("sym", "HS256") is None
                assert await cache.key("priv", "RS256") is None
            finally:
                await cache.close()

    run(main())


def test_unknown_kid_refetches_after_rotation_and_removed_keys_stop_working() -> None:
    a, b, c = rsa_key("a"), ec_key("b"), rsa_key("c")

    async def main() -> None:
        async with JwksServer(a) as server:
            cache = JwksCache(server.url, refresh_interval=600, min_refetch_interval=0.3)
            try:
                await cache.start()
                server.publish(a, b)  # the issuer rotates in a new key
                # Right after the first fetch, a refetch is not allowed yet.
                assert await cache.key("b", "ES256") is None
                assert cache.stats["refetches_on_unknown_kid"] == 0
                await asyncio.sleep(0.35)
                assert await cache.key("b", "ES256") is not None
                assert cache.stats["refetches_on_unknown_kid"] == 1
                assert server.requests == 2
                # The issuer drops the old key: after the next fetch it no longer verifies.
                server.publish(b, c)
                await asyncio.sleep(0.35)
                assert await cache.key("c", "RS256") is not None
                assert await cache.key("a", "RS256") is None
            finally:
                await cache.close()

    run(main())


def test_unknown_kids_cannot_make_the_cache_hammer_the_issuer() -> None:
    a = rsa_key("a")

    async def main() -> None:
        async with JwksServer(a) as server:
            cache = JwksCache(server.url, refresh_interval=600, min_refetch_interval=0.5)
            try:
                await cache.start()
                assert server.requests == 1
                # Within the interval: no fetch at all.
                found = await asyncio.gather(*(cache.key(secrets.token_hex(8), "RS256") for _ in range(100)))
                assert found == [None] * 100
                assert server.requests == 1
                await asyncio.sleep(0.55)
                # 100 concurrent, then 100 sequential unknown kids: one refetch between them.
                found = await asyncio.gather(*(cache.key(secrets.token_hex(8), "RS256") for _ in range(100)))
                for _ in range(100):
                    found.append(await cache.key(secrets.token_hex(8), "RS256"))
                assert found == [None] * 200
                assert server.requests == 2
                assert cache.stats["refetches_on_unknown_kid"] == 1
                assert await cache.key("a", "RS256") is not None
            finally:
                await cache.close()

    run(main())


def test_background_refresh_picks_up_new_keys() -> None:
    a, b = rsa_key("a"), ed_key("b")

    async def main() -> None:
        async with JwksServer(a) as server:
            cache = JwksCache(server.url, refresh_interval=0.2, min_refetch_interval=600)
            try:
                await cache.start()
                await wait_for(lambda: server.requests >= 3, 5, "two background refreshes")
                server.publish(a, b)
                seen = server.requests
                await wait_for(lambda: server.requests > seen + 1, 5, "a refresh after the rotation")
                assert await cache.key("b", "EdDSA") is not None
                assert cache.stats["refetches_on_unknown_kid"] == 0
                assert cache.stats["fetch_errors"] == 0
            finally:
                await cache.close()
            requests = server.requests
            await asyncio.sleep(0.3)
            assert server.requests == requests  # closed: no more refreshes

    run(main())


def _bad_rsa() -> dict[str, Any]:
    return {"kty": "RSA", "kid": "bad", "n": "!!!not-base64!!!", "e": "AQAB"}


def _bad_ec_point() -> dict[str, Any]:
    good = ec_key("bad-point").jwk()
    return good | {"y": b64u(bytes(31) + b"\x01")}


@pytest.mark.parametrize(
    "breakage",
    ["500", "bad-json", "not-a-set", "bad-rsa-key", "bad-ec-point", "no-usable-key", "refused", "timeout"],
)
def test_a_failed_fetch_keeps_the_old_keys(breakage: str) -> None:
    a, b = rsa_key("a"), ec_key("b")

    async def main() -> None:
        server = await JwksServer(a).start()
        cache = JwksCache(server.url, refresh_interval=600, min_refetch_interval=0, timeout=0.3)
        try:
            await cache.start()
            if breakage in ("500", "bad-json"):
                server.mode = breakage
            elif breakage == "timeout":
                server.mode = "hang"
            elif breakage == "not-a-set":
                server.document = [b.jwk()]
            elif breakage == "bad-rsa-key":
                server.document = {"keys": [b.jwk(), _bad_rsa()]}
            elif breakage == "bad-ec-point":
                server.document = {"keys": [b.jwk(), _bad_ec_point()]}
            elif breakage == "no-usable-key":
                server.document = {"keys": [b.jwk(use="enc")]}
            elif breakage == "refused":
                await server.stop()
            assert await cache.key("b", "ES256") is None  # unknown kid: refetch, which fails
            assert cache.stats == {"fetches": 2, "fetch_errors": 1, "refetches_on_unknown_kid": 1}
            assert await cache.key("a", "RS256") is not None  # the old key still verifies
            assert [k.kid for k in cache.keys] == ["a"]
        finally:
            await cache.close()
            await server.stop()

    run(main())


def test_start_does_not_raise_when_the_issuer_is_down_and_recovers_later() -> None:
    a = rsa_key("a")

    async def main() -> None:
        server = JwksServer(a)  # not started: connection refused
        cache = JwksCache(server.url, refresh_interval=600, min_refetch_interval=0.2)
        try:
            await cache.start()
            assert cache.stats["fetch_errors"] == 1
            assert await cache.key("a", "RS256") is None
            await server.start()
            await asyncio.sleep(0.25)
            assert await cache.key("a", "RS256") is not None
        finally:
            await cache.close()
            await server.stop()

    run(main())


def test_oversized_key_sets_and_small_rsa_keys_are_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_numbers()
    n_bytes = small.n.to_bytes(128, "big")
    with pytest.raises(JwksError, match="no usable"):
        parse_jwks(
            json.dumps({"keys": [{"kty": "RSA", "kid": "s", "n": b64u(n_bytes), "e": "AQAB"}]}).encode()
        )

    async def main() -> None:
        async with JwksServer(rsa_key("a")) as server:
            cache = JwksCache(server.url, refresh_interval=600, min_refetch_interval=0)
            try:
                await cache.start()
                server.document = {"keys": [rsa_key("b").jwk()], "padding": "x" * (1024 * 1024 + 10)}
                assert await cache.key("b", "RS256") is None
                assert cache.stats["fetch_errors"] == 1
                assert await cache.key("a", "RS256") is not None
            finally:
                await cache.close()

    run(main())


def test_a_client_passed_in_is_used_and_not_closed() -> None:
    async def main() -> None:
        async with JwksServer(rsa_key("a")) as server, httpx.AsyncClient() as client:
            cache = JwksCache(server.url, refresh_interval=600, client=client)
            await cache.start()
            assert await cache.key("a", "RS256") is not None
            await cache.close()
            assert not client.is_closed
            await cache.close()  # twice is fine

    run(main())


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "RSA", "kid": 7, "n": "AQAB", "e": "AQAB"},
        {"kty": "EC", "crv": "P-256", "kid": "short", "x": b64u(bytes(31)), "y": b64u(bytes(31))},
        {"kty": "OKP", "crv": "Ed25519", "kid": "short", "x": b64u(bytes(31))},
        {"kty": "RSA", "kid": "no-n", "e": "AQAB"},
    ],
)
def test_malformed_keys_make_the_set_unusable(jwk: dict[str, Any]) -> None:
    with pytest.raises(JwksError):
        parse_jwks(json.dumps({"keys": [rsa_key("a").jwk(), jwk]}).encode())
