"""Helpers for the policy-document tests: write YAML into a folder, load it, find lines."""

from __future__ import annotations

import textwrap
from pathlib import Path

from shared.config.errors import PolicyError
from shared.config.loader import LoadResult, load_policy_set

MESH = """\
apiVersion: meshgate/v1
kind: Mesh
trustDomain: example.org
"""

SERVICES = """\
apiVersion: meshgate/v1
kind: Service
name: web
---
apiVersion: meshgate/v1
kind: Service
name: orders
"""


def write(folder: Path, name: str, text: str) -> Path:
    """Write ``text`` (dedented) to ``folder/name``, creating folders; returns the path."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def line_of(path: Path, marker: str, nth: int = 1) -> int:
    """The 1-based line of the ``nth`` line of ``path`` that contains ``marker``."""
    found = 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if marker in line:
            found += 1
            if found == nth:
                return number
    raise AssertionError(f"{marker!r} not in {path}")


def load(*paths: Path) -> LoadResult:
    """Load ``paths`` as one set."""
    return load_policy_set(list(paths))


def errors_of(*paths: Path) -> list[PolicyError]:
    """The errors of loading ``paths``; fails if the load succeeded."""
    result = load(*paths)
    assert not result.ok, "expected the load to fail"
    assert result.policy_set is None
    return list(result.errors)


def only_error(*paths: Path) -> PolicyError:
    """The single error of loading ``paths``."""
    errors = errors_of(*paths)
    assert len(errors) == 1, "\n".join(str(e) for e in errors)
    return errors[0]


def assert_error(error: PolicyError, path: Path, line: int, ref: str, field: str, *words: str) -> None:
    """``error`` renders as ``FILE:LINE: Kind/name: field.path: message`` with ``words`` in the message."""
    head = ": ".join(part for part in (f"{path}:{line}", ref, field) if part) + ": "
    text = str(error)
    assert text.startswith(head), f"{text!r} does not start with {head!r}"
    assert (error.file, error.line, error.ref, error.field) == (str(path), line, ref, field)
    for word in words:
        assert word in error.message, f"{word!r} not in {error.message!r}"
