"""Preprocessing settings, split into what shapes a shard's bytes and what only shapes the run.

``content`` fields go into the fingerprint (change one and every shard is rebuilt); ``run`` fields
(how many actors, how many rows per actor call, where Ray runs) never do, so scaling the job up or
down reuses the shards already written.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Bump when the row-building logic changes in a way the other fingerprints cannot see.
PIPELINE_VERSION = 1


class PreprocessConfig(BaseModel):
    """The ``preprocess`` section of the run config (``MAGDiConfig.preprocess``): how teacher files
    become Parquet shards. Reader format and task come from ``data``; the tokenizer and the frozen
    base student from ``data.tokenizer`` and ``model``."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)

    inputs: list[str] = Field(default_factory=list)
    """Teacher transcript files or glob patterns, in any supported format; empty: ``data.paths``, or
    the synthetic MAGs of ``data.synthetic`` written to a file first."""
    out_dir: str | None = None
    """Shards, rejects and ``manifest.json``; None: ``<train.output_dir>/shards``."""
    strict: bool = False
    """Fail on the first bad record instead of writing it, with its reason, to the rejects file."""

    # --- content: part of the fingerprint ---
    records_per_shard: int = Field(1024, ge=1)
    """MAGs per shard: a big file becomes a fixed split of shards (files are the unit of work)."""
    feature_batch_size: int = Field(32, ge=1)
    """Node texts per forward pass of the frozen student. Batches are cut inside one shard, in a
    fixed order, so which texts share a padded batch never depends on scheduling."""
    torch_threads: int = Field(1, ge=1)
    """Threads per feature actor. Kept in the fingerprint: a CPU matmul's summation order can follow
    its thread count, and the shard hashes promise bit-equal features."""
    row_group_rows: int = Field(256, ge=1)
    """Parquet row-group size (rows)."""

    # --- run: not part of the fingerprint ---
    concurrency: int = Field(1, ge=1)
    """Feature actors in the pool."""
    batch_size: int = Field(1, ge=1)
    """Shards per actor call (Ray Data batch)."""
    actor_num_cpus: float = Field(1.0, gt=0)
    """CPUs Ray reserves per feature actor."""
    num_gpus: float | None = None
    """GPUs per feature actor; None: 1 when the cluster has GPUs, else 0."""


CONTENT_FIELDS = ("format", "task", "records_per_shard", "feature_batch_size", "torch_threads", "row_group_rows")


class PreprocessSettings(PreprocessConfig):
    """A resolved run: the section plus the concrete inputs, output directory and reader options."""

    inputs: list[str] = Field(min_length=1)
    out_dir: str
    format: str | None = None
    """Force a reader format; None detects it per file."""
    task: str | None = None
    """Force a task family; None lets the reader infer it."""

    def content_fields(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in CONTENT_FIELDS}


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files named by ``patterns`` (paths or globs), sorted and de-duplicated.

    Sorting makes the manifest's input order, and so its bytes, independent of the order the user
    typed the patterns in or the filesystem listed a directory.
    """
    found: set[Path] = set()
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = [Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file()]
            if not matches:
                raise FileNotFoundError(f"no input file matches {pattern!r}")
            found.update(matches)
        else:
            path = Path(pattern)
            if not path.is_file():
                raise FileNotFoundError(f"no such input file: {pattern}")
            found.add(path)
    return sorted(found, key=lambda p: str(p))
