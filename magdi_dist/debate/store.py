"""The run's state directory: an append-only, fsynced log of every completed turn, a log of failed
requests, the fingerprint of the config that wrote them, and a lock.

``turns.jsonl`` is the source of truth: each (question, agent, round) is written once, as it arrives,
and flushed to disk before the next is taken, so a killed run loses at most the turns in flight. The
output MAGs are rebuilt from it after every run; that is what makes a finished run's re-run ask
nothing and write the same bytes.

A kill can cut the last line short; that line alone is dropped on open (its turn is asked again) and
reported. Any other unreadable line is corruption and raises, naming the file and line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any

TURNS = "turns.jsonl"
FAILURES = "failures.jsonl"
FINGERPRINT = "config.json"
LOCK = "lock"

TurnKey = tuple[str, str, int]  # (question id, agent, round)


class StateError(ValueError):
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


class TurnStore:
    """Open (and lock) a state directory for one run; ``turns`` holds every persisted turn."""

    def __init__(self, state_dir: str | Path, fingerprint: dict) -> None:
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = (self.dir / LOCK).open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise StateError(f"{self.dir}: another debate run is using this state directory") from None
        try:
            self._check_fingerprint(fingerprint)
            self.repaired_bytes = self._repair_tail(self.dir / TURNS)
            self._repair_tail(self.dir / FAILURES)
            self.turns: dict[TurnKey, dict] = {}
            for i, rec in self._read(self.dir / TURNS):
                key = (rec["question_id"], rec["agent"], rec["round"])
                if key in self.turns:
                    raise StateError(f"{self.dir / TURNS}: line {i + 1}: turn {key} is logged twice")
                self.turns[key] = rec
            self.past_failures = [rec for _, rec in self._read(self.dir / FAILURES)]
            new = not (self.dir / TURNS).exists()
            self._turns = (self.dir / TURNS).open("a", encoding="utf-8")
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
                    f"{self.dir} holds turns of a different config, so they cannot be resumed; it differs in:\n  "
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

    @staticmethod
    def _read(path: Path):
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
                if not isinstance(rec, dict) or not {"question_id", "agent", "round"} <= rec.keys():
                    raise StateError(f"{path}: line {i + 1}: not a turn record (question_id, agent, round)")
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

    def add_turn(self, record: dict) -> None:
        key = (record["question_id"], record["agent"], record["round"])
        if key in self.turns:  # the planner asks only what is missing: this is a bug, not input
            raise RuntimeError(f"turn {key} was asked twice")
        # Keep what was written (sorted keys, JSON values), not the live dict: MAGs built in this run
        # and in a re-run from the log must be byte-identical.
        self.turns[key] = self._append(self._turns, record)

    def add_failure(self, record: dict) -> None:
        self._append(self._failures, record)

    def close(self) -> None:
        for fh in (getattr(self, "_turns", None), getattr(self, "_failures", None), self._lock):
            if fh is not None:
                with contextlib.suppress(OSError):
                    fh.close()

    def __enter__(self) -> TurnStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
