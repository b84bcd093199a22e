"""The block of a study with seeds and two compared variants (MAGDi vs NTP-only): how much of it has
run, each size and variant as the mean ± sd over the seeds present, the paired comparison per size
(``study.paired``) and the commits the cells ran on. A partial study is shown as what it is: the
collected cells out of the planned ones, and only the seeds and sizes that have both variants are
compared.
"""

from __future__ import annotations

import statistics
from typing import Any

from magdi_dist.results.raw import Collected
from magdi_dist.results.tables import commits, params


def _mean_sd(values: list[float | None], spec: str, scale: float = 1.0) -> str:
    v = [scale * x for x in values if x is not None]
    if not v:
        return "-"
    text = format(statistics.fmean(v), spec)
    return text + (f" ± {format(statistics.stdev(v), spec)}" if len(v) > 1 else "")


def _positive_tokens_per_s(cell: dict) -> float | None:
    """Tokens of positive-chain rows per second: the same work for every variant (results.raw reads it
    from the cell's steps or run; a summary's cell from its metrics). None when the run did not count them."""
    if "positive_tokens_per_s" in cell:
        return cell["positive_tokens_per_s"]
    return (cell.get("metrics") or {}).get("positive_tokens_per_s")


def _tokens_per_s(cell: dict) -> float | None:
    row = cell.get("row")
    return row["tokens_per_s"] if row else (cell.get("metrics") or {}).get("tokens_per_s")


def _step_s(cell: dict) -> float | None:
    row = cell.get("row")
    return row["step_s"] if row else None


def progress(c: Collected) -> str:
    planned = c.planned
    have = [x["cell"] for x in c.cells]
    study = (c.study or {}).get("name") or (c.summary or {}).get("study") or c.name
    if planned is None:
        return f"**{len(have)} cells** of study `{study}` collected (no study config collected: planned count unknown)."
    missing = [n for n in planned if n not in have]
    text = f"**{len([n for n in have if n in planned])} of {len(planned)} cells** of study `{study}` collected"
    if missing:
        text += f"; not yet: {', '.join(missing)}" if len(missing) <= 8 else f"; {len(missing)} not yet"
    return text + "."


def seed_table(c: Collected) -> str:
    groups: dict[tuple, list[dict]] = {}
    for x in c.cells:
        if x.get("best_lr", True):
            groups.setdefault((x["size"], x["variant"]), []).append(x)
    positive = any(_positive_tokens_per_s(x) is not None for x in c.cells)
    speed = ["positive-chain tokens/s", "tokens/s (all rows)"] if positive else ["tokens/s"]
    head = ["size", "variant", "seeds", "parameters", "held-out NTP loss", "accuracy %", "step (median, s)", *speed,
            "cell wall time (s)"]
    lines = ["| " + " | ".join(head) + " |", "| --- | --- |" + " ---: |" * (len(head) - 2)]
    for (size, variant), cells in groups.items():
        seeds = ", ".join(str(x.get("seed")) for x in cells)
        row = [size, variant, seeds, params(cells[0].get("params")),
               _mean_sd([x.get("eval_ntp_loss") for x in cells], ".4f"),
               _mean_sd([x.get("accuracy") for x in cells], ".1f", 100.0),
               _mean_sd([_step_s(x) for x in cells], ".3f")]
        if positive:
            row.append(_mean_sd([_positive_tokens_per_s(x) for x in cells], ",.0f"))
        row += [_mean_sd([_tokens_per_s(x) for x in cells], ",.0f"),
                _mean_sd([x.get("wall_time_s") for x in cells], ",.0f")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def paired(c: Collected) -> dict[str, Any] | None:
    """The paired comparison: recomputed from the cells' predictions when the cells were collected
    (what the study computes at its end, here over the cells present); else the summary's block."""
    pair = c.compared
    if pair is None:
        return None
    if c.from_cells:
        from magdi_dist.study.paired import compare_cells

        try:
            return compare_cells(c.cells, *pair)
        except ValueError as err:  # e.g. cells evaluated on different questions: say so in the table
            return {"a": pair[0], "b": pair[1], "error": str(err)}
    return (c.summary or {}).get("paired")


def study(c: Collected) -> str:
    from magdi_dist.study.paired import markdown

    out = [progress(c), "",
           "Per size and variant, the mean ± sample sd over the seeds present (one value: no sd). Step "
           "time and tokens/s from each cell's `metrics.jsonl`, accuracy from its `eval/`.", "", seed_table(c)]
    p = paired(c)
    if p and p.get("error"):
        out += ["", f"Paired comparison {p['a']} vs {p['b']}: not computed ({p['error']})."]
    elif p:
        source = "recomputed from the collected cells' predictions" if c.from_cells else "the study summary's `paired`"
        out += ["", f"Paired ({source}; `study/paired.py`):", "", markdown(p)]
    out += ["", f"- {commits(c)}."]
    if not c.from_cells:
        out.append("- Only the study summary was collected (no cells/): step times are not available.")
    return "\n".join(out)

