"""JwtAuthenticator: tokens minted with PyJWT, keys served by a real JWKS endpoint."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from datetime import timedelta
from typing import Any

import pytest
from jwt_testlib import (
    ISSUER,
    JwksServer,
    SigningKey,
    b64u,
    bearer,
    claims,
    ec_key,
    ed_key,
    mint,
    mint_bytes,
    mint_hmac,
    mint_raw,
    request,
    rsa_key,
    run,
    settings,
)

from gateway.auth.base import EdgeRequest, Verdict
from gateway.auth.jwks import JwksCache
from gateway.auth.jwt import JwtAuthenticator
from shared.config.model.edge import ClaimToHeader, JwtSettings

RSA, PS, EC256, EC384, ED = (
    rsa_key("rsa-1"),
    rsa_key("rsa-ps", "PS256"),
    ec_key("ec-256"),
    ec_key("ec-384", "P-384"),
    ed_key("ed-1"),
)
ALL_KEYS = (RSA, PS, EC256, EC384, ED)


def judge(
    requests: list[EdgeRequest], *, keys: tuple[SigningKey, ...] = ALL_KEYS, **over: Any
) -> list[Verdict]:
    """Serve ``keys``, build an authenticator (settings ``over``) and judge each request in turn."""

    async def main() -> list[Verdict]:
        async with JwksServer(*keys) as server:
            auth = JwtAuthenticator("jwt-main", settings(server.url, **over))
            try:
                return [await auth.authenticate(r) for r in requests]
            finally:
                await auth.close()

    return run(main())


def one(token: str, **over: Any) -> Verdict:
    return judge([bearer(token)], **over)[0]


def assert_rejected(verdict: Verdict, reason: str, token: str | None = None) -> None:
    assert verdict.identity is None and verdict.denial is None
    assert verdict.reason == reason
    if token is not None:  # reasons never echo token contents
        for part in token.split("."):
            if len(part) > 4:
                assert part not in (verdict.reason or "")


@pytest.mark.parametrize("key", ALL_KEYS, ids=lambda k: k.alg)
def test_each_supported_algorithm_verifies(key: SigningKey) -> None:
    token = mint(key, claims(sub="alice", tenant="acme"))
    verdict = one(token)
    assert verdict.identity is not None, verdict.reason
    assert verdict.identity.principal == "alice"
    assert verdict.identity.provider == "jwt-main"
    assert verdict.identity.claims["tenant"] == "acme"
    assert verdict.identity.claims["iss"] == ISSUER


def test_rsa_keys_verify_every_rs_and_ps_variant() -> None:
    tokens = [mint(RSA, alg=alg) for alg in ("RS384", "RS512", "PS256", "PS384", "PS512")]
    verdicts = judge([bearer(t) for t in tokens])
    assert all(v.identity is not None for v in verdicts), [v.reason for v in verdicts]


def test_where_the_token_is_read_from() -> None:
    token = mint(RSA)
    verdicts = judge(
        [
            request(),
            request([("authorization", f"bearer {token}")]),
            request([("authorization", f"BEARER   {token}  ")]),
            request([("authorization", f"Bearer\t{token}")]),
            request([("authorization", "Basic dXNlcjpwYXNz")]),
            request([("authorization", "Bearer")]),
            request([("authorization", "Bearer   ")]),
            request([("x-token", token)]),  # not the configured header
            request([("authorization", "")]),  # an empty header: no credentials (was a 500)
            request([("authorization", " \t ")]),
        ]
    )
    assert verdicts[0] == Verdict.absent()
    assert verdicts[8] == verdicts[9] == Verdict.absent()
    assert all(v.identity is not None for v in verdicts[1:4]), [v.reason for v in verdicts[1:4]]
    assert verdicts[4] == Verdict.absent()  # another scheme: another provider's business
    assert_rejected(verdicts[5], "empty bearer token")
    assert_rejected(verdicts[6], "empty bearer token")
    assert verdicts[7] == Verdict.absent()

    custom = judge(
        [request([("x-token", token)]), request([("x-token", "  ")]), bearer(token)], header="x-token"
    )
    assert custom[0].identity is not None  # other headers carry the raw token
    assert custom[1] == Verdict.absent()
    assert custom[2] == Verdict.absent()


def test_hmac_signed_with_the_rsa_public_key_is_rejected() -> None:
    """The classic confusion: HS256 with the issuer's *public* key as the HMAC secret."""
    pem = RSA.public_pem()
    jwk_json = json.dumps(RSA.jwk()).encode()
    forged = [
        mint_hmac(secret, {"kid": RSA.kid, "typ": "JWT"}, claims(sub="mallory"), alg)
        for secret in (pem, pem.strip(), jwk_json)
        for alg in ("HS256", "HS384", "HS512")
    ]
    # The forgery is real: a verifier that trusted the header's alg would accept it.
    head, body, sig = forged[0].split(".")
    expected = hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    assert b64u(expected) == sig
    for verdict, token in zip(judge([bearer(t) for t in forged]), forged, strict=True):
        assert_rejected(verdict, "HMAC algorithms refused", token)

    # Even with HS256 smuggled into the settings (bypassing validation), HMAC stays refused.
    async def main() -> Verdict:
        async with JwksServer(RSA) as server:
            bad = settings(server.url)
            bad = JwtSettings.model_construct(**{**dict(bad), "algorithms": ["HS256", "RS256"]})
            auth = JwtAuthenticator("jwt-main", bad)
            try:
                return await auth.authenticate(bearer(forged[0]))
            finally:
                await auth.close()

    assert_rejected(run(main()), "HMAC algorithms refused")


