"""Blocks about a collected run's cells (the README's demo section): its setup, one row per cell, and
the scaling fit. Every figure comes from the collected raw files, named in the block's text."""

from __future__ import annotations

import math
from typing import Any

from magdi_dist.results.files import ResultsError
from magdi_dist.results.raw import Collected


def fmt(value: Any, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def params(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.2f}M"


def commits(c: Collected) -> str:
    """Which commits the cells ran on, from their MLflow runs (``provenance.json``)."""
    recorded = c.provenance.get("cells", {})
    by: dict[tuple, list[str]] = {}
    for cell in c.cells:
        if cell["cell"] in recorded:
            p = recorded[cell["cell"]]
            by.setdefault((p.get("commit"), p.get("dirty")), []).append(cell["cell"])
    if not by:
        return "commits: not recorded (no `provenance.json`: collected before `magdi-dist results collect`)"
    parts = []
    for (sha, dirty), names in by.items():
        state = "no git checkout" if sha is None else ("uncommitted changes" if dirty else "clean")
        what = "every cell" if len(by) == 1 else ", ".join(names)
        parts.append(f"`{(sha or '-')[:7]}` ({state}): {what}")
    return "commit (MLflow run tags, `provenance.json`): " + "; ".join(parts)


def _first_config(c: Collected) -> dict:
    if not c.from_cells:
        raise ResultsError(f"{c.folder}: the block needs the cells' files (cells/), this folder has none")
    return c.cells[0]["config"]


def setup(c: Collected) -> str:
    """Data, training and evaluation settings shared by every cell, and the data's counts."""
    cfg, study = _first_config(c), c.study or {}
    data = cfg["data"]
    m = c.manifest or {}
    totals, split = m.get("totals", {}), m.get("split", {})
    # A config always carries the synthetic defaults; they are the data only when no paths are given.
    syn = None if data.get("paths") else data.get("synthetic")
    source = (f"{syn['n']:,} synthetic {syn['agents']}-agent x {syn['rounds']}-round discussions (seed {syn['seed']})"
              if syn else f"{totals.get('mags', '?'):,} discussions from {', '.join(data['paths'])}")
    # No feature_model: each cell featurizes with its own base (preprocess/featurize.py).
    bases = sorted({str(x["config"]["model"]["base"]) for x in c.cells})
    features = cfg["model"].get("feature_model") or (bases[0] if len(bases) == 1 else "each base")
    counts = (f": {totals['rows']:,} pair rows in {totals['shards']:,} shards; {split['heldout_questions']:,} of "
              f"{split['questions']:,} questions held out" if totals and split else
              " (no manifest collected: the row and question counts are not known here)")
    lines = [f"- **Data.** {source}, chains cleaned{counts} (`eval_fraction` {data['eval_fraction']:g}). "
             "Prepared once for every cell; frozen node features from "
             f"`{features}`."]
    # The longest-trained cell states the steps; cells that train fewer (an untrained baseline) are named.
    longest = max(c.cells, key=lambda x: x["config"]["train"]["max_steps"])
    train, epoch = longest["config"]["train"], longest["epoch"]
    fewer = [f"{x['variant']}: {x['config']['train']['max_steps']:,}" for x in c.cells
             if x["config"]["train"]["max_steps"] != train["max_steps"]]
    steps = f"{train['max_steps']:,} steps" + (f" ({'; '.join(fewer)})" if fewer else "")
    ranks = study.get("num_workers")
    rates = sorted({x["config"]["train"]["lr"] for x in c.cells})
    lr = f"lr {rates[0]:g} for every cell" if len(rates) == 1 else "each size at its own lr (table)"
    lines.append(f"- **Training.** {steps} of {ranks or '?'} ranks x {train['micro_batch_size']} "
                 f"pairs (grad accumulation {train['grad_accum']}; {fmt(epoch, '.2f')} epoch), DeepSpeed "
                 f"`{train['deepspeed']}` on {ranks or '?'} CPU ranks under Ray Train, {train['precision']}, "
                 f"{train['schedule']} schedule with {train['warmup_steps']} warmup steps, seed {train['seed']}; "
                 f"{lr}.")
    ev = (study.get("evaluation") or {})
    first = c.json(f"cells/{c.cells[0]['cell']}/eval/summary.json")
    drawn = (f"{ev['synthetic_n']:,} held-out synthetic problems (seed {ev.get('synthetic_seed', 10_000)}) drawn"
             if ev.get("synthetic_n") and not ev.get("data") else f"questions of {first.get('data')}")
    lines.append(f"- **Evaluation.** Greedy (temperature {first['temperature']:g}), at most {first['max_new_tokens']} "
                 f"new tokens, {drawn}; {first['n']:,} evaluated, after {first.get('contamination_excluded', 0):,} "
                 "whose question a training discussion asks were dropped (`contamination_excluded`). Accuracy "
                 "with a 95% Wilson interval. **Held-out NTP loss** is per token, over the held-out questions' "
                 "correct chains, each once.")
    return "\n".join(lines)


def _disjoint(a: dict, b: dict) -> bool:
    (alo, ahi), (blo, bhi) = a["accuracy_ci"], b["accuracy_ci"]
    return ahi < blo or bhi < alo


def reading(c: Collected) -> list[str]:
    """What the table says in words, computed: the loss ordering, which intervals separate, the champion."""
    out = []
    variants = list(dict.fromkeys(x["variant"] for x in c.cells))
    if any(x.get("seed") is not None for x in c.cells):  # seeds are compared in the study block, not here
        variants = []
    for variant in variants:
        cells = sorted((x for x in c.cells if x["variant"] == variant and x.get("params") and x.get("best_lr", True)),
                       key=lambda x: x["params"])
        label = f"{variant}: " if len(variants) > 1 else ""
        losses = [x["eval_ntp_loss"] for x in cells]
        if len(cells) > 1 and None not in losses:
            falls = all(b < a for a, b in zip(losses, losses[1:], strict=False))
            steps = ", ".join(f"{a['cell']} to {b['cell']} {b['eval_ntp_loss'] - a['eval_ntp_loss']:+.4f}"
                              for a, b in zip(cells, cells[1:], strict=False))
            out.append(f"- {label}Held-out NTP loss {'falls strictly' if falls else 'does not fall strictly'} "
                       f"with size ({steps}).")
        pairs = [(a, b) for i, a in enumerate(cells) for b in cells[i + 1:]]
        if pairs:
            apart = [f"{b['cell']} vs {a['cell']}" for a, b in pairs if _disjoint(a, b)]
            overlap = [f"{b['cell']} vs {a['cell']}" for a, b in pairs if not _disjoint(a, b)]
            out.append(f"- {label}Accuracy intervals that do not overlap: " + (", ".join(apart) or "none")
                       + "; that overlap: " + (", ".join(overlap) or "none") + ".")
    champion = (c.summary or {}).get("champion")
    if champion:
        best = [x["cell"] for x in c.summary["cells"] if x.get("model_version") == champion["version"]]
        out.append(f"- Champion: {', '.join(best) or '?'}, registered as `{champion['uri']}` (version "
                   f"{champion['version']}), the best by the study's `{(c.study or {}).get('champion_metric', '?')}`.")
    return out


def table(c: Collected) -> str:
    """One row per cell: size, parameters, lr, steps, step time, tokens/s, held-out NTP loss, accuracy, wall
    time. Tokens/s counts every row the LM ran; when the cells' steps also count positive-chain tokens
    (the same work for every variant), both are shown, the first labelled "all rows"."""
    _first_config(c)
    positive = any(x.get("positive_tokens_per_s") is not None for x in c.cells)
    speed = ["positive-chain tokens/s", "tokens/s (all rows)"] if positive else ["tokens/s"]
    head = ["cell", "parameters", "lr", "steps", "step (median)", *speed, "held-out NTP loss", "accuracy (95% CI)",
            "cell wall time"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * 6 + (" ---: |" if positive else "")
             + " --- | ---: |"]
    for x in c.cells:
        r = x["row"]
        rates = ([fmt(x.get("positive_tokens_per_s"), ",.0f")] if positive else []) + [fmt(r["tokens_per_s"], ",.0f")]
        lines.append(f"| {x['cell']} | {params(x['params'])} | {x['config']['train']['lr']:g} | {r['steps']:,} "
                     f"| {fmt(r['step_s'], '.3f')} s | {' | '.join(rates)} | {fmt(x['eval_ntp_loss'], '.4f')} "
                     f"| {r['accuracy']:.1%} [{r['ci'][0]:.1%}, {r['ci'][1]:.1%}] (n={r['n']}) "
                     f"| {fmt(x['wall_time_s'], ',.0f')} s |")
    return "\n".join([*lines, "", *reading(c), f"- {commits(c)}."])


def _fit_line(fit: dict, x: str) -> str:
    if not fit.get("ok"):
        return f"vs {x}: no fit ({fit.get('message')})"
    text = f"vs {x}: a = {fit['a']:.4g}, **b = {fit['b']:.3f}**"
    if fit.get("c") is not None:
        text += f", c = {fit['c']:.4g}"
    r2 = "undefined" if fit.get("r2") is None else f"{fit['r2']:.2f}"
    r2_log = "" if fit.get("r2_log") is None else f" ({fit['r2_log']:.2f} in log space)"
    return f"{text}, **R² = {r2}**{r2_log}, {fit['n_points']} points"


def fit(c: Collected) -> str:
    """The study's power-law fit (``scaling_fit.json``), checked against a refit of the collected cells."""
    saved = c.fit
    if saved is None:
        raise ResultsError(f"{c.folder}: no scaling_fit.json collected")
    from magdi_dist.study.curve import fit_scaling, seed_means

    rows = [x for x in c.cells if x.get("best_lr", True)]
    if any(x.get("seed") is not None for x in rows):
        rows = seed_means(rows)
    refit = fit_scaling(rows)
    lines = []
    for variant, fits in sorted(saved.get("variants", {}).items()):
        again = refit["variants"].get(variant, {}).get("vs_params", {})
        mine = fits["vs_params"]
        if mine.get("ok") and not (again.get("ok") and math.isclose(mine["b"], again["b"], rel_tol=1e-9)):
            raise ResultsError(f"{c.folder}/scaling_fit.json: {variant}'s b = {mine['b']} is not what its collected "
                               f"cells give ({again.get('b')}): the fit and the cells come from different runs")
        lines.append(f"- `{saved['form']}` of {saved['metric']}, {variant}: " + _fit_line(mine, "parameters")
                     + "; " + _fit_line(fits["vs_flops"], "training FLOPs") + ".")
    return "\n".join(lines)
