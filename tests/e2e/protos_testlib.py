"""Compile the test protos (grpcio-tools' protoc, googleapis-common-protos' google/api protos) into a
descriptor set and Python modules in a temporary folder."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import grpc_tools
from google.api import annotations_pb2

PROTOS = Path(__file__).resolve().parent / "protos"


def compile_protos(out: Path, name: str = "shop") -> tuple[Path, ModuleType]:
    """``out/NAME.pb`` (a FileDescriptorSet with imports) and the imported ``NAME_pb2`` module."""
    out.mkdir(parents=True, exist_ok=True)
    google_root = Path(annotations_pb2.__file__).resolve().parents[2]  # holds google/api/*.proto
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    descriptor = out / f"{name}.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"-I{google_root}",
            f"-I{well_known}",
            "--include_imports",
            f"--descriptor_set_out={descriptor}",
            f"--python_out={out}",
            f"{name}.proto",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    sys.path.insert(0, str(out))
    try:
        module = importlib.import_module(f"{name}_pb2")
    finally:
        sys.path.remove(str(out))
    return descriptor, module
