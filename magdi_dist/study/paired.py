"""Paired comparison of two variants of a study, size by size (MAGDi vs NTP-only, say).

The two variants of a size are trained with the same seeds (the same data order for the same seed)
and evaluated on the same questions, so they are compared paired, never as two independent samples:

* **accuracy a - b**, per seed: the difference of accuracies on the same questions with Newcombe's
  paired interval (1998, method 10) and the exact McNemar p (``eval.stats.paired_difference``).
  Pooled over seeds: the mean over every (seed, question) pair, with a **question-clustered** 95%
  t-interval: each question's difference is averaged over the seeds first (D_q, in [-1, 1]), and the
  interval is mean(D) +- t(0.975, Q-1) * sd(D) / sqrt(Q). A question stays one unit however many
  seeds answered it (its answers under different seeds are correlated: stacking the S x Q pairs as
  independent would make the interval too narrow). The interval is about these questions' population
  and these seeds' training runs; the seed-to-seed spread shows in the per-seed rows. Reference:
  Miller (2024), "Adding Error Bars to Evals", sections on clustered standard errors and paired
  differences. Like any t-interval it needs a fair number of non-zero D_q: with fewer than ``FEW``
  questions answered differently it is flagged as approximate (the per-seed intervals stay sound).
* **held-out NTP loss a - b**: the loss is exact on a fixed held-out split, so its only noise is the
  training seed. Per seed the difference of the two variants' losses; the mean over seeds with a
  t-interval, t(0.975, S-1) * sd / sqrt(S) (none with one seed).
* **does the gap grow with size**: the ordinary least-squares slope of the per-(size, seed) gap on
  log10(parameters), with its t-interval (n - 2 degrees of freedom; none with fewer than 3 points). All
  cells share the held-out questions, whose part of the gap is common to every size: that shared part
  moves the intercept, not the slope, so treating the points as independent errs wide, not narrow.

Everything is recomputed from each cell's ``eval/predictions.jsonl`` and its held-out NTP loss; the
result is plain JSON for the study's summary.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from magdi_dist.eval.stats import paired_difference

FEW = 10  # fewer questions than this answered differently: the pooled interval is flagged as approximate
METHOD = {
    "accuracy_per_seed": "Newcombe (1998, method 10) paired 95% interval, exact two-sided McNemar p",
    "accuracy_pooled": "mean over (seed, question) pairs; 95% t-interval clustered by question: each "
                       "question's a-b averaged over seeds, then mean +- t(0.975, Q-1) sd/sqrt(Q); "
                       "two-sided t-test p",
    "eval_ntp_loss": "per-seed a-b (same seed, same data order); mean over seeds +- t(0.975, S-1) sd/sqrt(S)",
    "trend": "OLS slope of the per-(size, seed) gap on log10(params), 95% t-interval with n-2 df",
}


def _t(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def _t_p(stat: float, df: int) -> float:
    from scipy.stats import t

    return float(2 * t.sf(abs(stat), df))


def mean_interval(values: Iterable[float]) -> dict[str, Any]:
    """Mean with its 95% t-interval and two-sided p against 0; no interval below 2 values or at sd 0."""
    v = np.asarray(list(values), dtype=float)
    out: dict[str, Any] = {"n": int(v.size), "difference": float(v.mean()) if v.size else None,
                           "sd": None, "ci95_low": None, "ci95_high": None, "p": None}
    if v.size < 2:
        out["message"] = f"{v.size} value(s): no interval"
        return out
    sd = float(v.std(ddof=1))
    out["sd"] = sd
    if sd == 0.0:
        out["message"] = "no variation between the paired values: no interval"
        return out
    se = sd / math.sqrt(v.size)
    half = _t(v.size - 1) * se
    out.update(ci95_low=out["difference"] - half, ci95_high=out["difference"] + half,
               p=_t_p(out["difference"] / se, v.size - 1), df=int(v.size - 1))
    return out


def slope(points: list[tuple[float, float]]) -> dict[str, Any]:
    """OLS slope of y on x with its 95% t-interval (n - 2 df) and two-sided p against 0."""
    out: dict[str, Any] = {"n": len(points), "slope": None, "ci95_low": None, "ci95_high": None, "p": None,
                           "x": "log10(params)"}
    xs = np.array([p[0] for p in points], dtype=float)
    ys = np.array([p[1] for p in points], dtype=float)
    if len(points) < 2 or np.unique(xs).size < 2:
        out["message"] = "needs points at two or more sizes"
        return out
    sxx = float(np.sum((xs - xs.mean()) ** 2))
    b = float(np.sum((xs - xs.mean()) * (ys - ys.mean())) / sxx)
    out.update(slope=b, intercept=float(ys.mean() - b * xs.mean()), df=len(points) - 2)
    if len(points) < 3:
        out["message"] = "2 points: the slope is exact, no interval"
        return out
    resid = ys - (out["intercept"] + b * xs)
    se = math.sqrt(float(np.sum(resid**2)) / (len(points) - 2) / sxx)
    out["se"] = se
    if se == 0.0:
        out["message"] = "the points lie on a line: no interval"
        return out
    half = _t(len(points) - 2) * se
    out.update(ci95_low=b - half, ci95_high=b + half, p=_t_p(b / se, len(points) - 2))
    return out


def _correct(cell: Mapping[str, Any]) -> dict[str, bool]:
    """Question id -> correct, from the cell's eval/predictions.jsonl (next to its export)."""
    path = Path(cell["export_dir"]).parent / "eval" / "predictions.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {str(r["id"]): bool(r["correct"]) for r in records}


