"""Argument types shared by the command groups (argparse ``type=`` callables with clear errors)."""

from __future__ import annotations

import argparse

from shared.config.durations import parse_duration


def host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:80`` for IPv6; an empty host means 127.0.0.1)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def duration_seconds(text: str) -> float:
    """A duration such as ``250ms``, ``30s`` or ``1h``, in seconds."""
    try:
        return parse_duration(text).total_seconds()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def header_pair(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` -> (key, value)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def add_otlp_arguments(parser: argparse.ArgumentParser) -> None:
    """``--otlp-endpoint URL`` and ``--otlp-header KEY=VALUE`` (repeatable): spans over OTLP/HTTP."""
    parser.add_argument(
        "--otlp-endpoint",
        metavar="URL",
        help="send spans over OTLP/HTTP (protobuf), e.g. http://127.0.0.1:4318/v1/traces",
    )
    parser.add_argument(
        "--otlp-header", type=header_pair, action="append", default=[], metavar="KEY=VALUE",
        help="a header for the OTLP endpoint (authentication), repeatable",
    )  # fmt: skip
