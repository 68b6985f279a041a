"""The HPACK encoder choices of ``mesh/h2/encoder.py``: no Huffman, no indexing of one-off values."""

from __future__ import annotations

import inspect

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2_frames import client, parse_frames
from hpack import Decoder, Encoder, NeverIndexedHeaderTuple
from hyperframe.frame import HeadersFrame

from mesh.h2.connection import HookedConnection
from mesh.h2.encoder import UNINDEXED, MeshEncoder

HEAD = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"orders.mesh"),
    (b":path", b"/orders/17"),
    (b"user-agent", b"curl/8"),
    (b"x-request-id", b"4bf92f3577b34da6a3ce929d0e0e4736"),
    (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
]


def _decoded(block: bytes, decoder: Decoder) -> list[tuple[bytes, bytes]]:
    return [(bytes(n), bytes(v)) for n, v in decoder.decode(block, raw=True)]


def test_blocks_decode_to_the_same_fields() -> None:
    enc, dec = MeshEncoder(), Decoder()
    for i in range(50):  # the dynamic table fills and evicts along the way
        head = [*HEAD[:5], (b"x-request-id", b"%032x" % i), (b"x-n", b"%d" % (i % 7)), (b"x-big", b"v" * 900)]
        assert _decoded(enc.encode(head), dec) == head


def test_unindexed_names_with_large_static_indexes_round_trip() -> None:
    # static indexes 15 and up need the 4-bit prefix of RFC 7541 6.2.2 to carry over into more bytes
    enc, dec = MeshEncoder(), Decoder()
    head = [
        (b":status", b"200"),
        (b"age", b"7"),
        (b"content-length", b"1024"),
        (b"etag", b'"abc"'),
        (b"if-modified-since", b"Sat, 28 Nov 2026 20:00:00 GMT"),
        (b"last-modified", b"Sat, 28 Nov 2026 20:00:00 GMT"),
        (b"location", b"/there"),
        (b"set-cookie", b"a=b"),
    ]
    for _ in range(3):
        assert _decoded(enc.encode(head), dec) == head
    assert not enc.header_table.dynamic_entries and not dec.header_table.dynamic_entries


def test_no_literal_is_huffman_coded() -> None:
    block = MeshEncoder().encode([(b"x-custom", b"hello world")])
    # literal with incremental indexing, new name: 0x40, then name and value lengths, H bit clear
    assert block == b"\x40\x08x-custom\x0bhello world"
    assert Encoder().encode([(b"x-custom", b"hello world")]) != block  # hpack's default codes it


def test_one_off_values_stay_out_of_the_table_and_stable_ones_go_in() -> None:
    enc = MeshEncoder()
    enc.encode(HEAD)
    assert [n for n, _ in enc.header_table.dynamic_entries] == [b"user-agent", b":authority"]
    again = enc.encode(HEAD)
    first = enc.encode([HEAD[2]])
    assert len(first) == 1  # :authority now one indexed byte
    # x-request-id: a literal without indexing (0000xxxx), its name a new literal
    assert b"\x00\x0cx-request-id" in again
    assert {b":path", b"x-request-id", b"traceparent", b"content-length"} <= UNINDEXED


def test_sensitive_fields_stay_never_indexed() -> None:
    enc, dec = MeshEncoder(), Decoder()
    block = enc.encode([NeverIndexedHeaderTuple(b"authorization", b"Bearer abc")])
    assert block[0] & 0xF0 == 0x10  # "never indexed" (RFC 7541 6.2.3), name from the static table
    assert not enc.header_table.dynamic_entries
    (field,) = dec.decode(block, raw=True)
    assert isinstance(field, NeverIndexedHeaderTuple)
    assert (bytes(field[0]), bytes(field[1])) == (b"authorization", b"Bearer abc")


def test_table_size_updates_are_still_sent() -> None:
    enc, dec = MeshEncoder(), Decoder()
    enc.header_table_size = 256
    dec.max_allowed_table_size = 4096
    block = enc.encode([(b"x-a", b"1")])
    assert block[0] & 0xE0 == 0x20  # dynamic table size update first
    assert _decoded(block, dec) == [(b"x-a", b"1")]


def test_the_connection_uses_it_and_h2_still_calls_add() -> None:
    assert isinstance(HookedConnection(H2Configuration(client_side=True)).encoder, MeshEncoder)
    assert "self.encoder = Encoder()" in inspect.getsource(H2Connection.__init__)
    assert "self.add(" in inspect.getsource(Encoder.encode)
    ep, _ = client()
    ep.send_request(HEAD)
    frames = [f for f in parse_frames(ep.data_to_send()) if isinstance(f, HeadersFrame)]
    assert b"x-request-id" in frames[0].data  # sent as plain octets
