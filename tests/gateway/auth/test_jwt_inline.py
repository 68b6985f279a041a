"""Inline JWK sets (``jwt.jwks``): validated by the policy loader, served by ``StaticJwks`` (nothing is
fetched), and the demo's token from examples/demo/mint_jwt.py verifies against policies/edge.yaml."""

from __future__ import annotations

import importlib.util
import json
import logging
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from jwt_testlib import (
    ALL_ALGORITHMS,
    AUDIENCE,
    ISSUER,
    SigningKey,
    bearer,
    claims,
    ec_key,
    ed_key,
    mint,
    rsa_key,
    run,
)
from pydantic import ValidationError

from gateway.auth.base import Verdict
from gateway.auth.jwks import JwksCache, StaticJwks
from gateway.auth.jwt import JwtAuthenticator
from gateway.state import build_authenticator
from shared.config.errors import PolicyError
from shared.config.loader import load_policy_set
from shared.config.model.edge import JwtSettings
from shared.config.policyset import PolicySet

REPO = Path(__file__).resolve().parents[3]
JWKS_LOGGER = "meshgate.gateway.auth.jwks"

RSA, EC, ED = rsa_key("inline-rsa"), ec_key("inline-ec"), ed_key("inline-ed")
OTHER_EC = ec_key("inline-other")

MESH = """\
apiVersion: meshgate/v1
kind: Mesh
trustDomain: example.org
"""


def provider_doc(jwt_block: str) -> str:
    """A Mesh and one jwt AuthProvider named ``users`` whose ``jwt:`` block is ``jwt_block``."""
    return (
        MESH
        + "---\n"
        + "apiVersion: meshgate/v1\n"
        + "kind: AuthProvider\n"
        + "name: users\n"
        + "type: jwt\n"
        + "jwt:\n"
        + textwrap.indent(textwrap.dedent(jwt_block), "  ")
    )


def write(folder: Path, text: str) -> Path:
    path = folder / "auth.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def line_of(path: Path, marker: str) -> int:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if marker in line:
            return number
    raise AssertionError(f"{marker!r} not in {path}")


def only_error(folder: Path) -> PolicyError:
    result = load_policy_set([folder])
    assert not result.ok and result.policy_set is None
    assert len(result.errors) == 1, [str(e) for e in result.errors]
    return result.errors[0]


def inline_settings(*keys: dict[str, Any], **over: Any) -> JwtSettings:
    base: dict[str, Any] = {
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "jwks": {"keys": list(keys)},
        "algorithms": ALL_ALGORITHMS,
        "leeway": timedelta(seconds=30),
    }
    base.update(over)
    return JwtSettings(**base)


def judge(settings: JwtSettings, *tokens: str) -> tuple[list[Verdict], JwtAuthenticator]:
    async def main() -> tuple[list[Verdict], JwtAuthenticator]:
        auth = JwtAuthenticator("inline", settings)
        try:
            return [await auth.authenticate(bearer(t)) for t in tokens], auth
        finally:
            await auth.close()

    return run(main())


def assert_rejected(verdict: Verdict, reason: str) -> None:
    assert verdict.identity is None and verdict.denial is None
    assert verdict.reason == reason


# -- the policy loader ----------------------------------------------------------------------------------


def test_inline_jwks_loads(tmp_path: Path) -> None:
    jwk = json.dumps(EC.jwk(use="sig", alg="ES256"))
    write(tmp_path, provider_doc(f"issuer: {ISSUER}\njwks:\n  keys:\n    - {jwk}\n"))
    result = load_policy_set([tmp_path])
    assert result.ok and result.policy_set is not None, [str(e) for e in result.errors]
    settings = result.policy_set.auth_providers["users"].jwt
    assert settings is not None
    assert settings.jwks_uri is None and settings.jwks == {"keys": [EC.jwk(use="sig", alg="ES256")]}


@pytest.mark.parametrize(
    "block",
    [
        "issuer: https://i.test\njwksUri: https://i.test/jwks.json\njwks:\n  keys: [{kty: EC}]\n",
        "issuer: https://i.test\naudiences: [api]\n",
    ],
    ids=["both", "neither"],
)
def test_exactly_one_key_source_is_required(tmp_path: Path, block: str) -> None:
    path = write(tmp_path, provider_doc(block))
    err = only_error(tmp_path)
    assert (err.file, err.line, err.ref, err.field) == (
        str(path),
        line_of(path, "jwt:"),
        "AuthProvider/users",
        "jwt",
    )
    assert err.message == "give exactly one of jwksUri (a URL) and jwks (inline keys)"
    assert str(err).startswith(f"{path}:{line_of(path, 'jwt:')}: AuthProvider/users: jwt: give exactly one")


