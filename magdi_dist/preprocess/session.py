"""Connect to a Ray cluster, or start an embedded one for the length of a command (preprocessing,
training and job scripts all use this one way in).

``ray_session`` is a no-op when Ray is already up (a Ray job's driver, a test that started its own),
connects when given an address (or when ``RAY_ADDRESS`` is set, as it is for a submitted job), and
otherwise starts a local Ray sized for this machine, which it shuts down on exit -- it never touches
a Ray it did not start.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

DEFAULT_OBJECT_STORE_BYTES = 256 * 1024**2  # small: shard rows stream through, nothing is cached


@contextmanager
def ray_session(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    object_store_bytes: int = DEFAULT_OBJECT_STORE_BYTES,
    runtime_env: dict | None = None,
) -> Iterator[None]:
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        ray.init(
            num_cpus=num_cpus or os.cpu_count() or 1,
            object_store_memory=object_store_bytes,
            # The dashboard serves Ray's State API. Without it Ray Train's PlacementGroupCleaner
            # cannot see its controller and logs a warning every check: 426 of the 1,221 lines of
            # the demo's output. It binds 127.0.0.1, port 8265 or the next free one.
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            runtime_env=runtime_env,
        )
    try:
        yield
    finally:
        ray.shutdown()
