"""Example rows -> the training batch of docs/CONTRACTS.md ("Training batch").

Rows 0..B-1 of ``input_ids`` are the positive chains and rows B..2B-1 the negatives of the same pairs,
so one LM pass serves both. A pair without a negative gets a one-token placeholder row (the pad token,
attended, so no attention row is fully masked) and pair_mask 0: shapes stay [2B, T] and the margin
term skips it. Graph b of ``graph`` is built from row b's own graph fields, so alignment between an
example and its question's graph holds by construction; ``pos_node``/``neg_node`` are shifted by the
graph's node offset (``Batch.ptr``) to index the batched node matrix.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from magdi_dist.data.encode import IGNORE_INDEX
from magdi_dist.mag.schema import Label


def row_graph(row: dict, x: torch.Tensor | None = None) -> Data:
    """Row b's own graph; ``x``: its node features when the caller already converted them."""
    n = len(row["node_labels"])
    if x is None:
        x = _features(row, n)
    # np.array (a copy, whatever the row holds: list or array) then from_numpy is ~3x faster than
    # torch.tensor on Python lists, and the batch never aliases a row's own array.
    edges = torch.from_numpy(np.array(row["edge_index"], dtype=np.int64)).view(2, -1)
    return Data(x=x, edge_index=edges, y=torch.from_numpy(np.array(row["node_labels"], dtype=np.int64)),
                num_nodes=n, mag_id=row["mag_id"])


def _features(row: dict, n: int) -> torch.Tensor:
    # N*H Python floats per row: torch.tensor on them was half of collate's time (benchmarks/).
    return torch.from_numpy(np.array(row["node_features"], dtype=np.float32).reshape(n, row["feature_dim"]))


def _pad(seqs: Sequence[Sequence[int]], value: int, width: int) -> torch.Tensor:
    out = np.full((len(seqs), width), value, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return torch.from_numpy(out)


def _mask(lengths: Sequence[int], width: int) -> torch.Tensor:
    """[len(lengths), width] long: 1 on the first lengths[i] positions of row i (right padding)."""
    return (torch.arange(width) < torch.tensor(lengths, dtype=torch.long).unsqueeze(1)).long()


def collate(rows: Sequence[dict], pad_id: int, *, live_extra_nodes: int = 0,
            live_node_max_tokens: int | None = None, seed: int = 0) -> dict:
    """The batch dict for ``MAGDiStudent.forward``.

    ``live_extra_nodes`` = K > 0 (live graph features; rows built with RowConfig.node_max_tokens > 0)
    adds ``extra_input_ids``/``extra_attention_mask`` [M, T'] and ``extra_node`` [M]: up to K nodes per
    graph that are neither missing nor the row's own pos/neg node, sampled by a RNG seeded from
    (seed, mag_id, pair_index) so a row always gets the same nodes for a given seed.
    """
    B = len(rows)
    pos = [r["pos_input_ids"] for r in rows]
    neg = [r["neg_input_ids"] if r["has_negative"] else [pad_id] for r in rows]
    width = max(len(s) for s in pos + neg)
    input_ids = _pad(pos + neg, pad_id, width)
    attention_mask = _mask([len(s) for s in pos + neg], width)
    labels = torch.full((2 * B, width), IGNORE_INDEX, dtype=torch.long)
    labels[:B] = _pad([r["pos_labels"] for r in rows], IGNORE_INDEX, width)

    # Rows of one question share their graph lists (data/rows.py): convert each feature matrix once.
    feats: dict[tuple[int, int], torch.Tensor] = {}
    graphs = []
    for r in rows:
        key = (id(r["node_features"]), len(r["node_labels"]))
        if key not in feats:
            feats[key] = _features(r, key[1])
        graphs.append(row_graph(r, feats[key]))
    graph = Batch.from_data_list(graphs)
    offsets = graph.ptr[:-1]
    pos_node = torch.tensor([r["pos_node"] for r in rows], dtype=torch.long) + offsets
    neg_local = torch.tensor([r["neg_node"] if r["has_negative"] else -1 for r in rows], dtype=torch.long)
    neg_node = torch.where(neg_local >= 0, neg_local + offsets, torch.full_like(neg_local, -1))
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "pair_mask": torch.tensor([float(r["has_negative"]) for r in rows]),
        "graph": graph,
        "pos_node": pos_node,
        "neg_node": neg_node,
        "mag_ids": [r["mag_id"] for r in rows],
    }
    if live_extra_nodes > 0:
        batch.update(_extra_nodes(rows, offsets.tolist(), pad_id, live_extra_nodes, live_node_max_tokens, seed))
    return batch


def _extra_nodes(rows, offsets, pad_id, k, max_tokens, seed) -> dict:
    seqs, nodes = [], []
    for row, offset in zip(rows, offsets, strict=True):
        if "node_input_ids" not in row:
            raise ValueError("live_extra_nodes needs rows built with RowConfig.node_max_tokens > 0")
        own = {row["pos_node"], row["neg_node"]}
        eligible = [i for i, label in enumerate(row["node_labels"])
                    if label != Label.MISSING and i not in own and row["node_input_ids"][i]]
        rng = random.Random(f"{seed}:{row['mag_id']}:{row['pair_index']}")
        for i in sorted(rng.sample(eligible, min(k, len(eligible)))):
            seqs.append(row["node_input_ids"][i][:max_tokens] if max_tokens else row["node_input_ids"][i])
            nodes.append(offset + i)
    width = max((len(s) for s in seqs), default=1)
    return {
        "extra_input_ids": _pad(seqs, pad_id, width),
        "extra_attention_mask": _mask([len(s) for s in seqs], width),
        "extra_node": torch.tensor(nodes, dtype=torch.long),
    }


def batch_to(batch: dict, device: torch.device | str) -> dict:
    """The batch with every tensor (and the PyG graph) on ``device``; lists stay as they are."""
    return {k: v.to(device) if isinstance(v, torch.Tensor | Batch) else v for k, v in batch.items()}