def test_private_key_material_is_refused(tmp_path: Path) -> None:
    private = RSA.private.private_numbers()
    jwk = {**RSA.jwk(), "d": "AQAB", "p": "AQAB"}
    assert private.d  # a real RSA private key has a d; any d is refused
    path = write(tmp_path, provider_doc(f"issuer: https://i.test\njwks:\n  keys:\n    - {json.dumps(jwk)}\n"))
    err = only_error(tmp_path)
    assert (err.line, err.ref, err.field) == (line_of(path, "jwt:"), "AuthProvider/users", "jwt")
    assert err.message == "jwks holds a private key (field d): give only public keys"


@pytest.mark.parametrize(
    "jwks",
    ["{}", "{keys: []}", "{keys: {kty: EC}}", "{keys: [EC]}", "{other: [{kty: EC}]}"],
)
def test_jwks_must_be_a_key_set(tmp_path: Path, jwks: str) -> None:
    path = write(tmp_path, provider_doc(f"issuer: https://i.test\njwks: {jwks}\n"))
    err = only_error(tmp_path)
    assert (err.line, err.field) == (line_of(path, "jwt:"), "jwt")
    assert err.message.startswith("jwks must be a JWK set")


def test_settings_model_refuses_both_neither_and_private_keys() -> None:
    with pytest.raises(ValidationError, match="give exactly one of jwksUri"):
        JwtSettings(issuer=ISSUER, jwks_uri="https://i.test/jwks", jwks={"keys": [EC.jwk()]})
    with pytest.raises(ValidationError, match="give exactly one of jwksUri"):
        JwtSettings(issuer=ISSUER)
    with pytest.raises(ValidationError, match="private key"):
        JwtSettings(issuer=ISSUER, jwks={"keys": [EC.jwk(), {**OTHER_EC.jwk(), "d": "x"}]})


# -- StaticJwks through JwtAuthenticator --------------------------------------------------------------------


@pytest.mark.parametrize("key", [RSA, EC, ED], ids=lambda k: k.alg)
def test_token_signed_by_the_inline_key_verifies(key: SigningKey) -> None:
    settings = inline_settings(RSA.jwk(), EC.jwk(), ED.jwk())
    (verdict,), auth = judge(settings, mint(key, claims(sub="alice")))
    assert verdict.identity is not None, verdict.reason
    assert verdict.identity.principal == "alice" and verdict.identity.provider == "inline"
    assert isinstance(auth.jwks, StaticJwks) and not isinstance(auth.jwks, JwksCache)
    assert auth.jwks.uri == "inline"
    assert auth.jwks.stats == {"fetches": 0, "fetch_errors": 0, "refetches_on_unknown_kid": 0}
    assert {k.kid for k in auth.jwks.keys} == {RSA.kid, EC.kid, ED.kid}


def test_wrong_kid_is_refused() -> None:
    settings = inline_settings(EC.jwk())
    (verdict,), auth = judge(settings, mint(EC, kid="not-published"))
    assert_rejected(verdict, "unknown signing key")
    assert auth.jwks.stats["refetches_on_unknown_kid"] == 0, "inline keys are never fetched"


def test_right_kid_but_another_key_is_a_bad_signature() -> None:
    settings = inline_settings(EC.jwk())
    (verdict,), _ = judge(settings, mint(OTHER_EC, kid=EC.kid))
    assert_rejected(verdict, "bad signature")


def test_alg_that_does_not_fit_the_inline_key_is_refused() -> None:
    settings = inline_settings(EC.jwk(alg="ES256"), RSA.jwk(alg="RS256"))
    (verdict,), _ = judge(settings, mint(RSA, alg="PS256"))
    assert_rejected(verdict, "unknown signing key")


def test_token_without_kid_needs_a_single_fitting_key() -> None:
    one, _ = judge(inline_settings(EC.jwk(), RSA.jwk()), mint(EC, kid=None))
    assert one[0].identity is not None, one[0].reason
    two, _ = judge(inline_settings(EC.jwk(), OTHER_EC.jwk()), mint(EC, kid=None))
    assert_rejected(two[0], "unknown signing key")


