"""Hypothesis fuzzing of CSR handling (issue 10, item 4): ``CertificateAuthority.sign_csr`` and the
control plane's ``POST /v1/sign``.

Inputs: random bytes, random DER in PEM armour, valid CSRs with mutated bytes, and CSRs built with
``cryptography`` from random subject/SAN combinations (several URI SANs, DNS/IP/e-mail SANs, other
trust domains, basicConstraints cA=true, keyCertSign, weak RSA-1024, P-521, secp256k1, Ed25519, Ed448,
DSA, RSA-PSS). Properties: bad input raises ``CsrRejected`` (``CAError`` for a TTL that is not
positive, as documented), nothing else; the decision matches the documented rules; every certificate
issued is an X.509-SVID (exactly one URI SAN, the requested ID; cA=false; keyUsage digitalSignature,
critical; EKU serverAuth+clientAuth; the CSR's key), which the ``spiffe`` package accepts too; the API
answers 200/400/401/413 with its JSON error shape, never 500. Defects D9 and D10 are pinned by
``xfail(strict=True)`` tests at the end; the random tests skip exactly the D10 inputs.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ipaddress
import json
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import spiffe
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from mesh.controlplane.api import build_app
from mesh.controlplane.core import ControlPlane
from mesh.controlplane.stores import open_store
from shared.identity.ca import CAError, CertificateAuthority, CsrRejected, chain_pem, make_csr
from shared.identity.certutil import public_bytes
from shared.identity.spiffeid import SpiffeId, workload_id
from shared.identity.svid import check_leaf

#: MESHGATE_FUZZ_SCALE=20 multiplies every example budget (a deeper local run; CI keeps 1).
SCALE = max(1, int(os.environ.get("MESHGATE_FUZZ_SCALE", "1")))


def budget(examples: int) -> settings:
    return settings(
        max_examples=examples * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


TD = "example.org"
REQUESTED = workload_id(TD, "web")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path_factory.mktemp("fuzz-ca") / "ca", TD)


# ----- keys and CSRs --------------------------------------------------------------------------------------

KEY_KINDS = ["p256", "p384", "p521", "secp256k1", "ed25519", "ed448", "rsa1024", "rsa2048", "dsa1024"]


@functools.cache
def key_of(kind: str) -> Any:
    """One key per kind for the whole run (RSA and DSA keys are slow to make)."""
    curves = {"p256": ec.SECP256R1, "p384": ec.SECP384R1, "p521": ec.SECP521R1, "secp256k1": ec.SECP256K1}
    if kind in curves:
        return ec.generate_private_key(curves[kind]())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "ed448":
        return ed448.Ed448PrivateKey.generate()
    if kind.startswith("rsa"):
        return rsa.generate_private_key(65537, int(kind[3:]))
    return dsa.generate_private_key(int(kind[3:]))


def allowed_key(kind: str) -> bool:
    """The CA's documented key rules: ECDSA P-256/P-384, RSA >= 2048, Ed25519."""
    return kind in ("p256", "p384", "rsa2048", "ed25519")


def key_pem(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


_URIS = [
    str(REQUESTED),
    str(REQUESTED),
    str(workload_id(TD, "orders")),
    str(workload_id("other.org", "web")),
    f"spiffe://{TD}",
    f"spiffe://{TD.upper()}/ns/default/sa/web",
    f"{REQUESTED}/",
    f"{REQUESTED}?x=1",
    "https://example.org/ns/default/sa/web",
    "urn:uuid:1",
]
_NAME_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=40)


@st.composite
def csr_specs(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(KEY_KINDS))
    return {
        "kind": kind,
        "cn": draw(st.one_of(st.none(), _NAME_TEXT)),
        "org": draw(st.one_of(st.none(), _NAME_TEXT)),
        "uris": draw(st.lists(st.sampled_from(_URIS), max_size=3)),
        "dns": draw(
            st.lists(st.sampled_from(["web", "a.example.org", "*.example.org", "localhost"]), max_size=2)
        ),
        "ips": draw(st.lists(st.sampled_from(["127.0.0.1", "::1", "10.0.0.1"]), max_size=1)),
        "emails": draw(st.lists(st.sampled_from(["a@example.org"]), max_size=1)),
        "empty_san": draw(st.booleans()),
        "ca": draw(st.sampled_from([None, False, True])),
        "key_usage": draw(st.sampled_from([None, "sig", "cert_sign", "crl_sign", "agreement"])),
        "eku": draw(st.sampled_from([None, "svid", "server", "code"])),
        "critical": draw(st.booleans()),
        "hash": draw(st.sampled_from(["sha256", "sha384", "sha512"])),
        "pss": kind.startswith("rsa") and draw(st.booleans()),
    }


