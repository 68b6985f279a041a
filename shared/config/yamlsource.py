"""Read policy YAML into plain data plus a map from field paths to source lines.

PyYAML's constructors silently keep the last of duplicate keys and expand aliases without limit; this
module composes the node graph itself, so duplicate keys become errors, alias bombs are capped, and every
mapping key and sequence item remembers its line for error messages.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

try:  # libyaml's parser is several times faster; the pure-Python one behaves the same.
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader

MAX_FILE_BYTES = 1024 * 1024
MAX_NODES_PER_FILE = 200_000

FieldPath = tuple[str | int, ...]


@dataclass(frozen=True)
class SourceError:
    """One problem found while reading a file: where it is and what is wrong."""

    file: str
    line: int
    message: str
    context: str = ""

    def __str__(self) -> str:
        prefix = f"{self.file}:{self.line}: "
        return prefix + (f"{self.context}: " if self.context else "") + self.message


@dataclass(frozen=True)
class RawDocument:
    """One YAML document as plain data, with the line of every key and item in it."""

    file: str
    line: int
    data: Any
    lines: dict[FieldPath, int] = field(default_factory=dict)
    #: Problems the YAML layer found inside this document: (field path, line, message).
    problems: tuple[tuple[FieldPath, int, str], ...] = ()

    def line_of(self, path: FieldPath) -> int:
        """The line of the deepest part of ``path`` that exists in the source."""
        for end in range(len(path), 0, -1):
            found = self.lines.get(path[:end])
            if found is not None:
                return found
        return self.line


class _TooLarge(Exception):
    pass


class _Walker:
    """Turns a composed YAML node into Python values, recording lines and duplicate keys."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.nodes = 0
        self.problems: list[tuple[FieldPath, int, str]] = []
        self._scalars = yaml.constructor.SafeConstructor()

    def walk(self, node: yaml.Node, path: FieldPath, lines: dict[FieldPath, int]) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES_PER_FILE:
            raise _TooLarge
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, lines)
        if isinstance(node, yaml.SequenceNode):
            return [self.walk(item, (*path, i), lines) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _scalar(self, node: yaml.Node, path: FieldPath) -> Any:
        """A scalar's value; one PyYAML cannot build (``2001-13-45`` read as a date, ``!!int abc``)
        is a problem at its line, kept as its text."""
        try:
            return self._scalars.construct_object(node)
        except (ValueError, KeyError, AttributeError, TypeError, OverflowError, yaml.YAMLError):
            value = str(getattr(node, "value", ""))
            kind = node.tag.rsplit(":", 1)[-1]
            message = f"cannot read {value[:40]!r} as {kind}: quote it"
            self.problems.append((path, node.start_mark.line + 1, message))
            return value

    def _mapping(
        self, node: yaml.MappingNode, path: FieldPath, lines: dict[FieldPath, int]
    ) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self.problems.append(
                    (path, key_node.start_mark.line + 1, "YAML merge keys (<<) are not supported")
                )
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append(
                    (path, key_node.start_mark.line + 1, "mapping keys must be plain scalars")
                )
                continue
            key = self._scalar(key_node, path)
            if not isinstance(key, str | int | float | bool) or key is None:
                key = str(key)
            line = key_node.start_mark.line + 1
            if key in result:
                self.problems.append(
                    ((*path, key), line, f"duplicate key {key!r} (first at line {first_line[key]})")
                )
                continue
            first_line[key] = line
            child = (*path, key)
            lines[child] = line
            result[key] = self.walk(value_node, child, lines)
        return result


def _dotted(path: FieldPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def dotted(path: FieldPath) -> str:
    """Render a field path as operators write it: ``rules[0].from.services``."""
    return _dotted(path)


def read_yaml_file(path: Path, display: str | None = None) -> tuple[list[RawDocument], list[SourceError]]:
    """Read every document of one YAML file; problems come back as errors, never as exceptions."""
    name = display or str(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return [], [SourceError(name, 1, f"file is {size} bytes; the limit is {MAX_FILE_BYTES} (1 MiB)")]
        raw = path.read_bytes()
    except OSError as exc:
        return [], [SourceError(name, 1, f"cannot read file: {exc.strerror or exc}")]
    return parse_yaml_text(raw, name)


def parse_yaml_text(raw: bytes, name: str) -> tuple[list[RawDocument], list[SourceError]]:
    """Parse YAML bytes (UTF-8) into documents; see :func:`read_yaml_file`."""
    if len(raw) > MAX_FILE_BYTES:
        return [], [SourceError(name, 1, f"file is {len(raw)} bytes; the limit is {MAX_FILE_BYTES} (1 MiB)")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return [], [SourceError(name, line, f"file is not UTF-8 text (byte 0x{raw[exc.start]:02x})")]
    if not text.strip():
        return [], [SourceError(name, 1, "file is empty; it holds no policy documents")]
    walker = _Walker(name)
    docs: list[RawDocument] = []
    try:
        for node in _compose_all(text):
            if node is None or _is_empty_document(node):
                continue  # an empty document between `---` markers (e.g. one commented out)
            lines: dict[FieldPath, int] = {}
            walker.problems = []
            data = walker.walk(node, (), lines)
            docs.append(RawDocument(name, node.start_mark.line + 1, data, lines, tuple(walker.problems)))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        last = text.count("\n") + 1  # the end of the file: the (empty) line after the last newline
        line = min(mark.line + 1, last) if mark else 1
        column = mark.column + 1 if mark else 1
        problem = exc.problem or exc.context or "invalid YAML"
        return [], [SourceError(name, line, f"invalid YAML at column {column}: {problem}")]
    except yaml.YAMLError as exc:
        return [], [SourceError(name, 1, f"invalid YAML: {exc}")]
    except _TooLarge:
        return [], [
            SourceError(name, 1, f"document expands to more than {MAX_NODES_PER_FILE} nodes (alias bomb?)")
        ]
    except RecursionError:
        return [], [SourceError(name, 1, "document is nested too deeply")]
    if not docs:
        return [], [SourceError(name, 1, "file holds only comments; no policy documents")]
    return docs, []


def _is_empty_document(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null" and node.value == ""


def _compose_all(text: str) -> Iterator[yaml.Node | None]:
    loader = _Loader(text)
    try:
        while loader.check_node():
            yield loader.get_node()
    finally:
        loader.dispose()


def find_policy_files(root: Path) -> tuple[list[Path], list[SourceError]]:
    """All ``*.yaml``/``*.yml`` files under ``root`` (or ``root`` itself), sorted, following symlinks once.

    Hidden files and editor droppings are skipped; symlink loops and unreadable folders are errors.
    """
    errors: list[SourceError] = []
    if not root.exists():
        if root.is_symlink():
            return [], [SourceError(str(root), 1, "broken symlink")]
        return [], [SourceError(str(root), 1, "no such file or directory")]
    try:
        if root.is_file():
            return [root], []
    except OSError as exc:
        return [], [SourceError(str(root), 1, f"cannot read: {exc.strerror or exc}")]
    files: list[Path] = []
    seen_dirs: set[str] = set()

    def visit(folder: Path) -> None:
        try:
            real = os.path.realpath(folder, strict=True)
        except OSError as exc:
            errors.append(SourceError(str(folder), 1, _os_message(exc)))
            return
        if real in seen_dirs:
            errors.append(SourceError(str(folder), 1, "symlink loop: this folder was already visited"))
            return
        seen_dirs.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            errors.append(SourceError(str(folder), 1, _os_message(exc)))
            return
        for entry in entries:
            if entry.name.startswith((".", "#")) or entry.name.endswith("~"):
                continue
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
                is_file = not is_dir and entry.is_file(follow_symlinks=True)
            except OSError as exc:
                errors.append(SourceError(str(path), 1, _os_message(exc)))
                continue
            if is_dir:
                visit(path)
            elif is_file and path.suffix in (".yaml", ".yml"):
                files.append(path)
            elif entry.is_symlink() and not is_file and path.suffix in (".yaml", ".yml"):
                errors.append(SourceError(str(path), 1, _symlink_message(path)))

    visit(root)
    return files, errors


def _symlink_message(path: Path) -> str:
    try:
        os.stat(path)
    except OSError as exc:
        return _os_message(exc)
    return "not a regular file"


def _os_message(exc: OSError) -> str:
    import errno

    if exc.errno == errno.ELOOP:
        return "symlink loop (too many levels of symbolic links)"
    if exc.errno == errno.ENOENT:
        return "broken symlink or missing file"
    return f"cannot read: {exc.strerror or exc}"