def test_claims_are_still_checked_with_inline_keys() -> None:
    settings = inline_settings(EC.jwk())
    expired = claims(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200, nbf=None)
    verdicts, _ = judge(settings, mint(EC, expired), mint(EC, claims(aud="other")), mint(EC, claims(iss="x")))
    assert [v.reason for v in verdicts] == ["token expired", "wrong audience", "wrong issuer"]


@pytest.mark.parametrize(
    "jwks",
    [
        {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}]},  # symmetric: never used
        {"keys": [{**EC.jwk(), "use": "enc"}]},
        {"keys": [{"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA", "kid": "p521"}]},
        {"keys": [{**EC.jwk(), "x": "***"}]},  # malformed material spoils the set
        {"keys": [EC.jwk(), {**RSA.jwk(), "n": "!"}]},
    ],
    ids=["oct", "enc-only", "unsupported-curve", "bad-base64", "one-bad-key"],
)
def test_unusable_inline_set_logs_and_verifies_nothing(
    caplog: pytest.LogCaptureFixture, jwks: dict[str, Any]
) -> None:
    settings = inline_settings(EC.jwk(), jwks=jwks)
    with caplog.at_level(logging.ERROR, logger=JWKS_LOGGER):
        verdicts, auth = judge(settings, mint(EC), mint(EC, kid=None))
    for verdict in verdicts:
        assert_rejected(verdict, "unknown signing key")
    assert auth.jwks.keys == [] and auth.jwks.stats["fetch_errors"] == 1
    messages = [r.getMessage() for r in caplog.records if r.name == JWKS_LOGGER]
    assert any(m.startswith("inline JWKS: ") and m.endswith("no token can be verified") for m in messages), (
        messages
    )


def test_static_jwks_skips_private_keys_given_past_the_model(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger=JWKS_LOGGER):
        jwks = StaticJwks({"keys": [{**EC.jwk(), "d": "AAAA"}, RSA.jwk()]})
    assert [k.kid for k in jwks.keys] == [RSA.kid]
    assert "carries private key material" in caplog.text

    async def lookups() -> tuple[Any, Any]:
        await jwks.start()
        found = await jwks.key(EC.kid, "ES256"), await jwks.key(RSA.kid, "RS256")
        await jwks.close()
        return found

    private_one, public_one = run(lookups())
    assert private_one is None and public_one is not None and jwks.started


# -- the demo -----------------------------------------------------------------------------------------------


def load_mint_jwt() -> ModuleType:
    path = REPO / "examples" / "demo" / "mint_jwt.py"
    spec = importlib.util.spec_from_file_location("demo_mint_jwt_for_inline_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def demo_policies() -> PolicySet:
    result = load_policy_set([REPO / "policies"])
    assert result.ok and result.policy_set is not None, [str(e) for e in result.errors]
    return result.policy_set


def test_demo_token_verifies_against_the_inline_key_in_policies() -> None:
    policies = demo_policies()
    doc = policies.auth_providers["demo-jwt"]
    assert doc.jwt is not None and doc.jwt.jwks is not None and doc.jwt.jwks_uri is None
    mint_jwt = load_mint_jwt()
    assert (doc.jwt.issuer, doc.jwt.audiences[0]) == (mint_jwt.ISSUER, mint_jwt.AUDIENCE)
    tokens = [
        mint_jwt.mint("bob"),
        mint_jwt.mint("carol", role="admin"),
        mint_jwt.mint("eve", now=time.time() - 7200),
    ]

    async def main() -> list[Verdict]:
        auth = build_authenticator(doc, None)
        assert isinstance(auth, JwtAuthenticator) and isinstance(auth.jwks, StaticJwks)
        try:
            return [await auth.authenticate(bearer(t)) for t in tokens]
        finally:
            await auth.close()

    bob, carol, eve = run(main())
    assert bob.identity is not None, bob.reason
    assert bob.identity.principal == "bob" and bob.identity.provider == "demo-jwt"
    assert "role" not in bob.identity.claims
    assert carol.identity is not None and carol.identity.claims["role"] == "admin"
    assert_rejected(eve, "token expired")


def test_demo_inline_key_survives_the_json_the_gateway_receives() -> None:
    again = PolicySet.from_json(json.loads(json.dumps(demo_policies().to_json())))
    doc = again.auth_providers["demo-jwt"]
    assert doc.jwt is not None
    (verdict,), _ = judge(doc.jwt, load_mint_jwt().mint("bob"))
    assert verdict.identity is not None and verdict.identity.principal == "bob", verdict.reason