def build_csr(spec: dict[str, Any]) -> bytes:
    key = key_of(spec["kind"])
    attrs = []
    if spec["cn"] is not None:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, spec["cn"]))
    if spec["org"] is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, spec["org"]))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs))
    names: list[x509.GeneralName] = [
        *(x509.UniformResourceIdentifier(u) for u in spec["uris"]),
        *(x509.DNSName(d) for d in spec["dns"]),
        *(x509.IPAddress(ipaddress.ip_address(i)) for i in spec["ips"]),
        *(x509.RFC822Name(e) for e in spec["emails"]),
    ]
    if names or spec["empty_san"]:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=spec["critical"])
    if spec["ca"] is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=spec["ca"], path_length=None), critical=True)
    if spec["key_usage"] is not None:
        ku = spec["key_usage"]
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=ku == "sig",
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=ku == "agreement",
                key_cert_sign=ku == "cert_sign",
                crl_sign=ku == "crl_sign",
                encipher_only=False,
                decipher_only=False,
            ),
            critical=spec["critical"],
        )
    if spec["eku"] is not None:
        usages = {
            "svid": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            "server": [ExtendedKeyUsageOID.SERVER_AUTH],
            "code": [ExtendedKeyUsageOID.CODE_SIGNING],
        }[spec["eku"]]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    algorithm: hashes.HashAlgorithm | None = {
        "sha256": hashes.SHA256(),
        "sha384": hashes.SHA384(),
        "sha512": hashes.SHA512(),
    }[spec["hash"]]
    if spec["kind"] in ("ed25519", "ed448"):
        algorithm = None
    if spec["pss"]:
        assert algorithm is not None
        pss = padding.PSS(padding.MGF1(algorithm), padding.PSS.DIGEST_LENGTH)
        csr = builder.sign(key, algorithm, rsa_padding=pss)
    else:
        csr = builder.sign(key, algorithm)
    return csr.public_bytes(serialization.Encoding.PEM)


def expected_accept(spec: dict[str, Any], requested: SpiffeId, trust_domain: str = TD) -> bool:
    """The documented rules (shared/identity/csr.py, ca.py), as an independent oracle."""
    return (
        requested.trust_domain == trust_domain
        and not requested.is_trust_domain_id
        and allowed_key(spec["kind"])
        and spec["ca"] is not True
        and spec["key_usage"] not in ("cert_sign", "crl_sign")
        and (not spec["uris"] or spec["uris"] == [str(requested)])
    )


def assert_svid(
    chain: list[x509.Certificate], requested: SpiffeId, key: Any, ca: CertificateAuthority
) -> None:
    """The SPIFFE X.509-SVID rules, checked here, by the product's checker and by the spiffe package."""
    leaf = chain[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(requested)]
    assert len(list(san)) == 1, "the CSR's other names must not be copied"
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature
    assert not ku.value.key_cert_sign and not ku.value.crl_sign
    eku = set(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= eku
    assert public_bytes(leaf.public_key()) == public_bytes(key.public_key())
    assert leaf.subject == x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshgate")])
    leaf.verify_directly_issued_by(chain[1] if len(chain) > 1 else ca.signing_cert)
    assert check_leaf(leaf, requested.trust_domain) == requested
    svid = spiffe.X509Svid.parse(chain_pem(chain), key_pem(key))
    assert str(svid.spiffe_id) == str(requested)


# ----- sign_csr -------------------------------------------------------------------------------------------

_REQUESTED_IDS = st.sampled_from(
    [REQUESTED] * 6 + [workload_id("other.org", "web"), SpiffeId.parse(f"spiffe://{TD}")]
)
_TTLS = st.sampled_from(
    [
        None,
        timedelta(seconds=1),
        timedelta(hours=1),
        timedelta(days=3650),
        timedelta(0),
        timedelta(seconds=-1),
    ]
)


@budget(250)
@given(csr_specs(), _REQUESTED_IDS, _TTLS)
def test_crafted_csrs_are_signed_exactly_when_the_rules_allow(
    ca: CertificateAuthority, spec: dict[str, Any], requested: SpiffeId, ttl: timedelta | None
) -> None:
    try:
        pem = build_csr(spec)
    except ValueError:
        assume(False)  # cryptography refuses to build it (not an input the CA can ever get)
        raise
    accept = expected_accept(spec, requested)
    try:
        chain = ca.sign_csr(pem, requested, ttl)
    except CsrRejected as exc:
        event("rejected")
        assert not accept, f"refused a CSR the rules allow: {exc}"
        assert str(exc)
        return
    except CAError as exc:  # documented for a TTL that is not positive
        assert accept and ttl is not None and ttl <= timedelta(0), exc
        return
    event("signed")
    assert accept, f"signed a CSR the rules refuse: {spec}"
    assert ttl is None or ttl > timedelta(0)
    assert_svid(chain, requested, key_of(spec["kind"]), ca)


def _armour(der: bytes, label: bytes = b"CERTIFICATE REQUEST") -> bytes:
    body = base64.encodebytes(der)
    return b"-----BEGIN " + label + b"-----\n" + body + b"-----END " + label + b"-----\n"


@functools.cache
def _valid_der() -> bytes:
    pem = make_csr(key_of("p256"), REQUESTED)
    return x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)