def _size_comparison(size: str, a_cells: dict, b_cells: dict) -> dict[str, Any]:
    seeds = sorted(set(a_cells) & set(b_cells), key=lambda s: (s is None, s))
    unpaired = sorted(str(s) for s in set(a_cells) ^ set(b_cells))
    correct = {s: (_correct(a_cells[s]), _correct(b_cells[s])) for s in seeds}
    questions = None
    for s, (ca, cb) in correct.items():
        for side in (ca, cb):
            if questions is None:
                questions = sorted(side)
            elif sorted(side) != questions:
                raise ValueError(f"size {size}, seed {s}: the two variants' cells were evaluated on different "
                                 "questions from the other cells; a paired comparison needs the same questions")
    questions = questions or []
    per_seed = []
    for s in seeds:
        ca, cb = correct[s]
        d = paired_difference([ca[q] for q in questions], [cb[q] for q in questions])
        per_seed.append({"seed": s, "a": sum(ca.values()) / len(ca), "b": sum(cb.values()) / len(cb), **d})
    # Each question's a - b averaged over the seeds: the unit the pooled interval resamples.
    per_question = [np.mean([int(correct[s][0][q]) - int(correct[s][1][q]) for s in seeds]) for q in questions]
    accuracy = {"a": float(np.mean([r["a"] for r in per_seed])), "b": float(np.mean([r["b"] for r in per_seed])),
                **mean_interval(per_question), "n_questions": len(questions), "n_seeds": len(seeds),
                "only_a": sum(r["only_a"] for r in per_seed), "only_b": sum(r["only_b"] for r in per_seed),
                "questions_differing": int(sum(v != 0 for v in per_question)), "per_seed": per_seed}
    accuracy.pop("n")
    if accuracy.get("message", "").startswith("no variation"):
        accuracy["message"] = "the variants answered every question alike: no pooled interval (see per seed)"
    elif accuracy["questions_differing"] < FEW:  # a t-interval of a few non-zero values is rough
        accuracy["message"] = (f"only {accuracy['questions_differing']} question(s) answered differently: the "
                               "pooled t-interval is approximate; the per-seed Newcombe intervals hold at any count")
    losses = [{"seed": s, "a": a_cells[s].get("eval_ntp_loss"), "b": b_cells[s].get("eval_ntp_loss")} for s in seeds]
    losses = [{**r, "difference": r["a"] - r["b"]} for r in losses if r["a"] is not None and r["b"] is not None]
    loss = {"a": float(np.mean([r["a"] for r in losses])) if losses else None,
            "b": float(np.mean([r["b"] for r in losses])) if losses else None,
            **mean_interval(r["difference"] for r in losses), "per_seed": losses}
    loss["n_seeds"] = loss.pop("n")
    params = [c.get("params") for c in [*a_cells.values(), *b_cells.values()] if c.get("params")]
    return {"size": size, "params": float(np.mean(params)) if params else None, "seeds": seeds,
            "unpaired_seeds": unpaired, "accuracy": accuracy, "eval_ntp_loss": loss}


