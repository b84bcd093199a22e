"""Summary numbers of an evaluation, computed only from the per-question records so that anyone can
recompute ``summary.json`` from ``predictions.jsonl``."""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion. Unlike the normal (Wald) interval it stays
    inside [0, 1] and is sensible at accuracy 0 or 1 and for the small n of a quick evaluation."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At p = 0 (p = 1) the bound is exactly 0 (1); say so instead of printing rounding residue.
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def summarize(records: list[dict]) -> dict:
    """Accuracy with its 95% Wilson interval, extraction failures, tokens and latency per question."""
    n = len(records)
    correct = sum(bool(r["correct"]) for r in records)
    samples = [a for r in records for a in r["answers"]]
    lo, hi = wilson_interval(correct, n)
    return {
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "ci95_low": lo,
        "ci95_high": hi,
        # a sample whose text states no answer at all (not a wrong answer)
        "extraction_failure_rate": sum(a is None for a in samples) / len(samples) if samples else 0.0,
        # a question where no sample stated an answer, so there was nothing to vote on
        "no_answer_rate": sum(r["vote"] is None for r in records) / n if n else 0.0,
        "samples": len(samples),
        "tokens_per_question": _mean([r["generated_tokens"] for r in records]),
        "tokens_per_sample": _mean([t for r in records for t in r["sample_tokens"]]),
        "latency_s_per_question": _mean([r["latency_s"] for r in records]),
    }
