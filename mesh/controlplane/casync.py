"""Share one CA between control-plane replicas through the store.

The CA lives in files (``DATA_DIR/ca``). With a shared store (Redis) the whole folder is also kept
in the store as one blob: the first replica to start publishes it, the others adopt it, and a
rotation run against any replica's folder (``meshgate ca rotate``) reaches the others within a
polling interval. The blob holds private keys: protect the Redis that holds it as you protect the
CA folder (ACLs, TLS, no public exposure).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

BLOB_NAME = "ca"


def pack_ca_dir(folder: Path) -> bytes:
    """Every regular, non-hidden file of ``folder`` as one JSON blob (sorted, base64)."""
    files = {
        p.name: base64.b64encode(p.read_bytes()).decode()
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".")
    }
    return json.dumps(files, sort_keys=True, separators=(",", ":")).encode()


def unpack_ca_dir(blob: bytes, folder: Path) -> None:
    """Make ``folder`` hold exactly the files in ``blob`` (keys written 0600, ``ca.json`` last)."""
    files: dict[str, str] = json.loads(blob)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    for name in sorted(files, key=lambda n: n == "ca.json"):
        if "/" in name or name.startswith("."):
            raise ValueError(f"refusing CA blob entry {name!r}")
        target = folder / name
        tmp = folder / f".{name}.tmp"
        mode = 0o600 if name.endswith(".key") else 0o644
        tmp.unlink(missing_ok=True)  # a leftover could carry wider permissions
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(base64.b64decode(files[name]))
        os.replace(tmp, target)
    for stale in folder.iterdir():
        if stale.is_file() and not stale.name.startswith(".") and stale.name not in files:
            stale.unlink()
