"""What a sidecar or gateway keeps on disk so that it can start while the control plane is down:
the last snapshot, and its own SVID (chain and key, mode 0600)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shared.identity.ca import SigningKey, chain_pem, load_chain_pem, load_signing_key

log = logging.getLogger("meshgate.registry.cache")


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class DiskCache:
    """Files in one folder: ``snapshot.json``, ``svid.pem``, ``svid.key``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def save_snapshot(self, snapshot: dict[str, Any]) -> None:
        """Keep the last snapshot."""
        write_atomic(self.folder / "snapshot.json", json.dumps(snapshot, separators=(",", ":")).encode())

    def load_snapshot(self) -> dict[str, Any] | None:
        """The last snapshot, or None (missing or unreadable: logged, never raised)."""
        path = self.folder / "snapshot.json"
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable cached snapshot %s: %s", path, exc)
            return None
        return data if isinstance(data, dict) and isinstance(data.get("index"), int) else None

    def save_svid(self, chain: list[x509.Certificate], key: SigningKey) -> None:
        """Keep the current SVID; the key file is readable by its owner only."""
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_atomic(self.folder / "svid.key", key_pem, 0o600)
        write_atomic(self.folder / "svid.pem", chain_pem(chain))

    def load_svid(self) -> tuple[list[x509.Certificate], SigningKey] | None:
        """The cached SVID, or None (missing or unreadable: logged, never raised)."""
        cert_path, key_path = self.folder / "svid.pem", self.folder / "svid.key"
        try:
            chain = load_chain_pem(cert_path.read_bytes())
            key = load_signing_key(key_path.read_bytes(), str(key_path))
        except FileNotFoundError:
            return None
        except Exception as exc:
            log.warning("ignoring unreadable cached SVID in %s: %s", self.folder, exc)
            return None
        return (chain, key) if chain else None