@st.composite
def garbage_csrs(draw: st.DrawFn) -> bytes:
    how = draw(st.integers(0, 5))
    if how == 0:
        return draw(st.binary(max_size=600))
    if how == 1:
        return _armour(draw(st.binary(max_size=600)), draw(st.sampled_from([b"CERTIFICATE REQUEST", b"X"])))
    der = bytearray(_valid_der())
    if how == 2:  # flip bytes
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(der) - 1))
            der[i] ^= draw(st.integers(1, 255))
        return _armour(bytes(der))
    if how == 3:  # cut or extend
        cut = draw(st.integers(0, len(der)))
        return _armour(bytes(der[:cut]) + draw(st.binary(max_size=20)))
    pem = bytearray(_armour(bytes(der)))
    if how == 4:  # edit the PEM text itself
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, len(pem) - 1))
            pem[i : i + draw(st.integers(0, 3))] = draw(st.binary(max_size=3))
        return bytes(pem)
    return bytes(pem) * draw(st.integers(2, 3)) + draw(st.binary(max_size=10))  # several PEM blocks


def _d10(data: bytes) -> bool:
    """D10 (fixed): a CSR whose version is not 0 made cryptography raise InvalidVersion; now refused."""
    return False
    try:
        x509.load_pem_x509_csr(data)
    except x509.InvalidVersion:
        return True
    except ValueError:
        return False
    return False


@budget(400)
@given(garbage_csrs())
def test_garbage_and_mutated_csrs_raise_only_csr_rejected(ca: CertificateAuthority, data: bytes) -> None:
    assume(not _d10(data))
    try:
        chain = ca.sign_csr(data, REQUESTED)
    except CsrRejected as exc:
        assert str(exc)
        return
    assert_svid(chain, REQUESTED, key_of("p256"), ca)  # only the untouched key can still verify


# ----- POST /v1/sign --------------------------------------------------------------------------------------


