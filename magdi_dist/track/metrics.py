"""Per-step metrics into MLflow: the training loop's buffered logger, and the replay of what it missed.

Logging every step with ``log_metric`` costs one HTTP round trip (or one SQLite transaction) per
value, which at a few steps per second is a measurable slice of a small student's step time. The
logger buffers points and sends them with ``log_batch`` (up to MLflow's 1000 metrics per request)
when the buffer is full, when ``flush_interval_s`` has passed, and on ``close``.

A tracking server can be down longer than MLflow's own retries (about 4 minutes per request by
default). The run's ``metrics.jsonl`` is the record of truth; MLflow is a copy. So the logger never
raises: after a failed batch it holds the points and sends nothing for ``retry_after_s`` (a failed
request blocks training for the whole retry budget, so it must not be tried at every flush), then
asks the server's ``/health`` (one request, no retries) before sending again. ``log_missing`` is the
other half: the driver replays ``metrics.jsonl`` into the run by (key, step), so the points MLflow
never took arrive once the server answers (after training, or on a re-run at the latest) and the
points it did take are not logged twice.
"""

from __future__ import annotations

import logging
import math
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

from mlflow.entities import Metric

from magdi_dist.track.store import client_for

log = logging.getLogger(__name__)

MAX_METRICS_PER_BATCH = 1000
# Points held while the server is down: at 13 per step, hours of a fast run (a few MB); older ones
# beyond this are dropped from memory only (metrics.jsonl has them, and the replay sends them).
MAX_HELD_POINTS = 200_000
HEALTH_TIMEOUT_S = 5.0


def now_ms() -> int:
    return int(time.time() * 1000)


def metric_value(value: Any) -> float | None:
    """``value`` as an MLflow metric value (tensors and numpy scalars too), or None when not numeric.
    MLflow stores NaN, but +/-inf breaks some backends' JSON: the point is kept, the value clipped."""
    try:
        number = float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError):
        return None
    return math.copysign(1e308, number) if math.isinf(number) else number


def server_answers(tracking_uri: str) -> bool:
    """Whether an HTTP tracking server answers at all (any status: it is up); True for other stores,
    whose own call is the only test."""
    if not tracking_uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_S):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


