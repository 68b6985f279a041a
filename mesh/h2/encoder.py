"""The HPACK encoder the h2 connection uses: hpack's, with two choices changed for CPU.

- **No Huffman coding.** hpack Huffman-codes every literal in pure Python, both ways. A 10-field
  request head with a fresh ``x-request-id`` and ``traceparent`` took ~89 us to encode and ~66 us
  to decode with hpack's defaults, ~31 us and ~39 us with this encoder (hpack 4.2, a slow 2-core
  machine; bench/RESULTS.md, seventh session). Literals grow by about a quarter; sidecars talk over
  loopback or a LAN, where header bytes cost less than the CPU. Every decoder accepts both
  forms (RFC 7541 section 5.2).
- **No indexing of values that rarely repeat.** hpack adds every literal to the dynamic table, so
  unique values (request ids, trace ids) evict the stable headers and make every lookup scan a full
  table. Names in ``UNINDEXED`` are sent as "literal without indexing" (RFC 7541 section 6.2.2),
  nghttp2's list (``hd_deflate_should_indexing``: ``:path``, ``age``, ``content-length``, ``etag``,
  ``if-modified-since``, ``if-none-match``, ``location``, ``set-cookie``) plus ``last-modified``
  and the per-request ids Meshgate adds. The price is bytes: a repeated response head with
  ``content-length``, ``etag`` and ``last-modified`` takes ~61 bytes each time instead of ~8.
  Sensitive fields (``NeverIndexedHeaderTuple``) stay "never indexed" (6.2.3).
"""

from __future__ import annotations

from hpack import Encoder
from hpack.hpack import INDEX_NEVER, INDEX_NONE

__all__ = ["UNINDEXED", "MeshEncoder"]

UNINDEXED = frozenset(
    (
        b":path",
        b"age",
        b"content-length",
        b"etag",
        b"if-modified-since",
        b"if-none-match",
        b"last-modified",
        b"location",
        b"set-cookie",
        b"x-request-id",
        b"traceparent",
        b"tracestate",
    )
)


class MeshEncoder(Encoder):
    """hpack's ``Encoder`` that never Huffman-codes and never indexes ``UNINDEXED`` names."""

    def add(self, to_add: tuple[bytes, bytes], sensitive: bool, huffman: bool = False) -> bytes:
        """Encode one field: indexed when the table holds it whole, else a literal (see the module)."""
        name, value = to_add
        if not sensitive and name not in UNINDEXED:
            return super().add(to_add, False, False)
        match = self.header_table.search(name, value)
        bit = INDEX_NEVER if sensitive else INDEX_NONE
        if match is None:
            return self._encode_literal(name, value, bit, False)
        index, _, perfect = match
        if perfect is not None:  # a static-table entry (``:path /``); never one of ours
            return self._encode_indexed(index)
        return self._encode_indexed_literal(index, value, bit, False)
