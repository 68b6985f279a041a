"""Identity benchmark: CSRs signed per second, full and resumed mTLS handshakes per second.

Runs on one core (the process pins itself to a single CPU when it can), over 127.0.0.1, bounded in time
(about 17 s). Handshake figures count complete connections in which BOTH ends run in this one process:
TLS 1.3 mTLS handshake, SPIFFE ID check of the peer on each side, one request line and its reply, close.
The last stdout line is one JSON object:
``{"csr_per_s": ..., "handshakes_per_s": ..., "resumed_handshakes_per_s": ...}``.

Usage: ``.venv/bin/python bench/identity.py [--seconds 4] [--concurrency 8]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import ssl
import sys
import tempfile
import time

from cryptography.hazmat.primitives.asymmetric import ec

from shared.identity.ca import CertificateAuthority, make_csr
from shared.identity.spiffeid import workload_id
from shared.identity.tls import MeshClientContext, client_context, server_context, verify_peer

TD = "bench.example"
ORDERS = workload_id(TD, "orders")
WEB = workload_id(TD, "web")


def bench_csr(ca: CertificateAuthority, seconds: float) -> float:
    """Sign pre-made CSRs (distinct keys, each with its SAN) for ``seconds``; return signatures/s."""
    csrs = [make_csr(ec.generate_private_key(ec.SECP256R1()), WEB) for _ in range(64)]
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for csr in csrs[:16]:
            ca.sign_csr(csr, WEB)
        done += 16
        csrs.append(csrs.pop(0))
    return done / (time.perf_counter() - start)


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        verify_peer(writer.get_extra_info("ssl_object"), TD, WEB)
        line = await reader.readline()
        writer.write(b"ok " + line)
        await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _one(port: int, ctx: MeshClientContext) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="orders")
    conn = writer.get_extra_info("ssl_object")
    verify_peer(conn, TD, ORDERS)
    writer.write(b"ping\n")
    await writer.drain()
    if not (await reader.readline()).startswith(b"ok"):
        raise RuntimeError("no reply")
    ctx.remember_session(conn)
    resumed = bool(conn.session_reused)
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return resumed


async def bench_handshakes(
    ca: CertificateAuthority, seconds: float, concurrency: int, resume: bool
) -> tuple[float, int, int]:
    """Connections per second (and counts of total and resumed ones) over loopback."""
    bundle = ca.bundle()
    server_ctx = server_context(*ca.issue(ORDERS), bundle)
    client_ctx = client_context(*ca.issue(WEB), bundle)
    server = await asyncio.start_server(_serve, "127.0.0.1", 0, ssl=server_ctx, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    if resume:
        await _one(port, client_ctx)  # obtain the first ticket
    else:
        client_ctx.remember_session = lambda conn: False  # type: ignore[method-assign]
    counts = {"total": 0, "resumed": 0}
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            was_resumed = await _one(port, client_ctx)
            counts["total"] += 1
            counts["resumed"] += int(was_resumed)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    server.close()
    await server.wait_closed()
    return counts["total"] / elapsed, counts["total"], counts["resumed"]


def _pump(src: ssl.MemoryBIO, dst: ssl.MemoryBIO) -> None:
    data = src.read()
    if data:
        dst.write(data)


def _memory_connection(
    server_ctx: ssl.SSLContext, client_ctx: MeshClientContext, session: ssl.SSLSession | None
) -> ssl.SSLObject:
    """One mTLS handshake plus one byte each way through memory BIOs (no sockets, no event loop)."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="orders", session=session)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, obj in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        _pump(c_out, s_in)
        _pump(s_out, c_in)
        if all(done.values()):
            break
    verify_peer(server, TD, WEB)
    verify_peer(client, TD, ORDERS)
    server.write(b"x")
    _pump(s_out, c_in)
    client.read(1)  # also processes the session ticket
    return client


def bench_memory_handshakes(ca: CertificateAuthority, seconds: float, resume: bool) -> tuple[float, int]:
    """Handshakes/s through memory BIOs: the TLS and SPIFFE-check cost alone, without asyncio."""
    bundle = ca.bundle()
    server_ctx = server_context(*ca.issue(ORDERS), bundle)
    client_ctx = client_context(*ca.issue(WEB), bundle)
    session = _memory_connection(server_ctx, client_ctx, None).session if resume else None
    count = resumed = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        conn = _memory_connection(server_ctx, client_ctx, session)
        count += 1
        resumed += int(conn.session_reused)
        if resume:
            session = conn.session
    return count / (time.perf_counter() - start), resumed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per measurement (max 15)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent client connections")
    args = parser.parse_args()
    seconds = min(max(args.seconds, 0.5), 15.0)
    pinned = "not pinned"
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        pinned = f"pinned to CPU {cpu}"
    print(f"python {platform.python_version()}, {ssl.OPENSSL_VERSION}, {os.cpu_count()} CPUs, {pinned}")
    with tempfile.TemporaryDirectory() as tmp:
        ca = CertificateAuthority.init(os.path.join(tmp, "ca"), TD)
        csr_rate = bench_csr(ca, seconds)
        print(f"CSR signing: {csr_rate:.0f}/s (P-256 CSR parse + checks + signature check + leaf signing)")
        full, n_full, r_full = asyncio.run(bench_handshakes(ca, seconds, args.concurrency, resume=False))
        print(f"full mTLS handshakes: {full:.0f}/s ({n_full} connections, {r_full} resumed)")
        resumed, n_res, r_res = asyncio.run(bench_handshakes(ca, seconds, args.concurrency, resume=True))
        print(f"resumed mTLS handshakes: {resumed:.0f}/s ({n_res} connections, {r_res} resumed)")
        mem_full, _ = bench_memory_handshakes(ca, min(seconds, 2.0), resume=False)
        mem_res, mem_res_n = bench_memory_handshakes(ca, min(seconds, 2.0), resume=True)
        print(
            f"same through memory BIOs, no sockets or event loop: full {mem_full:.0f}/s, "
            f"resumed {mem_res:.0f}/s ({mem_res_n} resumed)"
        )
        if r_res < n_res * 0.95:
            print("warning: fewer than 95% of the resumption runs were resumed", file=sys.stderr)
    print(
        json.dumps(
            {
                "csr_per_s": round(csr_rate, 1),
                "handshakes_per_s": round(full, 1),
                "resumed_handshakes_per_s": round(resumed, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
