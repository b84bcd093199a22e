"""Buffered per-step metrics for the training loop's ``metrics_callback``.

Logging every step with ``log_metric`` costs one HTTP round trip (or one SQLite transaction) per
value, which at a few steps per second is a measurable slice of a small student's step time. The
logger buffers points and sends them with ``log_batch`` (up to MLflow's 1000 metrics per request)
when the buffer is full, when ``flush_interval_s`` has passed, and on ``close``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

from mlflow.entities import Metric

from magdi_dist.track.store import client_for

log = logging.getLogger(__name__)

MAX_METRICS_PER_BATCH = 1000


def now_ms() -> int:
    return int(time.time() * 1000)


class MetricsLogger:
    """``logger(step, {"train/loss": 1.2, ...})``; a no-op on ranks other than 0 or without a run.

    A failed flush is logged and the points dropped, not raised: losing a few curve points must
    never kill a multi-hour training job. Non-numeric values are skipped (warned once per key).
    """

    def __init__(
        self,
        tracking_uri: str | None,
        run_id: str | None,
        *,
        rank: int,
        flush_every: int = 200,
        flush_interval_s: float = 30.0,
    ) -> None:
        self.enabled = rank == 0 and run_id is not None and tracking_uri is not None
        self.run_id = run_id
        self.flush_every = max(1, min(flush_every, MAX_METRICS_PER_BATCH))
        self.flush_interval_s = flush_interval_s
        self._client = client_for(tracking_uri) if self.enabled else None
        self._buffer: list[Metric] = []
        self._last_flush = time.monotonic()
        self._warned: set[str] = set()
        self.batches_sent = 0  # for tests and for judging the round-trip budget

    def __call__(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        ts = now_ms()
        for key, value in metrics.items():
            number = self._as_float(key, value)
            if number is not None:
                self._buffer.append(Metric(key, number, ts, int(step)))
        if len(self._buffer) >= self.flush_every or time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def _as_float(self, key: str, value: Any) -> float | None:
        try:
            number = float(value.item() if hasattr(value, "item") else value)  # tensors / numpy scalars
        except (TypeError, ValueError):
            if key not in self._warned:
                self._warned.add(key)
                log.warning("metric %r is not numeric (%r); not logged", key, type(value).__name__)
            return None
        # MLflow stores NaN, but +/-inf breaks some backends' JSON; keep the point, clip the value.
        if math.isinf(number):
            number = math.copysign(1e308, number)
        return number

    def flush(self) -> None:
        if not self.enabled or not self._buffer:
            self._last_flush = time.monotonic()
            return
        pending, self._buffer = self._buffer, []
        self._last_flush = time.monotonic()
        try:
            for start in range(0, len(pending), MAX_METRICS_PER_BATCH):
                self._client.log_batch(self.run_id, metrics=pending[start : start + MAX_METRICS_PER_BATCH])
                self.batches_sent += 1
        except Exception:
            log.exception("dropping %d metric points after a failed MLflow log_batch", len(pending))

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
