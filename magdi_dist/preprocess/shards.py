"""Training reads shards: ``ShardDataset(manifest_dir)`` is the sequence of example rows the training
loop consumes, in manifest order (inputs sorted, then shard, then provenance inside a shard).

The same interface as ``data.MAGRowDataset`` (``len``, ``[i]`` -> row dict, ``lengths``), so the
training sampler cannot tell them apart. Rows are kept as one Arrow table (columnar, no per-row
Python objects) and turned into a dict only when indexed.

Rank partition: ``partition(rank, world_size)`` gives rank r the rows r, r+W, r+2W, ... truncated to
the same length on every rank, so ranks see disjoint rows and take the same number of steps (a rank
with one batch more would hang the others in a collective). Training samplers that already split by
rank use the full dataset instead; either way the split is a pure function of (manifest, rank, W),
and the sampler's position in it is what a checkpoint stores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from magdi_dist.preprocess.manifest import load_manifest, manifest_path
from magdi_dist.preprocess.shard_io import read_shard


class ShardDataset:
    def __init__(self, manifest: str | Path, *, verify: bool = False) -> None:
        self.manifest_file = manifest_path(manifest)
        self.manifest = load_manifest(self.manifest_file)
        if verify:
            from magdi_dist.preprocess.manifest import verify_manifest

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

    def mag_keys(self) -> list[tuple[str, int]]:
        """(source file, record) of every row: the question it belongs to (for by-question splits)."""
        files = self.table["source_file"].to_pylist()
        records = self.table["source_record"].to_pylist()
        return [(files[i], records[i]) for i in self.index.tolist()]

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
        """Padded width each row needs (the longer of its two chains), as ``MAGRowDataset.lengths``."""
        if not len(self):
            return []
        pos = pc.list_value_length(self.table["pos_input_ids"]).to_numpy(zero_copy_only=False)
        neg = pc.list_value_length(self.table["neg_input_ids"]).to_numpy(zero_copy_only=False)
        return np.maximum(pos, np.maximum(neg, 1))[self.index].tolist()
