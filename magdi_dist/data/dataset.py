"""An in-process dataset of example rows over a MAG file (JSONL or any reader format) or MAGs in memory.

The training engineer wraps it with a length-grouped, rank-disjoint sampler: ``lengths[i]`` is the
padded width row i needs (the longer of its two chains).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import Dataset

from magdi_dist.data.rows import FeatureFn, RowConfig, rows_from_mags
from magdi_dist.mag.schema import MAG


def load_mags(path: str | Path, **read_kwargs) -> list[MAG]:
    """The graded MAGs of one teacher file (any format magdi_dist.mag.readers reads; strict by default:
    a bad record raises with its file and record)."""
    from magdi_dist.mag.readers import read_mags

    return list(read_mags([Path(path)], **read_kwargs).mags)


class MAGRowDataset(Dataset):
    """Example rows (plain dicts, docs/CONTRACTS.md) indexed 0..len-1; ``collate`` batches them."""

    def __init__(self, rows: Sequence[dict]):
        self.rows = list(rows)

    @classmethod
    def from_mags(cls, mags: Sequence[MAG], tokenizer, cfg: RowConfig, feature_fn: FeatureFn) -> MAGRowDataset:
        return cls(rows_from_mags(mags, tokenizer, cfg, feature_fn))

    @classmethod
    def from_file(cls, path: str | Path, tokenizer, cfg: RowConfig, feature_fn: FeatureFn,
                  **read_kwargs) -> MAGRowDataset:
        return cls.from_mags(load_mags(path, **read_kwargs), tokenizer, cfg, feature_fn)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]

    @property
    def lengths(self) -> list[int]:
        return [max(len(r["pos_input_ids"]), len(r["neg_input_ids"]) or 1) for r in self.rows]
