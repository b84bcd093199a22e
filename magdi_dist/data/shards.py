"""The read side of the shard format: the only way rows reach the training loop.

``load_train_data(manifest)`` is what every rank calls: the manifest's rows split into training and
held-out rows by the split the manifest records (``magdi_dist.mag.split``), and the tokenizer the
rows were made with. ``ShardDataset(manifest_dir)`` is the sequence of example rows, in manifest order
(inputs sorted, then shard, then provenance inside a shard). The write side (Parquet schema, atomic
writes, the manifest builder) lives in ``magdi_dist.preprocess``.

A sequence of rows (``len``, ``[i]`` -> row dict, ``lengths`` for the sampler). Rows are kept as one
Arrow table (columnar, no per-row Python objects) and turned into a dict only when indexed.

Rank partition: ``partition(rank, world_size)`` gives rank r the rows r, r+W, r+2W, ... truncated to
the same length on every rank, so ranks see disjoint rows and take the same number of steps (a rank
with one batch more would hang the others in a collective). Training samplers that already split by
rank use the full dataset instead; either way the split is a pure function of (manifest, rank, W),
and the sampler's position in it is what a checkpoint stores.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from magdi_dist.config import sha256_file

# The Parquet row layout (docs/CONTRACTS.md "Example row"; written by preprocess/shard_io.py).
# 2: rows carry ``question_key``; the manifest records the split and the tokenizer.
SHARD_SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
# In an export: the manifest's ``training_questions`` (train/export.py writes it, eval/contamination.py
# reads it), named here, below both.
TRAINING_QUESTIONS = "training_questions.json"


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


def read_shard(path: str | Path) -> pa.Table:
    return pq.read_table(path)


class ShardDataset:
    def __init__(self, manifest: str | Path, *, verify: bool = False) -> None:
        self.manifest_file = manifest_path(manifest)
        self.manifest = load_manifest(self.manifest_file)
        if verify:
            problems = verify_manifest(self.manifest_file)
            if problems:
                raise ValueError(f"{self.manifest_file}: {'; '.join(problems)}")
        root = self.manifest_file.parent
        tables = []
        for shard in self.manifest["shards"]:
            table = read_shard(root / shard["file"])
            if table.num_rows != shard["rows"]:
                raise ValueError(f"{shard['file']}: {table.num_rows} rows, manifest says {shard['rows']}")
            tables.append(table)
        self.table = pa.concat_tables(tables) if tables else pa.table({})
        self.index = np.arange(self.table.num_rows, dtype=np.int64)

    @property
    def feature_dim(self) -> int:
        return int(self.manifest["feature_dim"])

    @property
    def fingerprint(self) -> str:
        """What the data is: identical manifests give identical rows (logged with a run)."""
        return self.manifest["fingerprint"]

    def subset(self, positions) -> ShardDataset:
        """A view of the rows at ``positions`` (indices into this dataset), sharing the table."""
        part = object.__new__(ShardDataset)
        part.__dict__.update(self.__dict__)
        part.index = self.index[np.asarray(positions, dtype=np.int64)]
        return part

    def partition(self, rank: int, world_size: int) -> ShardDataset:
        """Rank ``rank``'s disjoint, equally long, deterministic part (a view; no copy of the table)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        per_rank = len(self) // world_size
        return self.subset(np.arange(rank, per_rank * world_size, world_size))

    def question_keys(self) -> list[str]:
        """The question (``magdi_dist.mag.split.question_key``) of every row."""
        keys = self.table["question_key"].to_pylist()
        return [keys[i] for i in self.index.tolist()]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} of {len(self)}")
        return self.table.slice(int(self.index[i]), 1).to_pylist()[0]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    @property
    def lengths(self) -> list[int]:
        """Padded width each row needs (the longer of its two chains)."""
        if not len(self):
            return []
        pos = pc.list_value_length(self.table["pos_input_ids"]).to_numpy(zero_copy_only=False)
        neg = pc.list_value_length(self.table["neg_input_ids"]).to_numpy(zero_copy_only=False)
        return np.maximum(pos, np.maximum(neg, 1))[self.index].tolist()


def verify_manifest(path: str | Path) -> list[str]:
    """Problems found by re-hashing every shard against the manifest (empty list: all good)."""
    file = manifest_path(path)
    manifest = load_manifest(file)
    problems = []
    for shard in manifest["shards"]:
        shard_file = file.parent / shard["file"]
        if not shard_file.is_file():
            problems.append(f"missing shard {shard['file']}")
            continue
        if sha256_file(shard_file) != shard["sha256"]:
            problems.append(f"hash mismatch in {shard['file']}")
    return problems


@dataclass
class TrainData:
    """What the training loop consumes: training and held-out rows, and their tokenizer."""

    train: Sequence[dict]
    eval: Sequence[dict]
    tokenizer: str
    """Directory or hub id of the tokenizer the rows were made with."""
    fingerprint: str = ""
    """The manifest's fingerprint (what the data is), logged with a run."""
    split: dict | None = None
    """The manifest's split entry (rule, fraction, seed, counts, held-out question keys)."""
    feature_dim: int | None = None
    """Width of the rows' frozen node features."""
    training_questions: dict | None = None
    """The manifest's ``training_questions`` (rule, count, contamination keys of every question not held
    out): what the export records so evaluation never asks a student what it was trained on."""

    def lengths(self) -> list[int]:
        """Padded width each training row needs (the longer chain of the pair)."""
        lengths = getattr(self.train, "lengths", None)
        if lengths is not None:
            return list(lengths)
        return [max(len(r["pos_input_ids"]), len(r["neg_input_ids"]) or 1) for r in self.train]


def load_train_data(manifest: str | Path) -> TrainData:
    """The manifest's rows split by its recorded held-out questions, with its tokenizer. Rows keep
    manifest order within each split; the split itself is the manifest's, never recomputed here."""
    rows = ShardDataset(manifest)
    split = rows.manifest["split"]
    held = set(split["heldout"])
    keys = rows.question_keys()
    train = rows.subset([i for i, k in enumerate(keys) if k not in held])
    # Held out: one row per distinct correct chain (a chain is the positive of every pair it is in),
    # so each chain counts once in the held-out NTP loss.
    chains = rows.table.select(["mag_id", "pos_node"]).to_pylist()
    seen: set[tuple] = set()
    held_idx = []
    for i, k in enumerate(keys):
        chain = (chains[int(rows.index[i])]["mag_id"], chains[int(rows.index[i])]["pos_node"])
        if k in held and chain not in seen:
            seen.add(chain)
            held_idx.append(i)
    held_rows = rows.subset(held_idx)
    tokenizer = rows.manifest["tokenizer"]
    local = rows.manifest_file.parent / tokenizer
    return TrainData(train, held_rows, tokenizer=str(local) if local.is_dir() else tokenizer,
                     fingerprint=rows.fingerprint, split=split, feature_dim=rows.feature_dim,
                     training_questions=rows.manifest.get("training_questions"))
