"""Rebuild policies/descriptors/catalog.pb from examples/demo/catalog.proto (needs grpcio-tools, a dev
extra). The gateway's JSON transcoding and the catalog app both read that descriptor set."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parents[1] / "policies" / "descriptors" / "catalog.pb"


def build(out: Path = OUT) -> Path:
    """Compile catalog.proto with its imports into ``out``; returns ``out``."""
    import grpc_tools
    from google.api import annotations_pb2

    google_root = Path(annotations_pb2.__file__).resolve().parents[2]
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{HERE}", f"-I{google_root}", f"-I{well_known}",
            "--include_imports", f"--descriptor_set_out={out}", "catalog.proto",
        ],
        check=True,
        timeout=60,
    )  # fmt: skip
    return out


if __name__ == "__main__":
    print(build())
