"""Errors raised by the CA side of the identity package."""

from __future__ import annotations

__all__ = ["CAError", "CsrRejected"]


class CAError(Exception):
    """A CA operation failed; the message is one line an operator can act on."""


class CsrRejected(CAError):
    """The CA refused to sign a CSR; the message says why."""