def test_alg_none_is_refused() -> None:
    payload = claims(sub="mallory")
    tokens = [
        mint_raw({"alg": "none", "kid": RSA.kid}, payload),
        mint_raw({"alg": "None", "kid": RSA.kid}, payload),
        mint_raw({"alg": "NONE"}, payload, b"anything"),
    ]
    for verdict in judge([bearer(t) for t in tokens]):
        assert_rejected(verdict, "unsigned token refused")
    assert_rejected(one(mint_raw({"kid": RSA.kid}, payload, b"x")), "missing alg")


def test_algorithms_not_configured_are_refused() -> None:
    verdicts = judge([bearer(mint(EC256)), bearer(mint(ED)), bearer(mint(RSA))], algorithms=["RS256"])
    assert_rejected(verdicts[0], "algorithm not allowed")
    assert_rejected(verdicts[1], "algorithm not allowed")
    assert verdicts[2].identity is not None


def test_the_key_type_must_fit_the_algorithm() -> None:
    # Each token is genuinely signed, but names a kid whose key is of another type.
    tokens = [
        mint(EC256, kid=RSA.kid),  # ES256 with an RSA key
        mint(RSA, kid=EC256.kid),  # RS256 with an EC key
        mint(EC384, kid=EC256.kid),  # ES384 with a P-256 key
        mint(EC256, kid=EC384.kid),  # ES256 with a P-384 key
        mint(ED, kid=RSA.kid),  # EdDSA with an RSA key
        mint(RSA, alg="PS256", kid=ED.kid),  # PS256 with an Ed25519 key
    ]
    for verdict, token in zip(judge([bearer(t) for t in tokens]), tokens, strict=True):
        assert_rejected(verdict, "unknown signing key", token)


def test_signature_and_key_problems() -> None:
    good = mint(RSA)
    head, _, sig = good.split(".")
    tampered = f"{head}.{b64u(json.dumps(claims(sub='root')).encode())}.{sig}"
    other_key = mint(rsa_key("attacker"), kid=RSA.kid)
    unknown_kid = mint(rsa_key("attacker"))
    verdicts = judge([bearer(t) for t in (tampered, other_key, unknown_kid)])
    assert_rejected(verdicts[0], "bad signature", tampered)
    assert_rejected(verdicts[1], "bad signature", other_key)
    assert_rejected(verdicts[2], "unknown signing key", unknown_kid)


def test_time_claims_with_leeway() -> None:
    now = int(time.time())
    cases = {
        "expired": (claims(exp=now - 100), "token expired"),
        "expired within leeway": (claims(exp=now - 10), None),
        "no exp": (claims(exp=None), "missing exp claim"),
        "exp not a number": (claims(exp="tomorrow"), "malformed token"),
        "nbf in the future": (claims(nbf=now + 100), "token not yet valid"),
        "nbf within leeway": (claims(nbf=now + 10), None),
        "iat in the future": (claims(iat=now + 100), "token not yet valid"),
        "iat within leeway": (claims(iat=now + 10), None),
        "iat not a number": (claims(iat="soon"), "bad iat claim"),
    }
    verdicts = judge([bearer(mint(RSA, payload)) for payload, _ in cases.values()])
    for (case, (_, reason)), verdict in zip(cases.items(), verdicts, strict=True):
        if reason is None:
            assert verdict.identity is not None, (case, verdict.reason)
        else:
            assert verdict.reason == reason and verdict.identity is None, case
    # Without leeway the "within leeway" tokens fail.
    strict = judge([bearer(mint(RSA, claims(exp=now - 10)))], leeway=timedelta(0))
    assert_rejected(strict[0], "token expired")


def test_issuer_must_match_exactly() -> None:
    payloads = [
        claims(iss="https://evil.test/"),
        claims(iss=ISSUER + "x"),
        claims(iss=ISSUER[:-1]),
        claims(iss=[ISSUER]),
        claims(iss=None),
    ]
    verdicts = judge([bearer(mint_bytes(RSA, {}, json.dumps(p).encode())) for p in payloads])
    for verdict in verdicts[:4]:
        assert_rejected(verdict, "wrong issuer")
    assert_rejected(verdicts[4], "missing iss claim")


