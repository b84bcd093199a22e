"""Builders of small teacher files for the bad-input tests (tests/test_bad_input.py): one good record
of each format, writers, and mutators that break one field of a record."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def magdi_record(i: int = 0) -> dict:
    return {
        "question": f"Tom has {i} apples and buys 12 more. How many does he have?",
        "gold_answer": str(i + 12),
        "claude_output_0": {"reasoning": f"{i} + 12 = {i + 12}.", "answer": str(i + 12)},
        "gpt3_output_0": {"reasoning": f"{i} + 12 = {i + 13}.", "answer": str(i + 13)},
        "bard_output_0": {"reasoning": f"{i} plus 12 is {i + 12}.", "answer": str(i + 12)},
        "gpt3_output_1": {"reasoning": f"I agree: {i + 12}.", "answer": str(i + 12)},
        "gpt3_pred_1": str(i + 12),  # ReConcile bookkeeping: ignored
        "vote_0": [str(i + 12), str(i + 13), str(i + 12)],
    }


def jsonl_record(i: int = 0) -> dict:
    return {
        "id": f"q-{i}",
        "task": "numeric",
        "question": f"What is {i} + 1?",
        "gold_answer": str(i + 1),
        "responses": [
            {"agent": "a", "round": 0, "reasoning": f"{i} + 1 = {i + 1}", "answer": str(i + 1)},
            {"agent": "b", "round": 0, "reasoning": f"{i} + 1 = {i + 2}", "answer": str(i + 2)},
            {"agent": "a", "round": 1, "reasoning": f"Still {i + 1}", "answer": str(i + 1)},
        ],
    }


def debate_entry(i: int = 0) -> tuple[str, list]:
    def history(ans: int) -> list[dict]:
        return [
            {"role": "user", "content": f"Solve: {i} + 5"},
            {"role": "assistant", "content": f"{i} + 5 = {ans}. \\boxed{{{ans}}}"},
            {"role": "user", "content": "Other agents said ... update your answer."},
            {"role": "assistant", "content": f"Final: \\boxed{{{i + 5}}}"},
        ]

    return f"What is {i} + 5?", [[history(i + 5), history(i + 6)], f"{i} + 5 = {i + 5}\n#### {i + 5}"]


def write_magdi(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def write_jsonl(path: Path, lines: list) -> Path:
    with path.open("wb") as fh:
        for line in lines:
            fh.write(line if isinstance(line, bytes) else json.dumps(line).encode())
            fh.write(b"\n")
    return path


def write_debate(path: Path, entries: list[tuple[str, list]]) -> Path:
    path.write_text(json.dumps(dict(entries)), encoding="utf-8")
    return path


def magdi_with(mutate: Callable[[dict], None]) -> Callable[[Path], Path]:
    """Three records, the middle one broken by ``mutate``."""

    def build(tmp: Path) -> Path:
        records = [magdi_record(0), magdi_record(1), magdi_record(2)]
        mutate(records[1])
        return write_magdi(tmp / "GSM8k_case.json", records)

    return build


def jsonl_with(mutate: Callable[[dict], None]) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        records = [jsonl_record(0), jsonl_record(1), jsonl_record(2)]
        mutate(records[1])
        return write_jsonl(tmp / "case.jsonl", records)

    return build


def debate_with(mutate: Callable[[list], None]) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        entries = [debate_entry(0), debate_entry(1), debate_entry(2)]
        mutate(entries[1][1])
        return write_debate(tmp / "gsm_case.json", entries)

    return build


def setitem(path: str, value) -> Callable[[dict], None]:
    """Set a nested key, ``"a.b"`` or ``"responses.1.round"``."""

    def mutate(rec) -> None:
        *parents, last = path.split(".")
        node = rec
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def delitem(key: str) -> Callable[[dict], None]:
    return lambda rec: rec.pop(key)


def rename(old: str, new: str) -> Callable[[dict], None]:
    return lambda rec: rec.__setitem__(new, rec.pop(old))
