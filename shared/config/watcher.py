"""Watch the policy folder: reload on change, swap the whole set atomically, keep the last good set.

Polling (stat and hash of every file, once a second by default) rather than inotify: it works on
network and container volumes and on Kubernetes ConfigMap mounts, whose updates swap a symlink.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.config.errors import PolicyError
from shared.config.loader import load_policy_set
from shared.config.policyset import PolicySet
from shared.config.yamlsource import MAX_FILE_BYTES, find_policy_files

log = logging.getLogger("meshgate.policy")

Listener = Callable[[PolicySet], None]


@dataclass(frozen=True)
class PolicyStatus:
    """What the watcher serves and how the last load went; published by every component."""

    ok: bool
    version: str | None
    generation: int
    loaded_at: float | None
    last_attempt_at: float | None
    errors: tuple[PolicyError, ...] = ()
    reloads_ok: int = 0
    reloads_failed: int = 0
    files: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form: errors as ``FILE:LINE: ...`` strings."""
        return {
            "ok": self.ok,
            "version": self.version,
            "generation": self.generation,
            "loadedAt": self.loaded_at,
            "lastAttemptAt": self.last_attempt_at,
            "errors": [str(e) for e in self.errors],
            "reloadsOk": self.reloads_ok,
            "reloadsFailed": self.reloads_failed,
            "files": list(self.files),
        }


def _digest(file: Path) -> str:
    return hashlib.blake2b(file.read_bytes(), digest_size=16).hexdigest()


def _fingerprint(paths: Sequence[Path]) -> tuple[Any, ...]:
    items: list[Any] = []
    for root in paths:
        files, errors = find_policy_files(root)
        items.extend(str(e) for e in errors)
        for file in files:
            try:
                st = os.stat(file)
                # mtime alone misses a same-size rewrite within one (coarse) kernel timestamp tick,
                # so small files are compared by content too; big ones fail the load anyway.
                digest = _digest(file) if st.st_size <= MAX_FILE_BYTES else ""
                items.append((str(file), st.st_mtime_ns, st.st_size, st.st_ino, digest))
            except OSError as exc:
                items.append((str(file), str(exc)))
    return tuple(items)


class PolicyWatcher:
    """Holds the current :class:`PolicySet` for ``paths`` and reloads it when the files change."""

    def __init__(self, paths: Sequence[str | Path], interval: float = 1.0) -> None:
        self.paths = [Path(p) for p in paths]
        self.interval = interval
        self._listeners: list[Listener] = []
        self._fingerprint: tuple[Any, ...] | None = None
        self._current: PolicySet | None = None
        self.status = PolicyStatus(ok=False, version=None, generation=0, loaded_at=None, last_attempt_at=None)

    @property
    def current(self) -> PolicySet | None:
        """The last good set (None until one loaded)."""
        return self._current

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(policy_set)`` after every successful swap (and now, if a set is loaded)."""
        self._listeners.append(listener)
        if self._current is not None:
            listener(self._current)

    def reload(self) -> bool:
        """Load now. Swap and notify if valid and different; on errors keep the old set. True if swapped."""
        self._fingerprint = _fingerprint(self.paths)
        result = load_policy_set(self.paths)
        now = time.time()
        status = self.status
        if result.policy_set is None:
            first = "; ".join(str(e) for e in result.errors[:3])
            log.error(
                "policy reload failed with %d error(s); still serving version %s: %s",
                len(result.errors),
                status.version,
                first,
            )
            self.status = PolicyStatus(
                ok=False,
                version=status.version,
                generation=status.generation,
                loaded_at=status.loaded_at,
                last_attempt_at=now,
                errors=result.errors,
                reloads_ok=status.reloads_ok,
                reloads_failed=status.reloads_failed + 1,
                files=result.files,
            )
            return False
        new = result.policy_set
        changed = self._current is None or new.version != self._current.version
        self.status = PolicyStatus(
            ok=True,
            version=new.version,
            generation=status.generation + (1 if changed else 0),
            loaded_at=now if changed else status.loaded_at,
            last_attempt_at=now,
            errors=(),
            reloads_ok=status.reloads_ok + 1,
            reloads_failed=status.reloads_failed,
            files=result.files,
        )
        if not changed:
            return False
        self._current = new
        log.info("policy version %s loaded (%d documents)", new.version, len(new.documents()))
        for listener in list(self._listeners):
            try:
                listener(new)
            except Exception:
                log.exception("policy listener failed")
        return True

    def poll(self) -> bool:
        """Reload if any file was added, removed or changed since the last look. True if swapped."""
        if self._fingerprint is not None and _fingerprint(self.paths) == self._fingerprint:
            return False
        return self.reload()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Poll every ``interval`` seconds until ``stop`` is set; loads run off the event loop."""
        stop = stop or asyncio.Event()
        if self._fingerprint is None:
            await asyncio.to_thread(self.reload)
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
            except TimeoutError:
                await asyncio.to_thread(self.poll)