def test_audience_string_or_list_must_meet_the_configured_ones() -> None:
    payloads = [
        claims(aud="api"),
        claims(aud=["other", "api"]),
        claims(aud="other"),
        claims(aud=["other", "more"]),
        claims(aud=None),
        claims(aud=["api", 7]),
        claims(aud="admin"),
    ]
    verdicts = judge([bearer(mint(RSA, p)) for p in payloads], audiences=["api", "admin"])
    assert verdicts[0].identity is not None
    assert verdicts[1].identity is not None
    assert_rejected(verdicts[2], "wrong audience")
    assert_rejected(verdicts[3], "wrong audience")
    assert_rejected(verdicts[4], "missing aud claim")
    assert_rejected(verdicts[5], "wrong audience")
    assert verdicts[6].identity is not None
    # No audiences configured: aud is not checked.
    relaxed = judge([bearer(mint(RSA, p)) for p in payloads[:5]], audiences=[])
    assert all(v.identity is not None for v in relaxed), [v.reason for v in relaxed]


def test_principal_claim() -> None:
    payloads = [
        claims(email="a@example.com"),
        claims(email=None),
        claims(email=""),
        claims(email=42),
        claims(email=["a@example.com"]),
    ]
    verdicts = judge([bearer(mint(RSA, p)) for p in payloads], principal_claim="email")
    assert verdicts[0].identity is not None and verdicts[0].identity.principal == "a@example.com"
    for verdict in verdicts[1:]:
        assert_rejected(verdict, "missing principal claim")
    assert_rejected(one(mint(RSA, claims(sub=None))), "missing principal claim")


def test_claims_to_headers() -> None:
    mappings = [
        ClaimToHeader(claim="tenant", header="x-tenant"),
        ClaimToHeader(claim="roles", header="x-roles"),
        ClaimToHeader(claim="level", header="x-level"),
        ClaimToHeader(claim="admin", header="x-admin"),
        ClaimToHeader(claim="team", header="x-team"),  # absent from the token
        ClaimToHeader(claim="evil_cr", header="x-evil-cr"),
        ClaimToHeader(claim="evil_lf", header="x-evil-lf"),
        ClaimToHeader(claim="evil_nul", header="x-evil-nul"),
        ClaimToHeader(claim="evil_list", header="x-evil-list"),
    ]
    payload = claims(
        tenant="acme",
        roles=["reader", "writer"],
        level=3,
        admin=False,
        evil_cr="a\rb",
        evil_lf="a\nx-injected: 1",
        evil_nul="a\x00b",
        evil_list=["ok", "bad\r\n"],
    )
    verdict = judge([bearer(mint(RSA, payload))], claims_to_headers=mappings)[0]
    assert verdict.identity is not None, verdict.reason
    assert list(verdict.identity.upstream_headers) == [
        ("x-tenant", "acme"),
        ("x-roles", "reader,writer"),
        ("x-level", "3"),
        ("x-admin", "false"),
    ]
    # Unset headers are removed upstream, so a client cannot supply them itself.
    assert list(verdict.identity.remove_headers) == [
        "x-team",
        "x-evil-cr",
        "x-evil-lf",
        "x-evil-nul",
        "x-evil-list",
    ]
    assert dict(verdict.identity.claims) == payload


def test_malformed_tokens_are_short_rejections() -> None:
    valid = mint(RSA)
    head, body, sig = valid.split(".")
    huge = mint(RSA, claims(blob="x" * 20_000))
    cases = {
        "garbage": ("not-a-token", "malformed token"),
        "two segments": (f"{head}.{body}", "malformed token"),
        "four segments": (f"{valid}.{sig}", "malformed token"),
        "five segments (JWE)": (f"{head}.{body}.{sig}.{sig}.{sig}", "malformed token"),
        "bad base64 chars": (f"{head}!.{body}.{sig}", "malformed token"),
        "bad base64 length": (f"AAAAA.{body}.{sig}", "malformed token header"),
        "header not JSON": (f"{b64u(b'not json')}.{body}.{sig}", "malformed token header"),
        "header a JSON list": (f"{b64u(b'[1, 2]')}.{body}.{sig}", "malformed token header"),
        "header not UTF-8": (f"{b64u(bytes([0xFF, 0xFE]))}.{body}.{sig}", "malformed token header"),
        "huge": (huge, "token too large"),
        "kid not a string": (mint_raw({"alg": "RS256", "kid": 7}, claims(), b"sig"), "malformed kid"),
        "crit header": (mint(RSA, crit=["exp"]), "unsupported critical header"),
        "empty signature": (f"{head}.{body}.", "bad signature"),
        "unicode": (f"{head}.{body}.{sig}\u00e9", "malformed token"),
    }
    assert len(huge) > 16 * 1024
    verdicts = judge([bearer(token) for token, _ in cases.values()])
    for (case, (token, reason)), verdict in zip(cases.items(), verdicts, strict=True):
        assert verdict.identity is None, case
        assert verdict.reason == reason, (case, verdict.reason)
        assert len(verdict.reason) <= 40
        for part in token.split("."):
            if len(part) > 4:
                assert part not in verdict.reason


