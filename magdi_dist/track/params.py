"""Turning a nested resolved config into MLflow params that every store accepts.

MLflow params are flat ``str -> str`` pairs with size limits: keys up to 250 characters, values up
to 6000 in current MLflow but 500 in older servers and older SQL schemas (``VARCHAR(500)``). We cap
values at 500 by default so a study logs the same way to any server; nothing is lost because the
full config is also logged as a JSON artifact. ``log_batch`` takes at most 100 params per call.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from mlflow.entities import Param, RunTag
from mlflow.tracking import MlflowClient

MAX_PARAM_VALUE = 500
MAX_KEY = 250
PARAMS_PER_BATCH = 100
TRUNCATION_MARK = "...[truncated]"
# MLflow names may only hold alphanumerics, "_", "-", ".", " ", ":" and "/".
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. :/]")


def _to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)  # None -> "null", True -> "true": unambiguous and round-trippable
    try:
        return json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return str(value)


def flatten_config(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``. Lists stay whole (as JSON): indices are not names."""
    flat: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[name] = _to_text(value)
    return flat


def param_key(key: str) -> str:
    """A key MLflow accepts: allowed characters only, at most 250 of them."""
    key = _BAD_KEY_CHARS.sub("_", key)
    if len(key) <= MAX_KEY:
        return key
    # Keep the readable tail (the leaf name) and a hash so two long keys cannot collide.
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return f"{digest}-{key[-(MAX_KEY - 9) :]}"


def clip_value(value: str, limit: int = MAX_PARAM_VALUE) -> str:
    if len(value) <= limit:
        return value
    return value[: limit - len(TRUNCATION_MARK)] + TRUNCATION_MARK


def to_params(flat: Mapping[str, str], value_limit: int = MAX_PARAM_VALUE) -> list[Param]:
    return [Param(param_key(k), clip_value(v, value_limit)) for k, v in sorted(flat.items())]


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def log_params_batched(
    client: MlflowClient, run_id: str, params: list[Param], tags: list[RunTag] | None = None
) -> None:
    """Log params (and tags) in as few ``log_batch`` calls as the 100-per-batch limit allows."""
    param_chunks = list(_chunks(list(params), PARAMS_PER_BATCH))
    tag_chunks = list(_chunks(list(tags or []), PARAMS_PER_BATCH))
    # The 100 limit is per kind, so one request can carry 100 params *and* 100 tags.
    for i in range(max(len(param_chunks), len(tag_chunks))):
        p = param_chunks[i] if i < len(param_chunks) else []
        t = tag_chunks[i] if i < len(tag_chunks) else []
        client.log_batch(run_id, params=p, tags=t)
