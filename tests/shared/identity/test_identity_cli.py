"""``meshgate ca ...`` driven through ``shared.cli.main`` (and once through the installed script)."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from identity_testlib import TD, assert_accepted_independently, key_pem, make_root, pem

import shared.cli
from shared.identity.bundle import TrustBundle

WEB = f"spiffe://{TD}/ns/default/sa/web"


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """Run ``meshgate`` in-process; returns (exit code, stdout, stderr). argparse usage errors give 2."""
    if "shared.identity.cli" not in shared.cli.COMMAND_MODULES:
        # the lead wires the group into shared/cli.py; until then the tests add it themselves
        monkeypatch.setattr(
            shared.cli, "COMMAND_MODULES", (*shared.cli.COMMAND_MODULES, "shared.identity.cli")
        )

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            code = shared.cli.main(list(argv))
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_init_issue_bundle_inspect(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d = str(tmp_path / "ca")
    code, out, err = cli("ca", "init", "--dir", d, "--trust-domain", TD)
    assert code == 0 and "self-signed ECDSA P-256 root" in out and err == ""
    cert, key = tmp_path / "web.pem", tmp_path / "web.key"
    code, out, _ = cli(
        "ca", "issue", "--dir", d, "--id", WEB, "--cert", str(cert), "--key", str(key), "--ttl", "90m"
    )
    assert code == 0 and WEB in out
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    chain = x509.load_pem_x509_certificates(cert.read_bytes())
    lifetime = chain[0].not_valid_after_utc - chain[0].not_valid_before_utc
    assert 90 * 60 <= lifetime.total_seconds() <= 90 * 60 + 31
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    code, out, _ = cli("ca", "bundle", "--dir", d)
    assert code == 0
    bundle = TrustBundle.from_json(out)
    assert bundle.trust_domain == TD and bundle.sequence == 1
    assert_accepted_independently(chain, private, bundle.roots, tmp_path / "check")  # type: ignore[arg-type]
    code, out, _ = cli("ca", "inspect", str(cert), "--dir", d)
    assert code == 0
    assert f"id:         {WEB}" in out and "follows the SVID rules" in out and "chains to:  yes" in out
    (tmp_path / "bundle.json").write_text(bundle.to_json())
    code, out, _ = cli("ca", "inspect", str(cert), "--bundle", str(tmp_path / "bundle.json"))
    assert code == 0 and "chains to:  yes" in out
    code, out, _ = cli("ca", "inspect", str(cert))
    assert code == 0 and "not checked" in out


def test_rotation_commands(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d = str(tmp_path / "ca")
    assert cli("ca", "init", "--dir", d, "--trust-domain", TD)[0] == 0
    old = tmp_path / "old.pem"
    assert (
        cli("ca", "issue", "--dir", d, "--id", WEB, "--cert", str(old), "--key", str(tmp_path / "k"))[0] == 0
    )
    code, out, _ = cli("ca", "rotate", "--dir", d)
    assert code == 0 and "rotation started" in out
    assert len(json.loads(cli("ca", "bundle", "--dir", d)[1])["keys"]) == 2
    assert cli("ca", "inspect", str(old), "--dir", d)[0] == 0  # old leaves verify during the overlap
    code, _, err = cli("ca", "rotate", "--dir", d)
    assert code == 1 and "already in progress" in err
    code, out, err = cli("ca", "rotate", "--dir", d, "--finish")
    assert code == 0 and "rotation finished" in out and "may be valid until" in err
    doc = json.loads(cli("ca", "bundle", "--dir", d)[1])
    assert len(doc["keys"]) == 1 and doc["spiffe_sequence"] == 3
    code, out, _ = cli("ca", "inspect", str(old), "--dir", d)
    assert code == 1 and "chains to:  NO" in out and "does not chain" in out


def test_intermediate_init_from_operator_root_files(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, root_key = make_root("operator")
    (tmp_path / "root.pem").write_bytes(pem([root]))
    (tmp_path / "root.key").write_bytes(key_pem(root_key))
    d = str(tmp_path / "ica")
    args = ["--root-cert", str(tmp_path / "root.pem"), "--root-key", str(tmp_path / "root.key")]
    code, out, _ = cli("ca", "init", "--dir", d, "--trust-domain", TD, *args)
    assert code == 0 and "intermediate" in out
    cert = tmp_path / "w.pem"
    assert (
        cli("ca", "issue", "--dir", d, "--id", WEB, "--cert", str(cert), "--key", str(tmp_path / "w.key"))[0]
        == 0
    )
    assert len(x509.load_pem_x509_certificates(cert.read_bytes())) == 2
    code, out, _ = cli("ca", "inspect", str(cert), "--bundle", str(tmp_path / "root.pem"))
    assert code == 0 and "chains to:  yes, root CN=operator" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            [
                "ca",
                "issue",
                "--dir",
                "{d}",
                "--id",
                "spiffe://other.org/x",
                "--cert",
                "{t}/c",
                "--key",
                "{t}/k",
            ],
            "outside trust domain",
        ),
        (
            ["ca", "issue", "--dir", "{t}/none", "--id", WEB, "--cert", "{t}/c", "--key", "{t}/k"],
            "run 'meshgate ca init' first",
        ),
        (["ca", "init", "--dir", "{d}", "--trust-domain", TD], "already holds a CA"),
        (["ca", "rotate", "--dir", "{d}", "--finish"], "no rotation in progress"),
        (["ca", "inspect", "{t}/garbage"], "holds no PEM or DER certificate"),
        (["ca", "inspect", "{t}/missing.pem"], "cannot read certificate"),
        (
            [
                "ca",
                "init",
                "--dir",
                "{t}/x",
                "--trust-domain",
                TD,
                "--root-cert",
                "{t}/garbage",
                "--root-key",
                "{t}/garbage",
            ],
            "not a PEM certificate",
        ),
        (["ca", "init", "--dir", "{t}/x", "--trust-domain", TD, "--root-cert", "{t}/garbage"], "go together"),
    ],
)
def test_failures_exit_1_with_one_clear_line(cli, tmp_path: Path, argv: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    d = str(tmp_path / "ca")
    assert cli("ca", "init", "--dir", d, "--trust-domain", TD)[0] == 0
    (tmp_path / "garbage").write_text("not a certificate")
    code, out, err = cli(*[a.replace("{d}", d).replace("{t}", str(tmp_path)) for a in argv])
    assert code == 1, (out, err)
    assert message in err and err.count("\n") == 1 and err.startswith("meshgate ca ")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["ca", "issue", "--dir", "d", "--id", "spiffe://td/a/../b", "--cert", "c", "--key", "k"],
            "'..' segment",
        ),
        (
            ["ca", "issue", "--dir", "d", "--id", WEB, "--cert", "c", "--key", "k", "--ttl", "soon"],
            "invalid duration",
        ),
        (["ca", "init", "--dir", "d", "--trust-domain", "Bad.Example"], "lower case"),
        (["ca", "init", "--trust-domain", TD], "--dir"),
        (["ca"], "CA_COMMAND"),
    ],
)
def test_usage_errors_exit_2(cli, argv: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli(*argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_installed_script(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("meshgate")
    d = str(tmp_path / "ca")
    done = subprocess.run(
        [str(script), "ca", "init", "--dir", d, "--trust-domain", TD],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    done = subprocess.run(
        [str(script), "ca", "bundle", "--dir", d], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and json.loads(done.stdout)["keys"][0]["use"] == "x509-svid"
    done = subprocess.run(
        [str(script), "ca", "rotate", "--dir", d, "--finish"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1 and done.stderr.strip().endswith("(run 'meshgate ca rotate' first)")
    assert "Traceback" not in done.stderr


def test_inspect_bare_leaf_of_intermediate_ca_with_dir(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, root_key = make_root("operator")
    (tmp_path / "root.pem").write_bytes(pem([root]))
    (tmp_path / "root.key").write_bytes(key_pem(root_key))
    d = str(tmp_path / "ica")
    args = ["--root-cert", str(tmp_path / "root.pem"), "--root-key", str(tmp_path / "root.key")]
    assert cli("ca", "init", "--dir", d, "--trust-domain", TD, *args)[0] == 0
    cert = tmp_path / "w.pem"
    assert (
        cli("ca", "issue", "--dir", d, "--id", WEB, "--cert", str(cert), "--key", str(tmp_path / "w.key"))[0]
        == 0
    )
    leaf_only = tmp_path / "leaf.pem"
    leaf_only.write_bytes(pem(x509.load_pem_x509_certificates(cert.read_bytes())[:1]))
    code, out, _ = cli("ca", "inspect", str(leaf_only), "--dir", d)
    assert code == 0 and "chains to:  yes, root CN=operator" in out
    code, out, _ = cli("ca", "inspect", str(leaf_only), "--bundle", str(tmp_path / "root.pem"))
    assert code == 1 and "chains to:  NO" in out
