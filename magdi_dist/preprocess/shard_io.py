"""Deterministic, atomic shard files.

Same rows in -> same bytes out: the Parquet schema is fixed (never inferred from a batch, which
would turn an empty list column into ``list<null>`` in one shard and ``list<int32>`` in the next),
rows are sorted by provenance, and every writer option that could drift with a default is pinned.
Files are written under a temporary name in the target directory and renamed into place, so a
reader (or a re-run after a crash) only ever sees complete shards.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from magdi_dist.config import sha256_file

# One Parquet row == one training example ("Example row" in docs/CONTRACTS.md).
ROW_SCHEMA = pa.schema(
    [
        ("mag_id", pa.string()),
        ("question_key", pa.string()),
        ("source_file", pa.string()),
        ("source_record", pa.int64()),
        ("pair_index", pa.int64()),
        ("pos_input_ids", pa.list_(pa.int32())),
        ("pos_labels", pa.list_(pa.int32())),
        ("neg_input_ids", pa.list_(pa.int32())),
        ("has_negative", pa.bool_()),
        ("node_features", pa.list_(pa.float32())),
        ("feature_dim", pa.int64()),
        ("edge_index", pa.list_(pa.int32())),
        ("node_labels", pa.list_(pa.int32())),
        ("pos_node", pa.int64()),
        ("neg_node", pa.int64()),
    ]
)
ROW_COLUMNS = tuple(ROW_SCHEMA.names)
# Optional column (RowConfig.node_max_tokens > 0): every node's token ids, for live node features.
NODE_IDS = pa.field("node_input_ids", pa.list_(pa.list_(pa.int32())))


def row_schema(node_ids: bool = False) -> pa.Schema:
    return ROW_SCHEMA.append(NODE_IDS) if node_ids else ROW_SCHEMA

# Pinned writer options. ``created_by`` still carries the pyarrow version, which is why that
# version is part of the pipeline fingerprint.
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": ["mag_id", "source_file"],
    "write_statistics": True,
    "data_page_version": "1.0",
    "version": "2.6",
    "write_page_index": False,
    "write_page_checksum": False,
    "store_schema": True,
}


def _tmp_name(path: Path) -> Path:
    # Same directory as the target: os.replace is only atomic within one filesystem.
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def remove_stale_tmp(directory: Path) -> int:
    """Delete temporary files a killed writer left behind (never read: only renamed files count).
    Only safe while no other run writes to ``directory``; one run per output directory at a time."""
    removed = 0
    for tmp in directory.rglob(".*.tmp-*") if directory.is_dir() else []:
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def _fsync_replace(tmp: Path, path: Path) -> None:
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        tmp.write_bytes(data)
        _fsync_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def canonical_json(obj: Any) -> bytes:
    """Stable JSON bytes (sorted keys, fixed indentation, trailing newline)."""
    return (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def atomic_write_json(path: str | Path, obj: Any) -> bool:
    """Write ``obj`` unless the file already holds exactly these bytes; True when it wrote."""
    path = Path(path)
    data = canonical_json(obj)
    if path.is_file() and path.read_bytes() == data:
        return False  # leave mtime alone: "unchanged" means untouched
    atomic_write_bytes(path, data)
    return True


def atomic_write_jsonl(path: str | Path, records: Sequence[dict]) -> None:
    lines = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records)
    atomic_write_bytes(path, lines.encode())


def sort_rows(rows: list[dict]) -> list[dict]:
    """Provenance order, so the worker that built a shard and the order rows arrived in never show."""
    return sorted(rows, key=lambda r: (r["source_record"], r["pair_index"]))


def rows_to_table(rows: Sequence[dict], schema: pa.Schema = ROW_SCHEMA) -> pa.Table:
    columns = {name: [row[name] for row in rows] for name in schema.names}
    return pa.Table.from_pydict(columns, schema=schema)


def write_shard(path: str | Path, rows: Sequence[dict], row_group_rows: int, node_ids: bool = False) -> dict:
    """Write rows (already sorted) as one Parquet shard, atomically; returns its summary."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    table = rows_to_table(rows, row_schema(node_ids))
    try:
        pq.write_table(table, tmp, row_group_size=max(1, row_group_rows), **PARQUET_OPTIONS)
        # Hashed before the rename: the recorded sha256 is of the bytes this writer wrote, which every
        # reader checks (data/shards.py), not of whatever the path holds afterwards.
        summary = shard_summary(tmp, name=path.name)
        _fsync_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return summary


def shard_summary(path: str | Path, name: str | None = None) -> dict:
    """Name (``name``, else the file's), row count, byte size and sha256 of a complete shard file."""
    path = Path(path)
    return {
        "name": name or path.name,
        "rows": pq.ParquetFile(path).metadata.num_rows,
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }
