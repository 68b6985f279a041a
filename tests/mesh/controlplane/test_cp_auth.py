"""Who may do what on the control plane: join tokens, ``/v1/sign`` (identity from the token or the SVID,
never from the CSR), renewal over mTLS, and registering only one's own service."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from cp_testlib import TD, Endpoint, error_of, join, register_body, sign_with_token
from cryptography.hazmat.primitives.asymmetric import ec

from mesh.controlplane.records import JoinToken
from shared.identity.ca import CertificateAuthority, load_chain_pem, make_csr
from shared.identity.spiffeid import workload_id
from shared.identity.svid import check_leaf
from shared.identity.tls import client_context

ORDERS = workload_id(TD, "orders")


# ----- join tokens -------------------------------------------------------------------------------------


def test_join_token_buys_an_svid_for_the_tokens_service(ep: Endpoint) -> None:
    r, key = sign_with_token(ep, ep.token("orders"))  # the CSR names nobody: the token decides
    assert r.status_code == 200, r.text
    data = r.json()
    chain = load_chain_pem(data["chain"].encode())
    assert check_leaf(chain[0], TD) == ORDERS
    assert data["identity"] == str(ORDERS)
    assert chain[0].public_key() == key.public_key()
    assert data["bundle"]["keys"] and data["expiresAt"] > time.time() + 3600


def test_single_use_token_is_refused_the_second_time(ep: Endpoint) -> None:
    token = ep.token("orders")
    first, _ = sign_with_token(ep, token)
    assert first.status_code == 200, first.text
    second, _ = sign_with_token(ep, token)
    assert second.status_code == 401
    code, message = error_of(second)
    assert code == "bad_token" and "already used" in message


def test_expired_token_is_refused(ep: Endpoint) -> None:
    token = ep.token("orders", ttl="200ms")
    time.sleep(0.35)
    r, _ = sign_with_token(ep, token)
    assert r.status_code == 401
    assert "expired" in error_of(r)[1]


def test_reusable_token_works_more_than_once(ep: Endpoint) -> None:
    token = ep.token("orders", reusable=True)
    for _ in range(2):
        r, _ = sign_with_token(ep, token)
        assert r.status_code == 200, r.text


def test_token_with_a_wrong_secret_or_unknown_id_is_refused(ep: Endpoint) -> None:
    token = JoinToken.parse(ep.token("orders"))
    assert token is not None
    wrong_secret = str(JoinToken(token.ca_pin, token.id, token.secret + "x"))
    unknown_id = str(JoinToken(token.ca_pin, "0123456789abcdef", token.secret))
    for text, reason in ((wrong_secret, "not valid"), (unknown_id, "not known")):
        r, _ = sign_with_token(ep, text)
        assert r.status_code == 401 and reason in error_of(r)[1]
    good, _ = sign_with_token(ep, str(token))  # failed attempts did not spend it
    assert good.status_code == 200


def test_sign_without_credentials_is_401_and_admin_gets_no_svid(ep: Endpoint) -> None:
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), ORDERS).decode()
    with ep.anon() as http:
        assert http.post("/v1/sign", json={"csr": csr}).status_code == 401
    with ep.admin() as http:
        r = http.post("/v1/sign", json={"csr": csr})
    assert r.status_code == 403 and "operators" in error_of(r)[1]


# ----- the CSR never decides the identity ----------------------------------------------------------------


def test_csr_naming_another_service_is_refused_and_the_token_stays_unspent(ep: Endpoint) -> None:
    token = ep.token("orders")
    r, _ = sign_with_token(ep, token, workload_id(TD, "web"))
    assert r.status_code == 400
    code, message = error_of(r)
    assert code == "csr_rejected" and "sa/web" in message and "sa/orders" in message
    again, _ = sign_with_token(ep, token, ORDERS)
    assert again.status_code == 200, again.text


def test_csr_for_a_foreign_trust_domain_is_refused(ep: Endpoint) -> None:
    r, _ = sign_with_token(ep, ep.token("orders"), workload_id("evil.example", "orders"))
    assert r.status_code == 400
    code, message = error_of(r)
    assert code == "csr_rejected" and "evil.example" in message and "trust domain" in message


def test_garbage_csr_is_400(ep: Endpoint) -> None:
    with ep.anon() as http:
        r = http.post(
            "/v1/sign", json={"csr": "not a csr"}, headers={"authorization": f"Bearer {ep.token('orders')}"}
        )
    assert r.status_code == 400 and error_of(r)[0] == "csr_rejected"


def test_renewal_over_mtls_keeps_the_svid_identity(ep: Endpoint) -> None:
    workload = join(ep, "orders")
    new_key = ec.generate_private_key(ec.SECP256R1())
    with workload.client() as http:
        renewed = http.post("/v1/sign", json={"csr": make_csr(new_key).decode()})
        assert renewed.status_code == 200, renewed.text
        chain = load_chain_pem(renewed.json()["chain"].encode())
        assert check_leaf(chain[0], TD) == ORDERS
        assert chain[0].public_key() == new_key.public_key()
        other = http.post("/v1/sign", json={"csr": make_csr(new_key, workload_id(TD, "web")).decode()})
    assert other.status_code == 400 and error_of(other)[0] == "csr_rejected"


def test_a_certificate_from_another_ca_fails_the_handshake(ep: Endpoint, tmp_path: Path) -> None:
    foreign = CertificateAuthority.init(tmp_path / "other-ca", TD)  # same trust domain, other root
    chain, key = foreign.issue(ORDERS)
    bundle = join(ep, "web").bundle
    ctx = client_context(chain, key, bundle)
    with httpx.Client(base_url=ep.url, verify=ctx, timeout=5) as http, pytest.raises(httpx.HTTPError):
        http.post("/v1/register", json=register_body("orders"))


# ----- registration rights --------------------------------------------------------------------------------


def test_workload_registers_its_own_service_only(ep: Endpoint) -> None:
    workload = join(ep, "orders")
    with workload.client() as http:
        own = http.post("/v1/register", json=register_body("orders", 11, id="orders-own-1"))
        assert own.status_code == 201, own.text
        assert own.json()["id"] == "orders-own-1"
        other = http.post("/v1/register", json=register_body("web", 11))
        assert other.status_code == 403 and error_of(other)[0] == "foreign_identity"
        other_ns = http.post("/v1/register", json=register_body("orders", 12, namespace="prod"))
        assert other_ns.status_code == 403
        tokens = http.post("/v1/tokens", json={"service": "orders"})
        assert tokens.status_code == 403  # operators only
    with ep.admin() as http:
        views = http.get("/v1/services/orders").json()
    mine = [v for v in views if v["id"] == "orders-own-1"]
    assert mine and mine[0]["identity"] == str(ORDERS)


def test_unauthenticated_register_is_401_and_a_join_token_is_not_enough(ep: Endpoint) -> None:
    with ep.anon() as http:
        r = http.post("/v1/register", json=register_body("orders"))
        assert r.status_code == 401 and error_of(r)[0] == "unauthenticated"
        token = ep.token("orders")
        r = http.post(
            "/v1/register", json=register_body("orders"), headers={"authorization": f"Bearer {token}"}
        )
        assert r.status_code == 401
        r = http.post(
            "/v1/register", json=register_body("orders"), headers={"authorization": "Bearer not-the-admin"}
        )
        assert r.status_code == 401


def test_admin_registers_any_service(ep: Endpoint) -> None:
    with ep.admin() as http:
        for service in ("web", "orders", "catalog"):
            r = http.post("/v1/register", json=register_body(service, 21, id=f"{service}-by-admin"))
            assert r.status_code == 201, r.text
        views = http.get("/v1/services/catalog").json()
    assert [v["identity"] for v in views if v["id"] == "catalog-by-admin"] == [
        str(workload_id(TD, "catalog"))
    ]


def test_workload_cannot_touch_another_services_instance(ep: Endpoint) -> None:
    with ep.admin() as http:
        assert http.post("/v1/register", json=register_body("web", 31, id="web-theirs")).status_code == 201
    workload = join(ep, "orders")
    with workload.client() as http:
        assert http.put("/v1/heartbeat/web-theirs", json={"status": "critical"}).status_code == 403
        assert http.delete("/v1/register/web-theirs").status_code == 403
        # nor take over its id by registering "orders" under it
        takeover = http.post("/v1/register", json=register_body("orders", 31, id="web-theirs"))
        assert takeover.status_code == 403
    with ep.admin() as http:
        assert [v["service"] for v in http.get("/v1/services/web").json() if v["id"] == "web-theirs"] == [
            "web"
        ]


def test_racing_uses_of_a_single_use_token_sign_once(ep: Endpoint) -> None:
    token = ep.token("orders")

    async def race() -> list[int]:
        async with ep.async_admin() as http:

            async def attempt() -> int:
                csr = make_csr(ec.generate_private_key(ec.SECP256R1())).decode()
                r = await http.post(
                    "/v1/sign", json={"csr": csr}, headers={"authorization": f"Bearer {token}"}
                )
                return r.status_code

            return list(await asyncio.gather(*(attempt() for _ in range(8))))

    codes = asyncio.run(race())
    assert sorted(codes) == [200] + [401] * 7, codes
