"""The committed checkpoint-integrity figure (benchmarks/experiments/checkpoint_verify.py, issue 25's
closing note) holds what the note quotes, and every quoted median is the median of its raw samples.

Reads benchmarks/results/checkpoint_verify.json only: no engine, no DeepSpeed, well under a second.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

RESULT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "checkpoint_verify.json"
STUDENTS = {"tiny-20m": "zero2", "smollm2-135m": "zero3"}  # the two sizes the note names, as trained
RESUME = ("off_warm", "size_warm", "size_cold", "hash_warm", "hash_cold")


@pytest.fixture(scope="module")
def result() -> dict:
    return json.loads(RESULT.read_text())


def _by_student(result: dict) -> dict:
    return {s["student"]: s for s in result["students"]}


def test_the_run_is_stamped(result):
    assert "error" not in result
    assert result["commit"] and result["date"] and isinstance(result["nice"], int)
    assert all(len(result["loadavg"][k]) == 3 for k in ("start", "end"))
    assert result["reps"] >= 3  # a median of a few repetitions, not one sample


def test_both_students_with_real_checkpoints(result):
    got = _by_student(result)
    assert {k: got[k]["zero_stage"] for k in STUDENTS} == STUDENTS
    # One optimizer step before the saves: weights + fp32 optimizer state, far more than the weights.
    assert got["tiny-20m"]["bytes"] > 8 * got["tiny-20m"]["params"]
    assert got["smollm2-135m"]["bytes"] > 4 * 100_000_000  # the frozen base is in a ZeRO-3 checkpoint too
    assert all(s["files"] >= 4 for s in got.values())  # DeepSpeed model + optimizer, RNG, trainer state


@pytest.mark.parametrize("student", sorted(STUDENTS))
def test_quoted_medians_are_the_samples_medians(result, student):
    s = _by_student(result)[student]
    wall = {k: v["wall"] for k, v in s["samples"].items()}
    assert all(len(v) == result["reps"] for v in wall.values())
    for v in RESUME:
        assert s["resume_s"][v] == pytest.approx(statistics.median(wall[v]))
    assert s["restore_s"]["warm"] == pytest.approx(statistics.median(wall["restore_warm"]))
    assert s["restore_s"]["cold"] == pytest.approx(statistics.median(wall["restore_cold"]))
    assert s["save_s"] == pytest.approx(statistics.median(wall["save"]))
    assert s["hash_on_save_s"] == pytest.approx(statistics.median(wall["hash"]))
    assert s["lock_s"] == pytest.approx(statistics.median(wall["lock"]))
    assert s["save_extra_s"] == pytest.approx(s["hash_on_save_s"] + s["lock_s"])
    cpu = {k: v["cpu"] for k, v in s["samples"].items()}
    for v in RESUME:
        assert s["resume_cpu_s"][v] == pytest.approx(statistics.median(cpu[v]))
    assert s["save_cpu_s"] == pytest.approx(statistics.median(cpu["save"]))
    assert s["save_extra_cpu_s"] == pytest.approx(statistics.median(cpu["hash"]) + statistics.median(cpu["lock"]))
    # The hashing was timed inside the save it belongs to: never longer than that save.
    assert all(h <= t for h, t in zip(wall["hash"], wall["save"], strict=True))


@pytest.mark.parametrize("student", sorted(STUDENTS))
def test_cold_means_evicted_and_warm_means_cached(result, student):
    cache = _by_student(result)[student]["cache_resident"]
    if any(x is None for v in cache.values() for x in v):
        pytest.skip("no fincore where the figure ran")
    assert max(cache["cold"]) < 0.05
    assert min(cache["warm"]) > 0.95
