"""Collect the calls made in one event-loop tick and send them as one batch (one Redis pipeline).

``submit`` queues a request and returns a future. The queue is flushed on the next loop iteration
(``loop.call_soon``), or at once when ``max_batch`` requests are waiting: under load, the many
``check`` calls that become ready together cost one round trip instead of one each. Batches run
concurrently with each other (each on its own pooled connection).

``flush`` gets the requests and returns one result per request, in order. If it raises, every
request of the batch gets ``fail(exception)`` as its result: futures never carry exceptions, so a
caller that went away (cancelled) leaves nothing unretrieved behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Req = TypeVar("Req")
Res = TypeVar("Res")


class Batcher(Generic[Req, Res]):
    def __init__(
        self,
        flush: Callable[[Sequence[Req]], Awaitable[Sequence[Res]]],
        fail: Callable[[BaseException], Res],
        *,
        max_batch: int = 256,
    ) -> None:
        self._flush = flush
        self._fail = fail
        self.max_batch = max(1, max_batch)
        self._pending: list[tuple[Req, asyncio.Future[Res]]] = []
        self._scheduled: asyncio.Handle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # batches handed to ``flush``

    def submit(self, request: Req) -> asyncio.Future[Res]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Res] = loop.create_future()
        self._pending.append((request, future))
        if len(self._pending) >= self.max_batch:
            self._start()
        elif self._scheduled is None:
            self._scheduled = loop.call_soon(self._start)
        return future

    def _start(self) -> None:
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        batch = [(req, fut) for req, fut in self._pending if not fut.done()]
        self._pending = []
        if not batch:
            return
        self.batches += 1
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[Req, asyncio.Future[Res]]]) -> None:
        try:
            try:
                results: Sequence[Res] = await self._flush([req for req, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"flush gave {len(results)} results for {len(batch)} requests")
            except Exception as exc:
                results = [self._fail(exc)] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:  # cancelled (close): nobody may wait forever
            for _, future in batch:
                if not future.done():
                    future.set_result(self._fail(asyncio.CancelledError()))

    async def close(self) -> None:
        """Fail what is queued, cancel the batches in flight and wait for them."""
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        pending, self._pending = self._pending, []
        for _, future in pending:
            if not future.done():
                future.set_result(self._fail(asyncio.CancelledError()))
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
