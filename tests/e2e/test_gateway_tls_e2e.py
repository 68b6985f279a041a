"""TLS at the edge with the default server: HTTPS over HTTP/1.1 and HTTP/2 (ALPN), client certificates
required or optional (``--client-ca``, ``--client-cert``), checked with curl."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from e2e_lib import MeshStack, copy_policies, free_port, running

from shared.identity.ca import CertificateAuthority, chain_pem
from shared.identity.spiffeid import workload_id


def _write(ca: CertificateAuthority, td: str, name: str, folder: Path) -> tuple[Path, Path]:
    chain, key = ca.issue(workload_id(td, name))
    cert, key_file = folder / f"{name}.pem", folder / f"{name}.key"
    cert.write_bytes(chain_pem(chain))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key_file


def curl(url: str, *extra: str) -> tuple[str, str]:
    argv = ["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", "--max-time", "10"]
    out = subprocess.run([*argv, *extra, url], capture_output=True, text=True, timeout=20)
    code, _, version = out.stdout.partition(" ")
    return code, version


@pytest.mark.parametrize("mode", ["required", "optional"])
def test_https_with_client_certificates(tmp_path: Path, mode: str) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    edge_ca = CertificateAuthority.init(pki / "edge-ca", "edge.test")
    partner_ca = CertificateAuthority.init(pki / "partner-ca", "partners.test")
    server_cert, server_key = _write(edge_ca, "edge.test", "edge", pki)
    client_cert, client_key = _write(partner_ca, "partners.test", "acme", pki)
    (pki / "partners.pem").write_text(partner_ca.bundle().to_pem())
    with running(tmp_path) as procs:
        stack = MeshStack(procs, tmp_path)
        stack.start_control_plane(copy_policies(tmp_path / "policies"))
        app = free_port()
        procs.start("app-web", sys.executable, "examples/echo_app.py", "--name", "web", "--port", str(app))
        stack.start_sidecar("web", app)
        gateway = stack.start_gateway(
            "--tls-cert", str(server_cert), "--tls-key", str(server_key),
            "--client-ca", str(pki / "partners.pem"), "--client-cert", mode, knows=["web"],
        )  # fmt: skip
        url = f"https://127.0.0.1:{gateway.port}/shop/x"
        with_cert = ("--cert", str(client_cert), "--key", str(client_key))
        assert curl(url, "--http1.1", *with_cert) == ("200", "1.1")
        assert curl(url, "--http2", *with_cert) == ("200", "2")
        code, _ = curl(url, "--http2")  # no certificate
        assert code == ("000" if mode == "required" else "200")
        stranger = _write(edge_ca, "edge.test", "stranger", pki)  # signed by a CA the gateway does not trust
        code, _ = curl(url, "--cert", str(stranger[0]), "--key", str(stranger[1]))
        assert code == "000"