class _Api:
    """A real ControlPlane (embedded store, the repository's policies) behind its Starlette app, called
    in process through httpx's ASGI transport on a loop of this fixture's own."""

    def __init__(self, data_dir: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.cp = ControlPlane(
            policies=[REPO / "policies"],
            data_dir=data_dir,
            store=open_store(None, data_dir),
            policy_interval=5,
        )
        self.run(self.cp.start())
        token, _ = self.run(self.cp.create_token("web", None, 3600, True))
        self.token = str(token)
        self.identity = workload_id(self.cp.trust_domain, "web")
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=build_app(self.cp)), base_url="http://cp"
        )

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 30))

    def post(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return self.run(self.client.post("/v1/sign", content=body, headers=headers))  # type: ignore[no-any-return]

    def close(self) -> None:
        self.run(self.client.aclose())
        self.run(self.cp.stop())
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()


@pytest.fixture(scope="module")
def api() -> Iterator[_Api]:
    with tempfile.TemporaryDirectory(prefix="fuzz-cp-") as folder:
        plane = _Api(Path(folder) / "data")
        try:
            yield plane
        finally:
            plane.close()


_JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def sign_bodies(draw: st.DrawFn, identity: SpiffeId) -> tuple[bytes, str | None, str]:
    """(body, csr key kind or None, authorization); some bodies are valid requests."""
    how = draw(st.integers(0, 7))
    kind: str | None = None
    if how == 0:
        body = draw(st.binary(max_size=200))
    elif how == 1:
        body = json.dumps(draw(_JSON_VALUES)).encode()
    elif how == 2:
        body = json.dumps(
            {
                "csr": draw(_JSON_VALUES),
                **draw(st.dictionaries(st.text(max_size=6), _JSON_VALUES, max_size=2)),
            }
        ).encode()
    elif how == 3:
        garbage = draw(garbage_csrs())
        assume(not _d10(garbage))
        body = json.dumps({"csr": garbage.decode("latin-1")}).encode()
    elif how == 4:
        body = json.dumps({"csr": "A" * draw(st.sampled_from([16385, 70_000]))}).encode()  # over the limits
    elif how == 5:
        body = b'{"csr": "' + draw(st.sampled_from([b"\\ud800", b"\\u0000", b"\xff", b"\\"])) + b'"}'
    else:
        spec = draw(csr_specs())
        spec["uris"] = draw(st.sampled_from([[str(identity)], [], [str(identity), str(identity)]]))
        if draw(st.booleans()):  # a clean request half of the time
            clean = draw(st.sampled_from(["p256", "p384", "ed25519", "rsa2048"]))
            spec.update(kind=clean, ca=None, key_usage=None, pss=spec["pss"] and clean == "rsa2048")
        try:
            pem = build_csr(spec)
        except ValueError:
            assume(False)
            raise
        kind = spec["kind"] if expected_accept(spec, identity, identity.trust_domain) else None
        body = json.dumps({"csr": pem.decode()}).encode()
    auth = draw(st.sampled_from(["token"] * 6 + ["none", "junk", "Bearer"]))
    return body, kind, auth


@budget(150)
@given(st.data())
def test_the_sign_api_answers_every_body_with_a_clean_status(api: _Api, data: st.DataObject) -> None:
    body, kind, auth = data.draw(sign_bodies(api.identity))
    headers = {"content-type": "application/json"}
    if auth == "token":
        headers["authorization"] = f"Bearer {api.token}"
    elif auth == "junk":
        headers["authorization"] = "Bearer mgt1.nope.nope"
    elif auth == "Bearer":
        headers["authorization"] = "Bearer"
    response = api.post(body, headers)
    event(f"HTTP {response.status_code}")
    assert response.status_code in (200, 400, 401, 413), (response.status_code, response.text[:300])
    payload = response.json()
    if response.status_code != 200:
        assert set(payload) == {"error", "message"}, payload
        assert payload["error"] in (
            "bad_json",
            "bad_request",
            "invalid_body",
            "csr_rejected",
            "body_too_large",
            "bad_token",
            "unauthenticated",
        ), payload
        if kind is not None and auth == "token":
            raise AssertionError(f"a valid CSR was refused: {payload}")
        return
    assert auth == "token" and kind is not None, payload
    chain = x509.load_pem_x509_certificates(payload["chain"].encode())
    assert payload["identity"] == str(api.identity)
    assert_svid(chain, api.identity, key_of(kind), api.cp.ca)


# ----- defects found (strict xfail: they fail now, and must be turned on when fixed) ---------------------


@pytest.mark.parametrize("days", [3_000_000, 999_999_999], ids=["3e6-days", "max-days"])
def test_d9_a_ttl_past_year_9999_is_clamped_to_the_ca_expiry(ca: CertificateAuthority, days: int) -> None:
    key = key_of("p256")
    chain = ca.sign_csr(make_csr(key, REQUESTED), REQUESTED, timedelta(days=days))
    assert chain[0].not_valid_after_utc == ca.signing_cert.not_valid_after_utc
    assert chain[0].not_valid_after_utc > datetime.now(UTC)


def _csr_with_version(version: int) -> bytes:
    der = _valid_der()
    at = der.index(b"\x02\x01\x00")  # CertificationRequestInfo.version INTEGER 0 (the first INTEGER)
    return _armour(der[:at] + bytes([2, 1, version]) + der[at + 3 :])


_D10 = (
    "product: shared/identity/csr.py check_csr catches only ValueError around x509.load_pem_x509_csr; a "
    "CSR with version 1 (one flipped byte) raises cryptography.x509.InvalidVersion (an Exception, not a "
    "ValueError), which escapes sign_csr and makes POST /v1/sign answer 500 (D10)"
)


@pytest.mark.parametrize("version", [1, 2, 127])
def test_d10_a_csr_with_another_version_is_rejected(ca: CertificateAuthority, version: int) -> None:
    with pytest.raises(CsrRejected):
        ca.sign_csr(_csr_with_version(version), REQUESTED)


def test_d10_the_sign_api_answers_400_to_a_csr_with_another_version(api: _Api) -> None:
    body = json.dumps({"csr": _csr_with_version(1).decode()}).encode()
    response = api.post(body, {"authorization": f"Bearer {api.token}", "content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == "csr_rejected"
