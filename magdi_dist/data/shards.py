"""The read side of the shard format: the only way rows reach the training loop.

``load_train_data(manifest)`` is what every rank calls: the manifest's rows split into training and
held-out rows by the split the manifest records (``magdi_dist.mag.split``), and the tokenizer the
rows were made with. ``ShardDataset(manifest_dir)`` is the sequence of example rows, in manifest order
(inputs sorted, then shard, then provenance inside a shard). The write side (Parquet schema, atomic
writes, the manifest builder) lives in ``magdi_dist.preprocess``.

Integrity: a shard is read only from ``<manifest folder>/shards/`` (``shard_path``: a manifest or unit
record naming ``../x.parquet`` or an absolute path is refused, never opened), and its bytes are read
once, hashed against the sha256 the writer recorded, and parsed from that same buffer, so what is
checked is what is trained on. Every rank does this for what it reads; ``verify_manifest`` (``magdi-dist
preprocess --verify``) does it without parsing. A failure is a ``ShardIntegrityError`` naming the
manifest (or unit record), the field and the shard: input to fix, exit code 2.

A sequence of rows (``len``, ``[i]`` -> row dict, ``lengths`` for the sampler). Rows are kept as one
Arrow table (columnar, no per-row Python objects) and turned into a dict only when indexed.

Rank partition: ``partition(rank, world_size)`` gives rank r the rows r, r+W, r+2W, ... truncated to
the same length on every rank, so ranks see disjoint rows and take the same number of steps (a rank
with one batch more would hang the others in a collective). Training samplers that already split by
rank use the full dataset instead; either way the split is a pure function of (manifest, rank, W),
and the sampler's position in it is what a checkpoint stores.
"""

from __future__ import annotations

import hashlib
import json
import os
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
# The manifest folder's subfolder that holds every shard (the write side names its files there).
SHARDS = "shards"
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


# A manifest is derived from the unit records on every preprocessing run (preprocess/manifest.py).
REBUILD = "; re-run `magdi-dist preprocess` to rebuild the manifest from its unit records"


class ShardIntegrityError(ValueError):
    """A shard named outside the shards folder, or one whose bytes are not those recorded when it was
    written (hash, rows): input the user must fix (the CLI's exit code 2), never trained on."""


def shard_path(folder: str | Path, rel: str, *, where: str, fix: str = "") -> Path:
    """``folder/rel`` for a shard entry ``rel`` of the form ``shards/<file name>``, once it is known to
    stay inside ``folder/shards`` (links followed); else ``ShardIntegrityError`` naming ``where`` (the
    manifest or unit record and its field). The form is checked on the text before anything is opened,
    so it holds for an object-store prefix as well as a folder: this folder is that prefix's mirror
    (launch/stage.py), and ``shards/<name>`` cannot leave either. ``fix``: what the user should do."""
    parts = str(rel).split("/")
    inside = Path(folder) / SHARDS
    if len(parts) != 2 or parts[0] != SHARDS or parts[1] in ("", ".", "..") or "\\" in parts[1]:
        raise ShardIntegrityError(f"{where}: not a file inside the shards folder {inside} (expected "
                                  f"{SHARDS}/<file name>); refusing to read it{fix}")
    path = inside / parts[1]
    real, base = Path(os.path.realpath(path)), Path(os.path.realpath(inside))
    if not real.is_relative_to(base):  # a link out of the folder: the same refusal
        raise ShardIntegrityError(f"{where}: {path} resolves to {real}, outside the shards folder {base}; "
                                  f"refusing to read it{fix}")
    return path


def _check_hash(digest: str, shard: dict, path: Path, where: str) -> None:
    if digest != shard.get("sha256"):
        raise ShardIntegrityError(
            f"{where}: shard {path} has sha256 {digest}, but {shard.get('sha256')} was recorded when it was "
            f"written: its bytes changed since. Delete it and re-run `magdi-dist preprocess` to rebuild it")


def read_shard(root: Path, shard: dict, *, where: str, verify: bool = True) -> pa.Table:
    """One manifest entry's rows. The file is read into memory once: hashed (``verify``) and parsed
    from the same bytes, so no change between the check and the parse goes unseen."""
    path = shard_path(root, shard["file"], where=f"{where}.file = {shard['file']!r}", fix=REBUILD)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}: shard {path} is missing; re-run `magdi-dist preprocess` to "
                                "rebuild it") from None
    if verify:
        _check_hash(hashlib.sha256(data).hexdigest(), shard, path, where)
    table = pq.read_table(pa.BufferReader(data))
    if table.num_rows != shard["rows"]:
        raise ShardIntegrityError(f"{where}: shard {path} holds {table.num_rows} rows, the manifest says "
                                  f"{shard['rows']}")
    return table


class ShardDataset:
    def __init__(self, manifest: str | Path, *, verify: bool = True) -> None:
        """``verify``: hash every shard against the manifest (paths are always checked)."""
        self.manifest_file = manifest_path(manifest)
        self.manifest = load_manifest(self.manifest_file)
        root = self.manifest_file.parent
        tables = [read_shard(root, shard, where=f"{self.manifest_file}: shards[{i}]", verify=verify)
                  for i, shard in enumerate(self.manifest["shards"])]
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
    """Problems found by checking every shard's path and re-hashing its file against the manifest
    (empty list: all good), one message per shard, each naming the manifest, the field and the file."""
    file = manifest_path(path)
    manifest = load_manifest(file)
    problems = []
    for i, shard in enumerate(manifest["shards"]):
        where = f"{file}: shards[{i}]"
        try:
            shard_file = shard_path(file.parent, shard["file"], where=f"{where}.file = {shard['file']!r}",
                                    fix=REBUILD)
            if not shard_file.is_file():
                raise FileNotFoundError(f"{where}: shard {shard_file} is missing")
            _check_hash(sha256_file(shard_file), shard, shard_file, where)
        except (ShardIntegrityError, FileNotFoundError) as err:
            problems.append(str(err))
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
    manifest order within each split; the split itself is the manifest's, never recomputed here. Every
    shard is checked against the manifest as it is read (``read_shard``): every rank verifies what it
    trains on."""
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
