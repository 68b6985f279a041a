"""Micro-measure (not a test): CPU cost per request through H2Endpoint vs bare h2.

Run: .venv/bin/python tests/mesh/h2/h2_core_bench.py
A GET with 8 headers, a 200 with 3 headers + 1 KiB body; best of several batches (CPU time).
"""

from __future__ import annotations

import time

import h2.config
import h2.connection
import h2.events

from mesh.h2 import DataReceived, H2Endpoint

REQ = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"orders.mesh"),
    (b":path", b"/api/v1/orders/42"),
    (b"user-agent", b"bench/1.0"),
    (b"accept", b"application/json"),
    (b"x-request-id", b"0123456789abcdef"),
    (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
]
RESP = [(b":status", b"200"), (b"content-type", b"application/json"), (b"content-length", b"1024")]
BODY = b"x" * 1024
clock = time.process_time


def bare(n: int) -> tuple[float, float]:
    def make(client_side: bool) -> h2.connection.H2Connection:
        config = h2.config.H2Configuration(
            client_side=client_side,
            header_encoding=None,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        return h2.connection.H2Connection(config)

    c, s = make(True), make(False)
    c.initiate_connection()
    s.initiate_connection()
    for _ in range(2):
        s.receive_data(c.data_to_send())
        c.receive_data(s.data_to_send())
    carry, server, client = b"", 0.0, 0.0
    for _ in range(n):
        t0 = clock()
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, REQ, end_stream=True)
        wire = carry + c.data_to_send()
        t1 = clock()
        s.receive_data(wire)
        s.send_headers(sid, RESP)
        s.send_data(sid, BODY, end_stream=True)
        out = s.data_to_send()
        t2 = clock()
        for e in c.receive_data(out):
            if isinstance(e, h2.events.DataReceived):
                c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        carry = c.data_to_send()
        t3 = clock()
        server += t2 - t1
        client += (t1 - t0) + (t3 - t2)
    return server / n * 1e6, client / n * 1e6


def endpoint(n: int) -> tuple[float, float]:
    c, s = H2Endpoint(client_side=True), H2Endpoint(client_side=False)
    c.initiate()
    s.initiate()
    for _ in range(2):
        s.receive(c.data_to_send())
        c.receive(s.data_to_send())
    carry, server, client = b"", 0.0, 0.0
    for _ in range(n):
        t0 = clock()
        sid = c.send_request(REQ, end_stream=True)
        wire = carry + c.data_to_send()
        t1 = clock()
        s.receive(wire)
        s.send_headers(sid, RESP)
        s.send_data(sid, BODY, end_stream=True)
        out = s.data_to_send()
        t2 = clock()
        for e in c.receive(out):
            if isinstance(e, DataReceived):
                c.ack(e.stream_id, e.flow_controlled_length)
        carry = c.data_to_send()
        t3 = clock()
        server += t2 - t1
        client += (t1 - t0) + (t3 - t2)
    return server / n * 1e6, client / n * 1e6


def main() -> None:
    runs: dict[str, list[tuple[float, float]]] = {"bare h2": [], "H2Endpoint": []}
    for _ in range(15):
        runs["bare h2"].append(bare(1000))
        runs["H2Endpoint"].append(endpoint(1000))
    for name, results in runs.items():
        server = min(r[0] for r in results)
        client = min(r[1] for r in results)
        print(f"{name:11s} server side {server:6.1f} us/request   client side {client:6.1f} us/request")


if __name__ == "__main__":
    main()