def test_a_signed_payload_that_is_not_a_json_object_is_rejected() -> None:
    tokens = [mint_bytes(key, {}, body) for key in (RSA, EC256) for body in (b"{not json", b"[1, 2]", b"")]
    for verdict, token in zip(judge([bearer(t) for t in tokens]), tokens, strict=True):
        assert_rejected(verdict, "malformed token", token)


def test_unexpected_errors_become_rejections(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> Verdict:
        async with JwksServer(RSA) as server:
            jwks = JwksCache(server.url, refresh_interval=600)
            auth = JwtAuthenticator("jwt-main", settings(server.url), jwks=jwks)

            async def broken(kid: str | None, alg: str) -> Any:
                raise RuntimeError("boom")

            jwks.key = broken  # type: ignore[method-assign]
            try:
                return await auth.authenticate(bearer(mint(RSA)))
            finally:
                await auth.close()
                await jwks.close()

    assert_rejected(run(main()), "invalid token")
    assert "unexpected error" in caplog.text


def test_rotation_through_the_authenticator_and_shared_cache_ownership() -> None:
    new = ec_key("rotated")

    async def main() -> None:
        async with JwksServer(RSA) as server:
            jwks = JwksCache(server.url, refresh_interval=600, min_refetch_interval=0.2)
            auth = JwtAuthenticator("jwt-main", settings(server.url), jwks=jwks)
            try:
                assert (await auth.authenticate(bearer(mint(RSA)))).identity is not None
                assert jwks.started  # started on first use
                server.publish(RSA, new)
                await asyncio.sleep(0.25)
                verdict = await auth.authenticate(bearer(mint(new)))
                assert verdict.identity is not None, verdict.reason
                assert jwks.stats["refetches_on_unknown_kid"] == 1
                # Issuer down: the keys held keep working.
                await server.stop()
                await asyncio.sleep(0.25)
                assert_rejected(await auth.authenticate(bearer(mint(rsa_key("x")))), "unknown signing key")
                assert jwks.stats["fetch_errors"] == 1
                assert (await auth.authenticate(bearer(mint(new)))).identity is not None
                await auth.close()
                # A shared cache is its owner's to close.
                assert jwks._task is not None and not jwks._task.done()
            finally:
                await jwks.close()

    run(main())


def test_an_own_cache_is_closed_with_the_authenticator() -> None:
    async def main() -> None:
        async with JwksServer(RSA) as server:
            auth = JwtAuthenticator("jwt-main", settings(server.url, refresh_interval=timedelta(seconds=1)))
            assert (await auth.authenticate(bearer(mint(RSA)))).identity is not None
            task = auth.jwks._task
            assert task is not None and not task.done()
            await auth.close()
            assert task.done()

    run(main())


def test_concurrent_first_requests_share_one_fetch() -> None:
    async def main() -> None:
        async with JwksServer(*ALL_KEYS) as server:
            auth = JwtAuthenticator("jwt-main", settings(server.url))
            try:
                tokens = [mint(k) for k in ALL_KEYS] * 10
                verdicts = await asyncio.gather(*(auth.authenticate(bearer(t)) for t in tokens))
                assert all(v.identity is not None for v in verdicts), {v.reason for v in verdicts}
                assert server.requests == 1
            finally:
                await auth.close()

    run(main())


def test_tokens_with_made_up_kids_cause_at_most_one_refetch() -> None:
    attacker = rsa_key("attacker")

    async def main() -> None:
        async with JwksServer(RSA) as server:
            jwks = JwksCache(server.url, refresh_interval=600, min_refetch_interval=0.3)
            auth = JwtAuthenticator("jwt-main", settings(server.url), jwks=jwks)
            try:
                assert (await auth.authenticate(bearer(mint(RSA)))).identity is not None
                await asyncio.sleep(0.35)
                tokens = [mint(attacker, kid=secrets.token_hex(8)) for _ in range(100)]
                verdicts = await asyncio.gather(*(auth.authenticate(bearer(t)) for t in tokens))
                assert {v.reason for v in verdicts} == {"unknown signing key"}
                assert server.requests <= 2  # the first fetch and at most one refetch
                assert jwks.stats["refetches_on_unknown_kid"] <= 1
            finally:
                await auth.close()
                await jwks.close()

    run(main())
