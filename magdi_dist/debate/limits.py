"""One endpoint's admission gate: at most ``max_concurrency`` requests in flight and at most
``requests_per_second`` request starts, for every Ray worker together (the run hosts one gate per
base_url in a Ray actor; here it is plain asyncio so it can be tested without Ray).

Every attempt passes the gate, retries included, and a retry's backoff sleep happens outside it: a
failing endpoint is never hit faster than its limits, and a sleeping request holds no slot.
"""

from __future__ import annotations

import asyncio
import time


class Gate:
    def __init__(self, max_concurrency: int, requests_per_second: float | None = None) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self._slots = asyncio.Semaphore(max_concurrency)
        self._interval = 1.0 / requests_per_second if requests_per_second else 0.0
        self._next_start = 0.0  # monotonic time before which no request may start
        self._in_flight = 0
        self.peak_in_flight = 0
        self.admitted = 0

    async def acquire(self) -> None:
        await self._slots.acquire()
        if self._interval:
            # Reserve the next start time without awaiting between read and write: the event loop
            # runs one coroutine at a time, so reservations never overlap.
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + self._interval
            if start > now:
                await asyncio.sleep(start - now)
        self._in_flight += 1
        self.admitted += 1
        self.peak_in_flight = max(self.peak_in_flight, self._in_flight)

    def release(self) -> None:
        self._in_flight -= 1
        self._slots.release()

    def stats(self) -> dict[str, int]:
        return {"admitted": self.admitted, "peak_in_flight": self.peak_in_flight, "in_flight": self._in_flight}