def compare_cells(cells: Iterable[Mapping[str, Any]], a: str, b: str) -> dict[str, Any]:
    """Variant ``a`` against ``b`` in every size that has both, over the seeds both have. ``cells``: the
    study summary's cells; only finished or skipped cells on the curve (``best_lr``) count."""
    by: dict[str, dict[str, dict]] = {}
    sizes: list[str] = []
    for c in cells:
        if c.get("status") == "failed" or not c.get("export_dir") or not c.get("best_lr", True):
            continue
        if c["size"] not in sizes:
            sizes.append(c["size"])
        if c["variant"] in (a, b):
            by.setdefault(c["size"], {}).setdefault(c["variant"], {})[c.get("seed")] = c
    result: dict[str, Any] = {"a": a, "b": b, "method": METHOD, "sizes": [], "skipped_sizes": []}
    for size in sizes:
        pair = by.get(size, {})
        if a not in pair or b not in pair or not set(pair[a]) & set(pair[b]):
            result["skipped_sizes"].append(size)
            continue
        result["sizes"].append(_size_comparison(size, pair[a], pair[b]))
    trend = {}
    for metric in ("accuracy", "eval_ntp_loss"):
        # One point per (size, seed): that seed's a - b, so the seeds' spread is in the residuals.
        points = [(math.log10(s["params"]), r["difference"])
                  for s in result["sizes"] if s["params"] for r in s[metric]["per_seed"]]
        trend[metric] = slope(points)
    result["trend"] = trend
    return result


def _ci(d: Mapping[str, Any], scale: float = 100.0, spec: str = "+.1f") -> str:
    if d.get("difference") is None:
        return "-"
    text = format(scale * d["difference"], spec)
    if d.get("ci95_low") is None:
        return f"{text} (no interval)"
    return f"{text} [{format(scale * d['ci95_low'], spec)}, {format(scale * d['ci95_high'], spec)}]"


def reading(d: Mapping[str, Any], higher: str, lower: str) -> str:
    """The interval in words: a null result says so (the interval is printed beside it)."""
    if d.get("ci95_low") is None:
        return "no interval"
    if d["ci95_low"] <= 0.0 <= d["ci95_high"]:
        return "no difference detected"
    return higher if d["ci95_low"] > 0 else lower


def markdown(paired: Mapping[str, Any]) -> str:
    """The report's tables: one row per size, the trend, and the method in words."""
    a, b = paired["a"], paired["b"]
    lines = [f"{a} vs {b}, paired per size (differences are {a} - {b})", "",
             f"| size | params | seeds | questions | accuracy {a} / {b} | accuracy diff, points (95% CI) | p "
             f"| only {a} / only {b} right | held-out NTP loss diff (95% CI) | reading |",
             "| --- | ---: | ---: | ---: | --- | --- | ---: | ---: | --- | --- |"]
    for s in paired["sizes"]:
        acc, loss = s["accuracy"], s["eval_ntp_loss"]
        p = "-" if acc.get("p") is None else f"{acc['p']:.3f}"
        few = " (few questions differ: approximate)" if 0 < acc["questions_differing"] < FEW else ""
        lines.append(f"| {s['size']} | {s['params'] or 0:,.0f} | {acc['n_seeds']} | {acc['n_questions']} "
                     f"| {100 * acc['a']:.1f}% / {100 * acc['b']:.1f}% | {_ci(acc)} | {p} "
                     f"| {acc['only_a']} / {acc['only_b']} | {_ci(loss, 1.0, '+.4f')} "
                     f"| accuracy: {reading(acc, f'{a} higher', f'{b} higher')}{few}; "
                     f"loss: {reading(loss, f'{b} lower', f'{a} lower')} |")
    lines.append("")  # the table ends here: the notes below are a list, not rows
    for name, t in paired["trend"].items():
        scale, spec = (100.0, "+.2f") if name == "accuracy" else (1.0, "+.4f")
        if t.get("slope") is None:
            lines.append(f"- gap vs log10(params), {name}: {t.get('message')}")
            continue
        ci = ("no interval: " + t["message"] if t.get("ci95_low") is None else
              f"95% CI [{format(scale * t['ci95_low'], spec)}, {format(scale * t['ci95_high'], spec)}], p {t['p']:.3f}")
        unit = "points" if name == "accuracy" else "nats/token"
        trend = reading(t, f"{a} - {b} rises with size", f"{a} - {b} falls with size").replace(
            "no difference detected", "no trend with size detected")
        lines.append(f"- gap vs log10(params), {name}: slope {format(scale * t['slope'], spec)} {unit} per "
                     f"decade ({t['n']} size-seed points; {ci}): {trend}")
    if paired["skipped_sizes"]:
        lines.append(f"- not compared (a variant missing): {', '.join(paired['skipped_sizes'])}")
    lines.append("- method: " + "; ".join(f"{k}: {v}" for k, v in paired["method"].items()))
    return "\n".join(lines)
