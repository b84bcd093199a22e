"""Scaling curve of a study: a power-law fit of held-out NTP loss vs size (and vs compute) and a 2x2 plot.

Rows are mappings with ``cell``, ``variant`` (objective variant, e.g. ``magdi`` / ``ntp``), ``params``,
``flops``, ``eval_ntp_loss``, ``accuracy``; missing values may be None. The loss axis is
``eval_ntp_loss``, the mean per-token NTP loss on the held-out questions' correct chains: the one loss
that means the same thing in every cell (the total MAGDi loss adds node and margin terms whose size
depends on the objective and on each size's own frozen features). The fit is
``loss = a * x^(-b)`` (optionally ``+ c``, an irreducible loss) per variant, with ``x`` the parameter
count or the training FLOPs. A study with seeds fits each (size, variant)'s mean over its seeds
(:func:`seed_means`), and the plot shows the seeds' spread. Everything returned is JSON-serialisable;
inputs that cannot be fit (one point, non-positive values, identical sizes) yield
``{"ok": false, "message": ...}`` rather than an exception, because a study with one finished cell
should still produce its summary.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

FORM = "loss = a * x^(-b)"
FORM_OFFSET = "loss = a * x^(-b) + c"
LOSS = "eval_ntp_loss"
PANELS = ((LOSS, "params"), (LOSS, "flops"), ("accuracy", "params"), ("accuracy", "flops"))
LABELS = {"params": "parameters", "flops": "training FLOPs", LOSS: "held-out NTP loss (per token)",
          "accuracy": "accuracy"}


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _r2(y: np.ndarray, yhat: np.ndarray) -> float | None:
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot == 0.0:
        return None  # all losses equal: R² is undefined, not 1
    return 1.0 - float(np.sum((y - yhat) ** 2)) / ss_tot


def _fail(message: str, form: str, dropped: list) -> dict[str, Any]:
    return {"ok": False, "form": form, "message": message, "dropped": dropped}


def fit_power_law(x: Sequence[Any], y: Sequence[Any], *, offset: bool = False) -> dict[str, Any]:
    """Fit ``y = a * x^(-b) [+ c]``; points with non-positive or missing values are dropped (listed).

    Without ``offset`` the fit is exact least squares in log-log space (a straight line), which is
    robust and needs 2 points. With ``offset`` a nonlinear fit (scipy) starts from that line, with
    ``0 <= c < min(y)``; it needs 4 points so at least one degree of freedom is left.
    """
    form = FORM_OFFSET if offset else FORM
    pairs, dropped = [], []
    for xi, yi in zip(x, y, strict=True):
        fx, fy = _number(xi), _number(yi)
        if fx is None or fy is None or fx <= 0 or fy <= 0:
            dropped.append([xi, yi])
        else:
            pairs.append((fx, fy))
    need = 4 if offset else 2
    if len(pairs) < need:
        return _fail(
            f"need at least {need} points with positive size and loss for {form!r}, got {len(pairs)}"
            + (f" ({len(dropped)} dropped as missing/non-positive)" if dropped else ""),
            form,
            dropped,
        )
    pairs.sort()
    xs = np.array([p[0] for p in pairs])
    ys = np.array([p[1] for p in pairs])
    if np.unique(xs).size < 2:
        return _fail("all points have the same size; the exponent is undefined", form, dropped)

    slope, intercept = np.polyfit(np.log(xs), np.log(ys), 1)
    a, b, c = float(math.exp(intercept)), float(-slope), 0.0
    if offset:
        from scipy.optimize import curve_fit

        # Fit in x / x0 units: raw sizes (1e6..1e11) to a power make the Jacobian badly scaled.
        x0 = float(np.exp(np.mean(np.log(xs))))

        def model(u, a_, b_, c_):
            return a_ * np.power(u, -b_) + c_

        c_max = float(ys.min()) * (1 - 1e-9)
        try:
            (a_n, b, c), _ = curve_fit(
                model,
                xs / x0,
                ys,
                p0=(a * x0 ** (-b), b, 0.0),
                bounds=([1e-12, -10.0, 0.0], [np.inf, 10.0, c_max]),
                maxfev=20000,
            )
        except (RuntimeError, ValueError) as err:
            return _fail(f"nonlinear fit did not converge: {err}", form, dropped)
        a, b, c = float(a_n * x0**b), float(b), float(c)
    yhat = a * np.power(xs, -b) + c
    residuals = ys - yhat
    result = {
        "ok": True,
        "form": form,
        "a": a,
        "b": b,
        "c": c if offset else None,
        "r2": _r2(ys, yhat),
        "r2_log": _r2(np.log(ys), np.log(yhat)) if np.all(yhat > 0) else None,
        "rmse": float(np.sqrt(np.mean(residuals**2))),
        "residuals": [float(r) for r in residuals],
        "x": [float(v) for v in xs],
        "y": [float(v) for v in ys],
        "n_points": len(pairs),
        "dof": len(pairs) - (3 if offset else 2),
        "dropped": dropped,
    }
    if result["dof"] == 0:
        result["message"] = "exactly determined (no degrees of freedom): R² is trivially 1"
    return result


SEED_COLUMNS = ("params", "flops", LOSS, "eval_loss", "accuracy")


def seed_means(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (size, variant, lr): each of ``SEED_COLUMNS`` as the mean over the seeds that have it,
    with its sample sd (``<column>_sd``, n - 1 in the denominator; None with one seed) and the seeds it
    came from. The curve's points: the mean removes the seed-to-seed noise from the fit, the sd shows it."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row.get("size"), row.get("variant"), row.get("lr")), []).append(row)
    out = []
    for (size, variant, lr), group in groups.items():
        name = f"{size}-{variant}" + (f"-lr{lr:g}" if lr is not None else "")
        mean: dict[str, Any] = {"cell": name, "size": size, "variant": variant, "lr": lr,
                                "seeds": [r.get("seed") for r in group], "cells": [r.get("cell") for r in group]}
        for col in SEED_COLUMNS:
            values = [v for v in (_number(r.get(col)) for r in group) if v is not None]
            mean[col] = float(np.mean(values)) if values else None
            mean[f"{col}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
            mean[f"{col}_n"] = len(values)
        out.append(mean)
    return out


def _by_variant(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row.get("variant") or "default"), []).append(row)
    return groups


def fit_scaling(rows: Iterable[Mapping[str, Any]], *, offset: bool = False) -> dict[str, Any]:
    """Per objective variant: held-out NTP loss power laws vs parameters and vs FLOPs (the JSON summary,
    which names the metric it fitted)."""
    rows = list(rows)
    summary: dict[str, Any] = {"metric": LOSS, "form": FORM_OFFSET if offset else FORM, "n_rows": len(rows),
                               "variants": {}}
    if not rows:
        summary["message"] = "no rows: nothing to fit"
        return summary
    for variant, group in sorted(_by_variant(rows).items()):
        losses = [r.get(LOSS) for r in group]
        summary["variants"][variant] = {
            "cells": [r.get("cell") for r in group],
            "vs_params": fit_power_law([r.get("params") for r in group], losses, offset=offset),
            "vs_flops": fit_power_law([r.get("flops") for r in group], losses, offset=offset),
        }
    return summary


def plot_scaling(
    rows: Iterable[Mapping[str, Any]],
    path: str | Path,
    *,
    fits: Mapping[str, Any] | None = None,
    title: str = "scaling study",
    sweep: Iterable[Mapping[str, Any]] | None = None,
    seeds: Iterable[Mapping[str, Any]] | None = None,
) -> Path:
    """2x2 PNG: held-out NTP loss and accuracy vs parameters and vs FLOPs (log x), one line per variant.

    Fitted curves from ``fits`` (the output of :func:`fit_scaling`) are drawn dashed on the loss
    panels. ``sweep``: every cell of an lr sweep, drawn as small crosses behind the curve, whose points
    (``rows``, each size's best lr) are labelled with their lr. ``seeds``: the per-seed cells behind
    ``rows`` that are seed means (:func:`seed_means`), drawn as dots, the means with +-1 sd bars.
    Uses a bare ``Figure`` (Agg canvas), never pyplot: no global backend, no GUI, thread-safe.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    rows = list(rows)
    groups = _by_variant(rows)
    fig = Figure(figsize=(11, 8), layout="constrained")
    axes = fig.subplots(2, 2)
    colors = [f"C{i}" for i in range(10)]
    swept = _by_variant(sweep or [])
    seeded = _by_variant(seeds or [])
    for ax, (metric, xkey) in zip(axes.flat, PANELS, strict=True):
        drawn = False
        for i, (variant, group) in enumerate(sorted(swept.items())):
            pts = [(_number(r.get(xkey)), _number(r.get(metric))) for r in group]
            pts = [(x, y) for x, y in pts if x is not None and y is not None and x > 0]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "x", color=colors[i % len(colors)], alpha=0.35,
                        label=f"{variant} lr sweep")
        for i, (variant, group) in enumerate(sorted(seeded.items())):
            pts = [(_number(r.get(xkey)), _number(r.get(metric))) for r in group]
            pts = [(x, y) for x, y in pts if x is not None and y is not None and x > 0]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], ".", color=colors[i % len(colors)], alpha=0.4,
                        label=f"{variant} seeds")
        for i, (variant, group) in enumerate(sorted(groups.items())):
            pts = sorted(
                (x, y)
                for x, y in ((_number(r.get(xkey)), _number(r.get(metric))) for r in group)
                if x is not None and y is not None and x > 0  # log axis: only positive sizes
            )
            if not pts:
                continue
            color = colors[i % len(colors)]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=variant)
            drawn = True
            bars = [(x, y, _number(r.get(f"{metric}_sd"))) for r in group
                    for x, y in [(_number(r.get(xkey)), _number(r.get(metric)))]
                    if x is not None and y is not None and x > 0]
            if any(sd is not None for *_, sd in bars):  # seed means: +-1 sd over the seeds
                ax.errorbar([b[0] for b in bars], [b[1] for b in bars], yerr=[b[2] or 0.0 for b in bars], fmt="none",
                            ecolor=color, capsize=3, alpha=0.8)
            if sweep:  # say which lr each curve point is
                for r in group:
                    x, y = _number(r.get(xkey)), _number(r.get(metric))
                    if x is not None and y is not None and x > 0 and r.get("lr") is not None:
                        ax.annotate(f"lr {r['lr']:g}", (x, y), textcoords="offset points", xytext=(4, 4),
                                    fontsize="x-small", color=color)
            fit = ((fits or {}).get("variants", {}).get(variant, {}) or {}).get(f"vs_{xkey}")
            if metric == LOSS and fit and fit.get("ok"):
                grid = np.geomspace(min(fit["x"]), max(fit["x"]), 50)
                curve = fit["a"] * np.power(grid, -fit["b"]) + (fit["c"] or 0.0)
                ax.plot(grid, curve, "--", color=color, alpha=0.7, label=f"{variant} fit (b={fit['b']:.3g})")
        ax.set_xlabel(LABELS[xkey])
        ax.set_ylabel(LABELS[metric])
        if drawn:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks overlap on short ranges
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path
