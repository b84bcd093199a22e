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


def paired_difference(a: list[bool], b: list[bool], z: float = Z95) -> dict:
    """Accuracy of ``a`` minus accuracy of ``b`` on the same questions (same order), with Newcombe's
    (1998, method 10) 95% interval for a paired difference, built from the two Wilson intervals and
    the correlation of the pairs (it stays in [-1, 1] and is sound at small n, unlike Wald), and the
    exact two-sided McNemar p-value (a binomial test on the discordant questions)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_difference needs two equally long, non-empty lists, got {len(a)} and {len(b)}")
    n = len(a)
    e = sum(x and y for x, y in zip(a, b, strict=True))  # both right
    f = sum(x and not y for x, y in zip(a, b, strict=True))  # only a right
    g = sum(y and not x for x, y in zip(a, b, strict=True))  # only b right
    h = n - e - f - g
    p1, p2 = (e + f) / n, (e + g) / n
    l1, u1 = wilson_interval(e + f, n, z)
    l2, u2 = wilson_interval(e + g, n, z)
    denom = math.sqrt((e + f) * (g + h) * (e + g) * (f + h))
    cross = e * h - f * g
    # Newcombe's continuity-corrected correlation: shrink a positive cross product by n/2.
    phi = 0.0 if denom == 0 else (max(cross - n / 2, 0.0) if cross > 0 else cross) / denom
    dl = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    du = math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    diff = p1 - p2
    discordant = f + g
    tail = sum(math.comb(discordant, k) for k in range(min(f, g) + 1)) / 2**discordant if discordant else 1.0
    return {"n": n, "difference": diff, "ci95_low": max(-1.0, diff - dl), "ci95_high": min(1.0, diff + du),
            "only_a": f, "only_b": g, "mcnemar_p": min(1.0, 2 * tail)}
