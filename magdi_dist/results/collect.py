"""``magdi-dist results collect SRC --name NAME``: the small raw files of a study's or the demo's run
folder into ``docs/results/NAME/`` (the layout is ``results.files``), so that every table generated
from them can be re-derived from the repository.

Only cells whose latest MLflow run FINISHED are collected (a cell still training, or failed, is
listed and left for a later collection). Re-collecting adds the cells that finished since and
replaces the ones collected before with their current files; cells collected earlier but no longer
in the run folder are kept (a study that spans sessions may be resumed in a fresh folder), unless
``replace`` drops the old collection first. The whole
copy is built in memory first: a missing file, a refused file or a copy over the size budget writes
nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from magdi_dist.results import provenance as prov
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
    check_cell_name,
    encode,
    posix,
    relative_paths,
    stored_name,
    weight_like,
)

MAX_MB = 6.0  # "a few MB at most" per collected study (issue 24): 30 cells of the demo's budget fit


def _text(path: Path, src: Path) -> bytes:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ResultsError(f"{path}: not a text file (only text files are collected)") from None
    return relative_paths(text, src).encode("utf-8")


def _json(value: Any, src: Path) -> bytes:
    return relative_paths(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n", src).encode("utf-8")


def _top_files(src: Path) -> dict[str, Path]:
    files = {p.name: p for p in sorted(src.glob("*.yaml"))}  # the study/train YAMLs the demo writes there
    for name in (SUMMARY, FIT):
        if (src / name).is_file():
            files[name] = src / name
    manifest = src / "shards" / MANIFEST  # where a study's shared shard folder is (preprocess.out_dir)
    if manifest.is_file():
        files[MANIFEST] = manifest
    return files


def _extras(paths: list[Path], src: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for path in paths:
        why = weight_like(path)
        if why:
            raise ResultsError(f"{path}: refused, {why}")
        if not path.is_file():
            raise ResultsError(f"{path}: --extra names no file")
        rel = f"{EXTRA_DIR}/{check_cell_name(path.name)}"
        if rel in out:
            raise ResultsError(f"{path}: two --extra files are named {path.name}")
        out[rel] = _text(path, src)
    return out


def _existing(dest: Path) -> dict[str, int]:
    """Sizes of the files a collected folder holds now (relative names as stored)."""
    if not dest.is_dir():
        return {}
    return {posix(p.relative_to(dest)): p.stat().st_size for p in dest.rglob("*") if p.is_file()}


def plan(src: Path, name: str, root: Path, *, extras: list[Path] = (), study: str | None = None,
         tracking_uri: str | None = None) -> dict[str, Any]:
    """What a collection would write (``files``: stored name -> bytes) and what it found, in memory."""
    src = Path(src)
    if not src.is_dir():
        raise ResultsError(f"{src}: no such run folder")
    check_cell_name(name)
    extra_files = _extras([Path(p) for p in extras], src)  # refused before anything slower runs
    summary = json.loads((src / SUMMARY).read_text()) if (src / SUMMARY).is_file() else None
    uri = prov.tracking_uri(src, tracking_uri)
    study, runs = prov.cell_runs(uri, study or (summary or {}).get("study"))
    files: dict[str, bytes] = {}
    for rel, path in _top_files(src).items():
        files[stored_name(rel)] = encode(rel, _text(path, src))
    finished = {c: r for c, r in runs.items() if r.info.status == "FINISHED"}
    unfinished = {c: r.info.status for c, r in runs.items() if c not in finished}
    collected_at, machine = prov.now(), prov.machine()
    cells: dict[str, dict] = {}
    for cell, run in sorted(finished.items()):
        folder = src / "cells" / check_cell_name(cell)
        for rel in CELL_FILES:
            path = folder / rel
            if not path.is_file():
                raise ResultsError(f"{path}: missing, but the cell's run {run.info.run_id} FINISHED")
            files[stored_name(f"cells/{cell}/{rel}")] = encode(rel, _text(path, src))
        record = prov.run_record(run)
        files[f"cells/{cell}/{RUN_RECORD}"] = _json(record, src)
        cells[cell] = {"run_id": run.info.run_id, **prov.commit_of(record), "started": record["started"],
                       "ended": record["ended"], "collected_at": collected_at, "machine": machine}
    parents = sorted({r.data.tags.get(prov.MLFLOW_PARENT_RUN_ID) for r in finished.values()} - {None})
    parent = (summary or {}).get("parent_run_id") or (parents[-1] if parents else None)
    config = prov.study_config(uri, parent)
    if config is not None:
        files[STUDY_CONFIG] = _json(config, src)
    files.update(extra_files)
    return {"study": study, "files": files, "cells": cells, "unfinished": unfinished, "collected_at": collected_at,
            "dest": Path(root) / "docs" / "results" / name}


def collect(src: Path, name: str, root: Path, *, extras: list[Path] = (), study: str | None = None,
            tracking_uri: str | None = None, max_mb: float = MAX_MB, replace: bool = False) -> dict[str, Any]:
    """Collect ``src`` into ``root/docs/results/name``; returns what was added, kept and left out.
    ``replace``: what the folder held before is dropped (a re-run of the demo replaces the last one)."""
    p = plan(src, name, root, extras=extras, study=study, tracking_uri=tracking_uri)
    dest: Path = p["dest"]
    old = json.loads((dest / PROVENANCE).read_text()) if (dest / PROVENANCE).is_file() and not replace else {}
    if old.get("study") not in (None, p["study"]):
        raise ResultsError(f"{dest} holds study {old['study']!r}, not {p['study']!r}: collect it under another name")
    cells = {**old.get("cells", {}), **p["cells"]}
    provenance = {"study": p["study"], "collected_at": p["collected_at"], "cells": dict(sorted(cells.items()))}
    files = {**p["files"], PROVENANCE: _json(provenance, Path(src))}
    kept = {} if replace else _existing(dest)
    total = sum({**kept, **{rel: len(data) for rel, data in files.items()}}.values())
    if total > max_mb * 2**20:
        raise ResultsError(f"{dest}: the collection would hold {total / 2**20:.2f} MiB, over the budget of "
                           f"{max_mb:g} MiB (--max-mb); nothing was written")
    if replace and dest.is_dir():
        shutil.rmtree(dest)
    for rel, data in files.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)  # a reader never sees half a file
    return {"dest": dest, "study": p["study"], "added": sorted(set(p["cells"]) - set(old.get("cells", {}))),
            "updated": sorted(set(p["cells"]) & set(old.get("cells", {}))), "unfinished": p["unfinished"],
            "files": len(files), "bytes": total}
