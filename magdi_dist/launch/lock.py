"""One run per output folder: an exclusive lock the driver takes before it writes anything.

Two drivers on one ``train.output_dir`` (a resubmitted job, a double click) would interleave
``metrics.jsonl``, overwrite each other's checkpoints and report one run's export as the other's.
The lock is a file created with ``O_CREAT | O_EXCL`` (atomic on POSIX filesystems, NFS included
since v3), or in an object store an object created by a conditional put (storage.create_exclusive),
holding who took it: host, pid, the process's start time and the command. A second
driver refuses with ``RunLocked`` naming the holder. A lock whose holder is gone (same host, and no
process with that pid and start time: a SIGKILLed driver leaves its lock behind) is taken over with
a message; a holder on another host cannot be checked from here and is never taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from magdi_dist.storage import create_exclusive, delete_file, join, read_bytes

LOCK_FILE = ".magdi-run.lock"


class RunLocked(RuntimeError):
    """Another live run holds this output folder."""


def _start_time(pid: int) -> float | None:
    import psutil  # a DeepSpeed dependency

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid()),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)[:500]}


def _alive(holder: dict) -> bool:
    """False only when the holder is provably gone: same host, and its pid is free or another process's."""
    if holder.get("host") != socket.gethostname():
        return True
    started = _start_time(int(holder.get("pid", -1)))
    return started is not None and (holder.get("started") is None or abs(started - holder["started"]) < 1.0)


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')} "
            f"({holder.get('command') or 'unknown command'})")


def acquire(output_dir: str | Path, log=print) -> str:
    """Take the lock of ``output_dir`` (a local folder, created if needed, or a store URI: a
    conditional put there); RunLocked if a live run holds it."""
    path = join(str(output_dir), LOCK_FILE)
    me = json.dumps(_holder()).encode()
    for _ in range(3):  # a stale lock removed between our attempts by another driver: try again
        if create_exclusive(path, me):
            return path
        try:
            holder = json.loads(read_bytes(path) or b"{}")
        except (OSError, ValueError):
            holder = {}  # half-written by a driver killed while taking it: nobody holds it
        if holder and _alive(holder):
            raise RunLocked(f"{output_dir} is in use by another run: {_describe(holder)}. "
                            f"Wait for it, stop it, or use another train.output_dir; the lock is {path}.")
        log(f"lock: taking over {path} from a run that is gone ({_describe(holder) if holder else 'unreadable'})")
        delete_file(path)
    raise RunLocked(f"could not take the lock {path}: other drivers keep taking it")


def release(path: str) -> None:
    """Drop the lock if it is still ours (a run that took over a stale one must not lose it to us)."""
    try:
        if json.loads(read_bytes(path)).get("pid") == os.getpid():
            delete_file(path)
    except (OSError, ValueError):
        pass


@contextlib.contextmanager
def run_lock(output_dir: str | Path, log=print) -> Iterator[str]:
    path = acquire(output_dir, log)
    try:
        yield path
    finally:
        release(path)
