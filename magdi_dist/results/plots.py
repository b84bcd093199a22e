"""The scaling-curve plot of a collected study, drawn again from its cells (``study.curve``), and the
image line that shows it.

Plots are regenerated but never compared: the same numbers give different PNG bytes under another
matplotlib or FreeType build, so ``--check`` compares the documents' text only (the image line, the
tables, the fit), and ``magdi-dist results`` rewrites the PNG every time.
"""

from __future__ import annotations

import os
from pathlib import Path

from magdi_dist.results.raw import Collected


def plot_path(c: Collected, root: Path) -> Path:
    return root / "docs" / f"{c.name}_scaling_curve.png"


def draw(c: Collected, path: Path) -> Path:
    from magdi_dist.study.curve import fit_scaling, plot_scaling, seed_means

    every = [x for x in c.cells if x.get("status") != "failed"]
    rows = [x for x in every if x.get("best_lr", True)]
    seeded = rows if any(x.get("seed") is not None for x in rows) else None
    if seeded:
        rows = seed_means(rows)
    name = (c.study or {}).get("name") or c.name
    return plot_scaling(rows, path, fits=fit_scaling(rows), title=f"{name}: MAGDi students",
                        sweep=every if len(every) > len(seeded or rows) else None, seeds=seeded)


def plot(c: Collected, doc: Path, root: Path, write: bool) -> str:
    """The image line for ``doc``; with ``write``, the PNG drawn again."""
    path = plot_path(c, root)
    if write:
        draw(c, path)
    return f"![held-out NTP loss and accuracy vs size, {c.name}]({Path(os.path.relpath(path, doc.parent)).as_posix()})"
