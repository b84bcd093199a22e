"""A resumable request log: a state directory with an append-only, fsynced log of every completed
request, a log of failed requests, the fingerprint of the config that wrote them, and a lock. A
debate's turns (magdi_dist.debate.store) and a remote evaluation's samples (eval/remote.py) use it;
here, in eval, because eval is the lower of the two layers.

``turns.jsonl`` is the source of truth: each key (a debate's (question, agent, round), an
evaluation's (question, sample)) is written once, as it arrives, and flushed to disk before the next
is taken, so a killed run loses at most the requests in flight. The outputs are rebuilt from it after
every run; that is what makes a finished run's re-run ask nothing and write the same bytes.

A kill can cut the last line short; that line alone is dropped on open (its request is asked again)
and reported. Any other unreadable line is corruption and raises, naming the file and line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any

from magdi_dist.eval.errors import EvalInputError

TURNS = "turns.jsonl"
FAILURES = "failures.jsonl"
FINGERPRINT = "config.json"
LOCK = "lock"

class StateError(EvalInputError):
    """A state directory that cannot be resumed; the message names the file, line or key."""


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, list):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out or {prefix: []}
    return {prefix: obj}


def fingerprint_diff(old: dict, new: dict) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in sorted(a.keys() | b.keys())
            if a.get(k, "<absent>") != b.get(k, "<absent>")]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RequestLog:
    """Open (and lock) a state directory for one run; ``records`` holds every persisted record, by key
    (the values of ``key_fields``). Subclasses name their key and what a record and a run are."""

    key_fields: tuple[str, ...] = ()
    item = "record"  # what one logged request is called in messages
    user = "run"  # what holds the lock, in messages

    def key(self, record: dict) -> tuple:
        return tuple(record[f] for f in self.key_fields)

    def __init__(self, state_dir: str | Path, fingerprint: dict) -> None:
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = (self.dir / LOCK).open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise StateError(f"{self.dir}: another {self.user} is using this state directory") from None
        try:
            self._check_fingerprint(fingerprint)
            self.repaired_bytes = self._repair_tail(self.dir / TURNS)
            self._repair_tail(self.dir / FAILURES)
            self.records: dict[tuple, dict] = {}
            for i, rec in self._read(self.dir / TURNS):
                key = self.key(rec)
                if key in self.records:
                    raise StateError(f"{self.dir / TURNS}: line {i + 1}: {self.item} {key} is logged twice")
                self.records[key] = rec
            self.past_failures = [rec for _, rec in self._read(self.dir / FAILURES)]
            new = not (self.dir / TURNS).exists()
            self._log = (self.dir / TURNS).open("a", encoding="utf-8")
            self._failures = (self.dir / FAILURES).open("a", encoding="utf-8")
            if new:
                _fsync_dir(self.dir)  # the file's directory entry must survive a crash too
        except BaseException:
            self._lock.close()
            raise

    # --- opening ------------------------------------------------------------------------------
    def _check_fingerprint(self, fingerprint: dict) -> None:
        path = self.dir / FINGERPRINT
        if path.exists():
            old = json.loads(path.read_text())
            if old != fingerprint:
                diff = fingerprint_diff(old, fingerprint)
                raise StateError(
                    f"{self.dir} holds {self.item}s of a different config, so they cannot be resumed; "
                    "it differs in:\n  "
                    + "\n  ".join(diff[:20]) + "\nchoose another out (or state_dir), or delete this directory"
                )
        else:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(fingerprint, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, path)

    @staticmethod
    def _repair_tail(path: Path) -> int:
        """Drop a last line a kill cut short (no newline); returns the bytes dropped."""
        if not path.exists():
            return 0
        data = path.read_bytes()
        if not data or data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        with path.open("r+b") as fh:
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())
        return len(data) - keep

    def _read(self, path: Path):
        if not path.exists():
            return
        with path.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError as err:
                    raise StateError(f"{path}: line {i + 1}: not JSON ({err}); the log is corrupt") from None
                if not isinstance(rec, dict) or not set(self.key_fields) <= rec.keys():
                    raise StateError(f"{path}: line {i + 1}: not a {self.item} record ({', '.join(self.key_fields)})")
                yield i, rec

    # --- appending ----------------------------------------------------------------------------
    @staticmethod
    def _append(fh, record: dict) -> dict:
        """Write one line and fsync it; returns the record as a later run will read it back."""
        line = json.dumps(record, ensure_ascii=False, sort_keys=True)
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())
        return json.loads(line)

    def add(self, record: dict) -> None:
        key = self.key(record)
        if key in self.records:  # the planner asks only what is missing: this is a bug, not input
            raise RuntimeError(f"{self.item} {key} was asked twice")
        # Keep what was written (sorted keys, JSON values), not the live dict: outputs built in this run
        # and in a re-run from the log must be byte-identical.
        self.records[key] = self._append(self._log, record)

    def add_failure(self, record: dict) -> None:
        self._append(self._failures, record)

    def close(self) -> None:
        for fh in (getattr(self, "_log", None), getattr(self, "_failures", None), self._lock):
            if fh is not None:
                with contextlib.suppress(OSError):
                    fh.close()

    def __enter__(self) -> RequestLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
