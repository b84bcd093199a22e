"""A collected folder read back: its cells as the study summary's cell records, rebuilt from the raw
files, and the study it belongs to (planned cells, compared variants).

The numbers are recomputed by the study's own report code (``study.ablation.cell_row`` for a cell's
steps, step time, tokens/s and accuracy; ``study.paired.compare_cells`` for the paired comparison),
which reads a run folder's plain files. ``opened`` therefore writes the collected cells' files,
un-gzipped, into a temporary run-folder layout for as long as the tables are being made.

A folder without cells (``docs/results/budget_magdi_vs_sft/``: a study summary only) is read from the
summary's own cell records and ``paired`` block instead.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from magdi_dist.results.files import (
    CELL_FILES,
    EXTRA_DIR,
    FIT,
    MANIFEST,
    PROVENANCE,
    RUN_RECORD,
    STUDY_CONFIG,
    SUMMARY,
    ResultsError,
    has,
    read_json,
    read_text,
)


@dataclass
class Collected:
    name: str
    folder: Path
    summary: dict | None
    study: dict | None  # the study config (its parent run's record, else a study YAML of the folder)
    provenance: dict
    cells: list[dict] = field(default_factory=list)  # study-summary cell records, in study order
    from_cells: bool = False  # rebuilt from cells/ (True) or taken from the summary (False)

    @property
    def planned(self) -> list[str] | None:
        """Every cell the study config plans, in its order (None: no config collected)."""
        if self.study is None:
            return None
        from magdi_dist.study.config import Axis, StudyConfig

        s = self.study
        # Not validated: base_config names a file of the machine that ran the study.
        variants = s.get("variants") or [{"name": "magdi"}]
        config = StudyConfig.model_construct(**{**s, "sizes": [Axis(**a) for a in s["sizes"]],
                                                "variants": [Axis(**a) for a in variants]})
        return [c.name for c in config.cells()]

    @property
    def compared(self) -> tuple[str, str] | None:
        """The two variants the study compares (its config's ``compare``, else its first two)."""
        if self.study and self.study.get("compare"):
            return tuple(self.study["compare"])
        paired = (self.summary or {}).get("paired") or {}
        if paired.get("a") and paired.get("b"):
            return paired["a"], paired["b"]
        variants = list(dict.fromkeys(c["variant"] for c in self.cells))
        return (variants[0], variants[1]) if len(variants) >= 2 else None

    def text(self, rel: str) -> str:
        return read_text(self.folder, rel)

    def json(self, rel: str) -> Any:
        return read_json(self.folder, rel)

    def has(self, rel: str) -> bool:
        return has(self.folder, rel)

    def extra(self, name: str) -> str:
        return read_text(self.folder, f"{EXTRA_DIR}/{name}")

    @property
    def manifest(self) -> dict | None:
        return self.json(MANIFEST) if self.has(MANIFEST) else None

    @property
    def fit(self) -> dict | None:
        return self.json(FIT) if self.has(FIT) else None


def _study_yaml(folder: Path) -> dict | None:
    for path in sorted(folder.glob("*.yaml")):
        tree = yaml.safe_load(path.read_text())
        if isinstance(tree, dict) and "sizes" in tree:
            return tree
    return None


def _number(value: str | None, kind=float):
    return None if value in (None, "", "None") else kind(value)


def _mark_best_lr(cells: list[dict]) -> None:
    """Per (size, variant): the lr with the lowest mean held-out NTP loss over its seeds is on the curve
    (recipes.study.mark_best_lr, which works on the study's live results)."""
    groups: dict[tuple, dict] = {}
    for c in cells:
        groups.setdefault((c["size"], c["variant"]), {}).setdefault(c["lr"], []).append(c)
    for by_lr in groups.values():
        means = {lr: sum(v) / len(v) for lr, group in by_lr.items()
                 if (v := [c["eval_ntp_loss"] for c in group if c["eval_ntp_loss"] is not None])}
        best = min(means, key=means.get) if means else next(iter(by_lr))
        for c in by_lr[best]:
            c["best_lr"] = True


def _cell(name: str, folder: Path, tree: Path) -> dict:
    """A cell's summary record from its collected files (``tree``: where they are un-gzipped)."""
    from magdi_dist.study.ablation import cell_row

    run = read_json(folder, f"cells/{name}/{RUN_RECORD}")
    tags, metrics = run["tags"], run["metrics"]
    cell_dir = tree / "cells" / name
    for rel in CELL_FILES:
        (cell_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (cell_dir / rel).write_text(read_text(folder, f"cells/{name}/{rel}"), encoding="utf-8")
    row = cell_row(tags.get("magdi.variant", "default"), cell_dir, metrics.get("wall_time_s"))
    config = yaml.safe_load((cell_dir / "resolved_config.yaml").read_text())
    records = [json.loads(line) for line in (cell_dir / "metrics.jsonl").read_text().splitlines()
               if line.startswith("{")]
    steps = [r for r in records if "loss" in r and "eval_loss" not in r]  # as study.ablation reads them
    if row["accuracy"] is None:
        raise ResultsError(f"{folder}/cells/{name}: no evaluation summary")
    # Tokens of positive-chain rows per second (the same work for every variant): from the steps when
    # they count them (study.ablation), else the cell's own metric when its run logged one, else None.
    positive = row.get("positive_tokens_per_s")
    if positive is None:
        positive = metrics.get("positive_tokens_per_s")
    return {"cell": name, "size": tags.get("magdi.size", name), "variant": tags.get("magdi.variant", "default"),
            "status": "finished", "lr": _number(tags.get("magdi.lr")), "best_lr": False,
            "seed": _number(tags.get("magdi.seed"), int), "run_id": run["run_id"], "params": metrics.get("param_count"),
            "flops": metrics.get("train_flops"), "eval_ntp_loss": row["eval_ntp_loss"], "accuracy": row["accuracy"],
            "accuracy_ci": list(row["ci"]), "wall_time_s": metrics.get("wall_time_s"),
            "export_dir": str(cell_dir / "export"), "metrics": metrics, "row": row, "config": config,
            "epoch": steps[-1].get("epoch") if steps else None, "positive_tokens_per_s": positive}


@contextlib.contextmanager
def opened(folder: Path) -> Iterator[Collected]:
    """The collected folder ``folder`` read back, for as long as the ``with`` block runs."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ResultsError(f"{folder}: no collected results (run `magdi-dist results collect`)")
    summary = read_json(folder, SUMMARY) if has(folder, SUMMARY) else None
    study = read_json(folder, STUDY_CONFIG) if has(folder, STUDY_CONFIG) else _study_yaml(folder)
    provenance = read_json(folder, PROVENANCE) if has(folder, PROVENANCE) else {}
    c = Collected(folder.name, folder, summary, study, provenance)
    names = sorted(p.name for p in (folder / "cells").iterdir() if p.is_dir()) if (folder / "cells").is_dir() else []
    with tempfile.TemporaryDirectory(prefix=f"magdi-results-{folder.name}-") as tmp:
        if names:
            cells = {n: _cell(n, folder, Path(tmp)) for n in names}
            order = [n for n in (c.planned or []) if n in cells]
            c.cells = [cells[n] for n in order + sorted(set(cells) - set(order))]
            _mark_best_lr(c.cells)
            c.from_cells = True
        elif summary is not None:
            c.cells = [dict(x) for x in summary["cells"] if x.get("status") != "failed"]
        yield c
