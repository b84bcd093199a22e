"""An independent recomputation of a study's paired comparison (magdi_dist.study.paired), written from
the definitions: counts of concordant and discordant pairs, Wilson's and Newcombe's formulas, the exact
binomial McNemar test, t-intervals and an OLS slope. It shares no code with the package (numbers come
from the prediction files and scipy's t and linregress), so a test comparing the two checks the
package's arithmetic, not the package against itself. Not a test module: test modules import it."""

from __future__ import annotations

import json
import math
from pathlib import Path

from scipy import stats

Z = stats.norm.ppf(0.975)


def wilson(k: int, n: int) -> tuple[float, float]:
    # Wilson (1927): the roots in p of (phat - p)^2 = z^2 p (1 - p) / n.
    a = 1 + Z**2 / n
    b = -(2 * k / n + Z**2 / n)
    c = (k / n) ** 2
    disc = math.sqrt(max(b * b - 4 * a * c, 0.0))
    return (-b - disc) / (2 * a), (-b + disc) / (2 * a)


def newcombe(a: list[bool], b: list[bool]) -> dict:
    """Newcombe (1998) method 10 for p_a - p_b on paired binary outcomes, and McNemar's exact p."""
    n = len(a)
    both = sum(x and y for x, y in zip(a, b, strict=True))
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    neither = n - both - only_a - only_b
    pa, pb = (both + only_a) / n, (both + only_b) / n
    la, ua = wilson(both + only_a, n)
    lb, ub = wilson(both + only_b, n)
    # The phi correlation of the 2x2 table, continuity-corrected as Newcombe specifies.
    prod = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    num = both * neither - only_a * only_b
    if num > 0:
        num = max(num - n / 2, 0)
    phi = num / math.sqrt(prod) if prod else 0.0
    d = pa - pb
    lo = d - math.sqrt(max((pa - la) ** 2 - 2 * phi * (pa - la) * (ub - pb) + (ub - pb) ** 2, 0))
    hi = d + math.sqrt(max((ua - pa) ** 2 - 2 * phi * (ua - pa) * (pb - lb) + (pb - lb) ** 2, 0))
    m = only_a + only_b
    p = min(1.0, 2 * stats.binom.cdf(min(only_a, only_b), m, 0.5)) if m else 1.0
    return {"difference": d, "low": max(lo, -1), "high": min(hi, 1), "only_a": only_a, "only_b": only_b, "p": p}


def t_interval(values: list[float]) -> tuple[float, float, float]:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def predictions(cell_dir: Path) -> dict[str, bool]:
    lines = (cell_dir / "eval" / "predictions.jsonl").read_text().splitlines()
    return {str(r["id"]): bool(r["correct"]) for r in map(json.loads, lines) if r}


def paired_reference(pairs: dict[str, dict[int, tuple[Path, Path, float, float]]],
                     params: dict[str, float]) -> dict:
    """``pairs``: size -> seed -> (cell dir a, cell dir b, held-out NTP loss a, loss b)."""
    out = {}
    acc_points, loss_points = [], []
    for size, seeds in pairs.items():
        per_seed, loss_diffs, by_question = {}, [], {}
        for seed, (dir_a, dir_b, loss_a, loss_b) in sorted(seeds.items()):
            ca, cb = predictions(dir_a), predictions(dir_b)
            assert sorted(ca) == sorted(cb)
            qs = sorted(ca)
            per_seed[seed] = newcombe([ca[q] for q in qs], [cb[q] for q in qs])
            for q in qs:
                by_question.setdefault(q, []).append(int(ca[q]) - int(cb[q]))
            loss_diffs.append(loss_a - loss_b)
            acc_points.append((math.log10(params[size]), per_seed[seed]["difference"]))
            loss_points.append((math.log10(params[size]), loss_a - loss_b))
        question_means = [sum(v) / len(v) for v in by_question.values()]
        pooled = t_interval(question_means) if len(set(question_means)) > 1 else None
        out[size] = {"per_seed": per_seed, "pooled": pooled, "question_means": question_means,
                     "loss": t_interval(loss_diffs) if len(set(loss_diffs)) > 1 else None,
                     "loss_mean": sum(loss_diffs) / len(loss_diffs)}
    out["trend"] = {name: stats.linregress([p[0] for p in pts], [p[1] for p in pts])
                    for name, pts in (("accuracy", acc_points), ("eval_ntp_loss", loss_points))}
    out["trend_df"] = len(acc_points) - 2
    return out
