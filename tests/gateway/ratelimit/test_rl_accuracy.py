"""Accuracy across processes: two gateway processes x 100 concurrent clients, one key, 1,000 per 10 s.

Each worker (``ratelimit_testlib.py hammer``) connects and loads the script, says ``ready``, and
starts at the instant given with ``go``, then checks until 1,500 attempts or 5 s. Admitted in total
must be within [1000, 1010]: the 1,000 of the limit plus what it legitimately gives back while the
test runs (GCRA refills 100/s; the sliding window nothing within its 10 s window).

Every run must also pass the strict atomicity bound: admitted <= 1000 + refill over the span between
the first admitted request being asked and the last being answered (a read-then-write limiter fails
this by hundreds). On a busy machine a run can stall for more than 0.1 s, and GCRA then rightly
admits more than 1,010; only when the measured span explains the overrun is the run measured again
(at most three runs), and the last run must land in [1000, 1010].
"""

from __future__ import annotations

import json
import math
import queue
import subprocess
import sys
import threading
import time
import uuid
from typing import IO, Any

import pytest
from ratelimit_testlib import ACCURACY_LIMIT, HERE, REPO, redis_time_s

WORKERS = 2
CLIENTS = 100
ATTEMPTS = 1500
SECONDS = 5.0
REFILL_PER_S = ACCURACY_LIMIT / 10  # 1,000 per 10 s


def _reader(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _next_line(lines: queue.Queue[str | None], deadline: float) -> str:
    line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
    assert line is not None, "worker exited early"
    return line.strip()


def _measure(redis_url: str, algorithm: str) -> list[dict[str, Any]]:
    """One run: WORKERS processes against one fresh key; their JSON results."""
    key = f"accuracy-{uuid.uuid4().hex}"
    argv = ["hammer", redis_url, key, algorithm, str(ATTEMPTS), str(CLIENTS), str(SECONDS)]
    procs: list[subprocess.Popen[str]] = []
    readers: list[threading.Thread] = []
    outputs: list[queue.Queue[str | None]] = []
    try:
        for _ in range(WORKERS):
            proc = subprocess.Popen(
                [sys.executable, str(HERE / "ratelimit_testlib.py"), *argv],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=REPO,
            )
            lines: queue.Queue[str | None] = queue.Queue()
            assert proc.stdout is not None
            reader = threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True)
            reader.start()
            procs.append(proc)
            readers.append(reader)
            outputs.append(lines)
        deadline = time.monotonic() + 20
        for lines in outputs:
            assert _next_line(lines, deadline) == "ready"
        if algorithm == "sliding-window":  # stay inside one 10 s window (the count restarts per window)
            into = redis_time_s(redis_url) % 10
            if into > 8.5:
                time.sleep(10.05 - into)
        start_at = time.time() + 0.3  # the same instant for every worker, whatever the pipe latency
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"go {start_at:.6f}\n")
            proc.stdin.flush()
        results = [json.loads(_next_line(lines, time.monotonic() + SECONDS + 15)) for lines in outputs]
        for proc in procs:
            assert proc.wait(10) == 0
        return results
    finally:
        for proc in procs:
            if proc.stdin is not None:
                proc.stdin.close()
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()
        for reader in readers:
            reader.join(5)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["gcra", "sliding-window"])
def test_two_processes_admit_the_limit_not_more(redis_url: str, algorithm: str) -> None:
    runs = []
    for _ in range(3):  # bounded: another run only after a stalled one (see the docstring)
        results = _measure(redis_url, algorithm)
        admitted = sum(r["admitted"] for r in results)
        span = max(r["last_admit_answered"] for r in results) - min(r["first_admit_asked"] for r in results)
        refill = math.ceil(span * REFILL_PER_S) if algorithm == "gcra" else 0
        runs.append((admitted, round(span, 3)))
        print(f"\naccuracy {algorithm}: admitted {admitted} (span {span:.3f}s); per worker {results}")

        assert ACCURACY_LIMIT <= admitted <= ACCURACY_LIMIT + refill + 1, (runs, results)  # atomic
        for result in results:
            assert result["attempts"] == ATTEMPTS
            assert set(result["sources"]) <= {"redis", "local-cache"}, result  # no fallback involved
            assert result["sources"]["redis"] >= 100  # each really hammered Redis ...
            assert result["round_trips"] < math.ceil(result["sources"]["redis"] / 10)  # ... in pipelines
            assert result["admitted"] > 0  # both processes got a share
        if admitted <= ACCURACY_LIMIT + 10:
            break
    assert runs[-1][0] <= ACCURACY_LIMIT + 10, f"(admitted, span) per run: {runs}"
