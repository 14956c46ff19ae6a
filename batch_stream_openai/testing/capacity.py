"""The fake server's capacity model: K requests served at once, like a GPU server.

A self-hosted model server (vLLM, SGLang, TGI) never answers 429: past what it can
batch, requests wait in its queue, and their latency grows with that queue. With
``capacity=K`` the fake server does the same: K requests are served at once, each for
its latency (the service time), and the rest wait their turn, first come first served.
With ``queue_limit=Q`` a request that finds Q others waiting is refused with a 503, as
a server with a bounded queue does.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["CapacityGate"]


class CapacityGate:
    """At most `capacity` requests hold a slot; the others wait in FIFO order.

    Example:

    >>> import asyncio
    >>> async def serve_one(gate):
    ...     if not await gate.acquire(capacity=64, queue_limit=0):
    ...         return "503: the queue is full"
    ...     try:
    ...         return f"served, {gate.serving} at once"
    ...     finally:
    ...         gate.release()
    >>> asyncio.run(serve_one(CapacityGate()))
    'served, 1 at once'
    """

    def __init__(self) -> None:
        self.serving = 0
        self.max_queued = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    def __repr__(self) -> str:
        return f"<CapacityGate serving={self.serving} queued={self.queued}>"

    @property
    def queued(self) -> int:
        """Requests waiting for a slot."""
        return sum(not future.done() for future in self._waiting)

    async def acquire(self, capacity: int, queue_limit: int) -> bool:
        """Wait for a slot; False (at once) when `queue_limit` others wait already."""
        if self.serving < capacity and not self._waiting:
            self.serving += 1
            return True
        if queue_limit and self.queued >= queue_limit:
            return False
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self.max_queued = max(self.max_queued, self.queued)
        try:
            await future  # `release` hands its slot over: `serving` stays counted
        except asyncio.CancelledError:  # the client went away while it waited
            if future.done() and not future.cancelled():
                self.release()  # the slot was handed over just before: pass it on
            elif future in self._waiting:  # `release` may have passed over it already
                self._waiting.remove(future)
            raise
        return True

    def release(self) -> None:
        """Free a slot: the longest-waiting request takes it."""
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_result(None)
                return
        self.serving -= 1

    def reset(self) -> None:
        """Forget the queue's high-water mark (the counters' reset)."""
        self.max_queued = self.queued
