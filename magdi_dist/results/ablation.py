"""Blocks of an ablation (docs/results.md's real-student study): one row per variant and every pair of
variants compared on the same questions, recomputed from the collected cells by the study's own report
(``study.ablation``: ``markdown``, ``comparisons``, ``plot``), so the document shows what
``python -m magdi_dist.study.ablation`` prints for the run folder the cells came from."""

from __future__ import annotations

import os
from pathlib import Path

from magdi_dist.results.raw import Collected
from magdi_dist.results.seeds import progress
from magdi_dist.results.tables import commits


def rows(c: Collected) -> list[dict]:
    """The cells' report rows, named by variant (by cell when two cells share a variant: seeds)."""
    variants = [x["variant"] for x in c.cells]
    unique = len(set(variants)) == len(variants)
    return [{**x["row"], "variant": x["variant"] if unique else x["cell"]} for x in c.cells]


def ablation(c: Collected) -> str:
    """How many of the planned cells are in, the variants' table, the paired comparisons, and the
    commits they ran on."""
    from magdi_dist.study.ablation import comparisons, markdown

    table = rows(c)
    paired = ("Paired on the same questions (the first variant's accuracy minus the second's, with Newcombe's "
              "95% interval; questions only the first / only the second got right; McNemar's exact p):")
    return "\n".join([progress(c), "", markdown(table), "", paired, "", comparisons(table), "",
                      f"- {commits(c)}."])


def plot_path(c: Collected, root: Path) -> Path:
    return root / "docs" / f"{c.name}.png"


def bars(c: Collected, doc: Path, root: Path, write: bool) -> str:
    """The image line for ``doc``; with ``write``, the bar plot drawn again (``study.ablation.plot``)."""
    from magdi_dist.study.ablation import plot

    path = plot_path(c, root)
    if write:
        plot(rows(c), path, f"{(c.study or {}).get('name') or c.name}: MAGDi ablation")
    return (f"![held-out NTP loss and accuracy per variant, {c.name}]"
            f"({Path(os.path.relpath(path, doc.parent)).as_posix()})")
