"""Snapshots and deltas of the configuration, serialized once per index and shared by every watcher.

A full snapshot carries everything; a delta since index N carries only what changed after N: the
services whose healthy endpoints changed (a service with no endpoints left comes as an empty list),
the policies if their version changed, the bundle if its sequence changed. Each service's endpoint
list is serialized once when it changes, so a snapshot is assembled from ready bytes, and both forms
are cached per index (plain and gzip). This keeps a registration's fan-out to 1,000 watchers at a few
kilobytes each instead of the whole registry.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Mapping
from typing import Any


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


class SnapshotBuilder:
    """Tracks, per part of the configuration, the index at which it last changed."""

    def __init__(self) -> None:
        self.index = -1
        self._services: dict[str, tuple[bytes, int]] = {}
        self._policy: tuple[str | None, bytes, int] = (None, b"null", 0)
        self._bundle: tuple[int, bytes, int] = (-1, b"null", 0)
        self._trust_domain = b'""'
        self._cache: dict[tuple[int | None, bool], bytes] = {}
        self.builds = 0

    def refresh(
        self,
        index: int,
        *,
        trust_domain: str,
        endpoints: Mapping[str, list[dict[str, Any]]],
        policy_version: str | None,
        policies: Mapping[str, Any] | None,
        bundle_sequence: int,
        bundle: Mapping[str, Any],
    ) -> None:
        """Record the state as of ``index`` (no-op when already there)."""
        if index == self.index:
            return
        self._trust_domain = _dump(trust_domain)
        for service, items in endpoints.items():
            data = _dump(items)
            old = self._services.get(service)
            if old is None or old[0] != data:
                self._services[service] = (data, index)
        for service, (data, _) in list(self._services.items()):
            if service not in endpoints and data != b"[]":
                self._services[service] = (b"[]", index)
        if policy_version != self._policy[0]:
            self._policy = (policy_version, _dump(policies), index)
        if bundle_sequence != self._bundle[0]:
            self._bundle = (bundle_sequence, _dump(bundle), index)
        self.index = index
        self._cache.clear()

    def render(self, since: int | None = None, *, compress: bool = False) -> bytes:
        """A full snapshot (``since`` None, 0, or past the current index) or a delta since ``since``."""
        full = since is None or since <= 0 or since > self.index
        key = (None if full else since, compress)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        floor = -1 if full else since
        assert floor is not None
        version, policy_json, policy_index = self._policy
        _sequence, bundle_json, bundle_index = self._bundle
        parts = [
            b'{"index":%d,"delta":%s,"since":%s,"trustDomain":%s,"policyVersion":%s,"generatedAt":%s'
            % (
                self.index,
                b"false" if full else b"true",
                b"null" if full else str(since).encode(),
                self._trust_domain,
                _dump(version),
                repr(time.time()).encode(),
            )
        ]
        if policy_index > floor:
            parts.append(b',"policies":' + policy_json)
        if bundle_index > floor:
            parts.append(b',"bundle":' + bundle_json)
        services = [
            _dump(name) + b":" + data
            for name, (data, changed) in sorted(self._services.items())
            if changed > floor and (not full or data != b"[]")
        ]
        parts.append(b',"endpoints":{' + b",".join(services) + b"}}")
        body = b"".join(parts)
        if compress:
            body = gzip.compress(body, compresslevel=5)
        self._cache[key] = body
        self.builds += 1
        return body
