"""Per-input completion records and the dataset manifest.

``units/<key>.json`` is written by the driver once every shard of one input file is in place; it is
the "this input is done" marker that lets a re-run skip the file without parsing it. ``manifest.json``
is derived from those records for the current inputs alone, in sorted input order, with no
timestamps, so the same inputs and settings always give the same bytes (and an unchanged manifest is
not even rewritten).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from magdi_dist.preprocess.shard_io import atomic_write_json

SHARD_SCHEMA_VERSION = 1  # the Parquet row layout (docs/CONTRACTS.md "Example row")

# The output directory: manifest.json, shards/part-<unit>-<chunk>.parquet, rejects/<unit>.jsonl,
# units/<unit>.json (one completion record per input), and the synthetic inputs under inputs/.
MANIFEST = "manifest.json"
SHARDS, REJECTS, UNITS = "shards", "rejects", "units"


def shard_name(unit: str, chunk: int) -> str:
    return f"part-{unit}-{chunk:05d}.parquet"


def rejects_name(unit: str) -> str:
    return f"{unit}.jsonl"


def unit_record_path(out_dir: Path, key: str) -> Path:
    return out_dir / UNITS / f"{key}.json"


def load_unit_record(out_dir: Path, key: str) -> dict | None:
    """The completion record of an input, or None when it is absent or its shards are not all there.

    Size is checked, not the hash: re-hashing every shard on every run would make "nothing to do"
    cost as much I/O as the data; ``verify_manifest`` does the full check on demand.
    """
    path = unit_record_path(out_dir, key)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    for shard in record["shards"]:
        file = out_dir / SHARDS / shard["name"]
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
        "shards": [{k: s[k] for k in ("name", "rows", "bytes", "sha256")} for s in summaries],
    }


def build_manifest(header: dict[str, Any], inputs: list[tuple[str, dict]]) -> dict[str, Any]:
    """``inputs``: (path as given, unit record) in input order."""
    entries = [{"path": path, **record} for path, record in inputs]
    shards = [
        {**shard, "file": f"{SHARDS}/{shard['name']}", "input": path}
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
    }
    # Nothing is dropped silently: every record read is a MAG or a reject.
    assert totals["records_in"] == totals["mags"] + totals["rejected"], totals
    return {"shard_schema_version": SHARD_SCHEMA_VERSION, **header, "inputs": entries, "shards": shards,
            "totals": totals}


def write_manifest(out_dir: Path, manifest: dict) -> bool:
    """True when the manifest changed (and was rewritten atomically)."""
    return atomic_write_json(out_dir / MANIFEST, manifest)


def manifest_path(path: str | Path) -> Path:
    """``manifest.json`` itself, or the directory holding it."""
    path = Path(path)
    return path if path.name == MANIFEST else path / MANIFEST


def load_manifest(path: str | Path) -> dict:
    file = manifest_path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no manifest at {file}: run `magdi-dist preprocess` first")
    manifest = json.loads(file.read_text())
    if manifest.get("shard_schema_version") != SHARD_SCHEMA_VERSION:
        raise ValueError(
            f"{file}: shard schema version {manifest.get('shard_schema_version')}, this code reads "
            f"{SHARD_SCHEMA_VERSION}; re-run preprocessing"
        )
    return manifest


def verify_manifest(path: str | Path) -> list[str]:
    """Problems found by re-hashing every shard against the manifest (empty list: all good)."""
    from magdi_dist.preprocess.fingerprint import sha256_file

    file = manifest_path(path)
    manifest = load_manifest(file)
    problems = []
    for shard in manifest["shards"]:
        shard_file = file.parent / shard["file"]
        if not shard_file.is_file():
            problems.append(f"missing shard {shard['file']}")
        elif sha256_file(shard_file) != shard["sha256"]:
            problems.append(f"hash mismatch in {shard['file']}")
    return problems