class MetricsLogger:
    """``logger(step, {"train/loss": 1.2, ...})``; a no-op on ranks other than 0 or without a run.

    Never raises (losing curve points must never kill a multi-hour job): a failed batch is held and
    sent again once the server answers (module docstring). Non-numeric values are skipped (warned once
    per key). Steps the run already has (a resumed run trains again the steps after its checkpoint;
    the loop's records carry their step as the metric ``step``) are not sent again.
    """

    def __init__(
        self,
        tracking_uri: str | None,
        run_id: str | None,
        *,
        rank: int,
        flush_every: int = 200,
        flush_interval_s: float = 30.0,
        retry_after_s: float = 60.0,
    ) -> None:
        self.enabled = rank == 0 and run_id is not None and tracking_uri is not None
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.flush_every = max(1, min(flush_every, MAX_METRICS_PER_BATCH))
        self.flush_interval_s, self.retry_after_s = flush_interval_s, retry_after_s
        self._client = client_for(tracking_uri) if self.enabled else None
        self._buffer: list[Metric] = []
        self._last_flush = time.monotonic()
        self._warned: set[str] = set()
        self._logged: set[int] | None = None  # the run's steps before this logger: read on first use
        self._down_since: float | None = None  # when a batch failed; None while the server takes them
        self._retry_at = 0.0
        self.batches_sent = 0  # for tests and for judging the round-trip budget
        self.points_sent = 0
        self.points_dropped = 0  # held too long to keep in memory (still in metrics.jsonl)

    @property
    def pending(self) -> int:
        """Points buffered or held, not yet taken by MLflow."""
        return len(self._buffer)

    def __call__(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        if self._logged is None:
            self._logged = self._steps_in_run()
        if int(step) in self._logged:
            return
        ts = now_ms()
        for key, value in metrics.items():
            number = metric_value(value)
            if number is None:
                if key not in self._warned:
                    self._warned.add(key)
                    log.warning("metric %r is not numeric (%r); not logged", key, type(value).__name__)
                continue
            self._buffer.append(Metric(key, number, ts, int(step)))
        if len(self._buffer) >= self.flush_every or time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def _steps_in_run(self) -> set[int]:
        try:
            return {m.step for m in self._client.get_metric_history(self.run_id, "step")}
        except Exception as err:  # the server is down now: nothing to skip is the safe guess
            log.warning("could not read the steps MLflow run %s has (%s); sending every step", self.run_id, err)
            return set()

    def flush(self, *, probe: bool = False) -> None:
        """Send what is buffered (and held), unless the server failed recently: then hold it until
        ``retry_after_s`` has passed (or ``probe``) and ``/health`` answers."""
        self._last_flush = time.monotonic()
        if not self.enabled or not self._buffer:
            return
        if self._down_since is not None:
            if not probe and time.monotonic() < self._retry_at:
                return
            if not server_answers(self.tracking_uri):
                self._retry_at = time.monotonic() + self.retry_after_s
                return
        try:
            while self._buffer:
                batch = self._buffer[:MAX_METRICS_PER_BATCH]
                self._client.log_batch(self.run_id, metrics=batch)
                del self._buffer[: len(batch)]
                self.batches_sent += 1
                self.points_sent += len(batch)
        except Exception as err:
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning("MLflow did not take %d metric points of run %s (%s); holding them and trying "
                            "again every %.0f s (metrics.jsonl has them; the study replays what is missing)",
                            len(self._buffer), self.run_id, err, self.retry_after_s)
            self._retry_at = time.monotonic() + self.retry_after_s
            if len(self._buffer) > MAX_HELD_POINTS:
                extra = len(self._buffer) - MAX_HELD_POINTS
                del self._buffer[:extra]
                self.points_dropped += extra
            return
        if self._down_since is not None:
            log.warning("MLflow takes metrics again after %.0f s", time.monotonic() - self._down_since)
            self._down_since = None

    def close(self) -> None:
        self.flush(probe=True)
        if self._buffer or self.points_dropped:
            log.warning("%d metric points never reached MLflow run %s (%d more dropped from memory): "
                        "metrics.jsonl has them; the study replays them when the server answers",
                        len(self._buffer), self.run_id, self.points_dropped)

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def log_missing(tracking_uri: str, run_id: str, points: Iterable[tuple[int, Mapping[str, Any]]]) -> dict:
    """Log the ``(step, metrics)`` points (what the loop hands ``MetricsLogger``) that run ``run_id``
    does not have yet, by (key, step); returns ``{"replayed": n, "present": m}``.

    Replayed points carry the replay's time: ``metrics.jsonl`` records steps, not wall-clock times.
    Raises what MLflow raises (the caller decides whether a tracking failure matters)."""
    wanted: dict[str, dict[int, float]] = {}
    for step, metrics in points:
        for key, value in metrics.items():
            number = metric_value(value)
            if number is not None:
                wanted.setdefault(key, {}).setdefault(int(step), number)
    client = client_for(tracking_uri)
    logged = client.get_run(run_id).data.metrics  # a key it has never seen needs no history
    ts, missing, present = now_ms(), [], 0
    for key, by_step in wanted.items():
        have = {m.step for m in client.get_metric_history(run_id, key)} if key in logged else set()
        present += len(have & by_step.keys())
        missing.extend(Metric(key, value, ts, step) for step, value in sorted(by_step.items()) if step not in have)
    for start in range(0, len(missing), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=missing[start : start + MAX_METRICS_PER_BATCH])
    return {"replayed": len(missing), "present": present}
