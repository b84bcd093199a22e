"""Per-input completion records and the dataset manifest (the write side; ``data.shards`` reads it).

``units/<key>.json`` is written by the driver once every shard of one input file is in place; it is
the "this input is done" marker that lets a re-run skip the file without parsing it. ``manifest.json``
is derived from those records for the current inputs alone, in sorted input order, with no
timestamps, so the same inputs and settings always give the same bytes (and an unchanged manifest is
not even rewritten). Every path in it is relative to the manifest's own folder when it lies inside
that folder (shards, the synthetic inputs, a trained tokenizer), and as the config gave it otherwise:
the manifest reads the same from every entry point and after the folder moves to another mount.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from magdi_dist.data.shards import (
    MANIFEST,
    SHARD_SCHEMA_VERSION,
    SHARDS,
    load_manifest,
    manifest_path,
    shard_path,
    verify_manifest,
)
from magdi_dist.mag.split import split_summary, training_questions
from magdi_dist.preprocess.shard_io import atomic_write_json

__all__ = ["MANIFEST", "SHARDS", "SHARD_SCHEMA_VERSION", "build_manifest", "load_manifest", "load_unit_record",
           "manifest_path", "relative_to", "unit_record", "unit_record_path", "verify_manifest",
           "write_manifest"]

# The output directory: manifest.json, shards/part-<unit>-<chunk>.parquet, rejects/<unit>.jsonl,
# units/<unit>.json (one completion record per input), tokenizer/ (data.tokenizer=train) and the
# synthetic inputs under inputs/.
# SHARDS is the read side's (data/shards.py), which refuses a shard anywhere else.
REJECTS, UNITS = "rejects", "units"


def shard_name(unit: str, chunk: int) -> str:
    return f"part-{unit}-{chunk:05d}.parquet"


def rejects_name(unit: str) -> str:
    return f"{unit}.jsonl"


def unit_record_path(out_dir: Path, key: str) -> Path:
    return out_dir / UNITS / f"{key}.json"


def relative_to(path: str | Path, folder: str | Path) -> str:
    """``path`` relative to ``folder`` (posix) when it lies inside it, else unchanged."""
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(folder)).as_posix()
    except ValueError:
        return str(path)


def load_unit_record(out_dir: Path, key: str) -> dict | None:
    """The completion record of an input, or None when it is absent or its shards are not all there.

    Size is checked, not the hash: re-hashing every shard on every run would make "nothing to do"
    cost as much I/O as the data; the ranks hash what they read, ``verify_manifest`` on demand. A
    shard name that leaves the shards folder (``../x.parquet``, an absolute path) is refused here,
    before it can reach the manifest (``ShardIntegrityError``).
    """
    path = unit_record_path(out_dir, key)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    fix = f"; delete {path} and re-run `magdi-dist preprocess` to rebuild that input"
    for i, shard in enumerate(record["shards"]):
        file = shard_path(out_dir, f"{SHARDS}/{shard['name']}", where=f"{path}: shards[{i}].name = "
                          f"{shard['name']!r}", fix=fix)
        if not file.is_file() or file.stat().st_size != shard["bytes"]:
            return None
    return record


def unit_record(key: str, name: str, sha256: str, summaries: list[dict]) -> dict:
    """The record of one input from its shard summaries (one per chunk, any order)."""
    summaries = sorted(summaries, key=lambda s: s["chunk"])
    first = summaries[0]
    if [s["chunk"] for s in summaries] != list(range(first["n_chunks"])):
        raise RuntimeError(f"input {name}: got shards {[s['chunk'] for s in summaries]} of {first['n_chunks']}")
    return {
        "unit": key,
        "name": name,
        "sha256": sha256,
        "records_in": first["records_in"],
        "mags": first["n_mags"],
        "rejected": first["n_rejected"],
        "rejects_file": f"{REJECTS}/{rejects_name(key)}" if first["n_rejected"] else None,
        "cleaning": first["cleaning"],  # chains seen, changed, characters removed (the whole input)
        "questions": sorted({q for s in summaries for q in s["questions"]}),
        # split key -> contamination key, for the manifest's training_questions
        "contamination": dict(sorted({q: c for s in summaries
                                      for q, c in zip(s["questions"], s["contamination"], strict=True)}.items())),
        "shards": [{k: s[k] for k in ("name", "rows", "bytes", "sha256")} for s in summaries],
    }


def build_manifest(header: dict[str, Any], inputs: list[tuple[str, dict]], *, out_dir: str | Path,
                   split: dict[str, Any], tokenizer: str) -> dict[str, Any]:
    """``inputs``: (path as given, unit record) in input order. ``split``: eval_fraction and seed
    (``data``'s); the held-out questions are derived here from every input's question keys."""
    entries = []
    for path, record in inputs:
        entry = {"path": relative_to(path, out_dir), **record}
        entry["questions"] = len(record["questions"])  # the keys themselves stay in units/
        del entry["contamination"]
        entries.append(entry)
    shards = [
        {**shard, "file": f"{SHARDS}/{shard['name']}", "input": relative_to(path, out_dir)}
        for path, record in inputs
        for shard in record["shards"]
    ]
    totals = {
        "inputs": len(entries),
        "records_in": sum(e["records_in"] for e in entries),
        "mags": sum(e["mags"] for e in entries),
        "rejected": sum(e["rejected"] for e in entries),
        "shards": len(shards),
        "rows": sum(s["rows"] for s in shards),
        "chains_cleaned": sum(e["cleaning"]["changed"] for e in entries),
        "chars_removed": sum(e["cleaning"]["chars_removed"] for e in entries),
    }
    # Nothing is dropped silently: every record read is a MAG or a reject.
    assert totals["records_in"] == totals["mags"] + totals["rejected"], totals
    keys = [q for _, record in inputs for q in record["questions"]]
    contamination = {q: c for _, record in inputs for q, c in record["contamination"].items()}
    return {"shard_schema_version": SHARD_SCHEMA_VERSION, **header,
            "tokenizer": relative_to(tokenizer, out_dir),
            "split": split_summary(keys, split["eval_fraction"], split["seed"]),
            # What an export copies, so evaluation drops its training questions (mag.split).
            "training_questions": training_questions(contamination, split["eval_fraction"], split["seed"]),
            "inputs": entries, "shards": shards, "totals": totals}


def write_manifest(out_dir: Path, manifest: dict) -> bool:
    """True when the manifest changed (and was rewritten atomically)."""
    return atomic_write_json(out_dir / MANIFEST, manifest)
