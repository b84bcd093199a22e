"""The step's data and model code as it was before the benchmark-driven optimisations (commit f1c3a39),
kept verbatim so each "before" figure is measured side by side with "after" in the same run instead
of across runs on a noisy machine. Used only by the benchmarks; never imported by the library.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch_geometric.data import Batch, Data

from magdi_dist.data.collate import _extra_nodes
from magdi_dist.data.encode import IGNORE_INDEX
from magdi_dist.model.encoder import GraphEncoder
from magdi_dist.model.forward import lm_forward
from magdi_dist.model.losses import margin_ranking_loss, node_loss, ntp_loss, pool_hidden
from magdi_dist.model.student import MAGDiStudent


def _row_graph(row: dict) -> Data:
    n = len(row["node_labels"])
    dim = row["feature_dim"]
    edges = torch.tensor(row["edge_index"], dtype=torch.long).view(2, -1)
    x = torch.tensor(row["node_features"], dtype=torch.float32).view(n, dim)
    return Data(x=x, edge_index=edges, y=torch.tensor(row["node_labels"], dtype=torch.long),
                num_nodes=n, mag_id=row["mag_id"])


def _pad(seqs: Sequence[Sequence[int]], value: int, width: int) -> torch.Tensor:
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out


def legacy_collate(rows: Sequence[dict], pad_id: int, *, live_extra_nodes: int = 0,
                   live_node_max_tokens: int | None = None, seed: int = 0) -> dict:
    B = len(rows)
    pos = [r["pos_input_ids"] for r in rows]
    neg = [r["neg_input_ids"] if r["has_negative"] else [pad_id] for r in rows]
    width = max(len(s) for s in pos + neg)
    input_ids = _pad(pos + neg, pad_id, width)
    attention_mask = _pad([[1] * len(s) for s in pos + neg], 0, width)
    labels = torch.full((2 * B, width), IGNORE_INDEX, dtype=torch.long)
    labels[:B] = _pad([r["pos_labels"] for r in rows], IGNORE_INDEX, width)

    graph = Batch.from_data_list([_row_graph(r) for r in rows])
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


class LegacyEncoder(GraphEncoder):
    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = self.dropout(torch.relu(conv(x, edge_index)))
        return self.head(x)


class LegacyStudent(MAGDiStudent):
    """Same parameters and initialisation as MAGDiStudent; the old forward (every row through the LM,
    placeholder negatives included)."""

    def __init__(self, cfg, lm=None, tokenizer=None):
        super().__init__(cfg, lm=lm, tokenizer=tokenizer)
        self.encoder.__class__ = LegacyEncoder  # same modules and weights, old forward

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        B = input_ids.shape[0] // 2
        pair_mask = batch["pair_mask"].to(input_ids.device)

        hidden, pos_logits = lm_forward(self.lm, input_ids, attention_mask, head_rows=B)
        ntp, n_targets = ntp_loss(pos_logits, labels[:B])
        pooled = pool_hidden(hidden, attention_mask, cfg.pooling)
        scores = self.score(pooled)
        margin = margin_ranking_loss(scores[:B], scores[B:], pair_mask, cfg.margin)

        graph = batch["graph"]
        x = graph.x.to(self.encoder.head.weight.dtype)
        if cfg.graph_features == "live":
            x = self._legacy_live_features(x, pooled, batch, B)
        node_logits = self.encoder(x, graph.edge_index)
        nodes = node_loss(node_logits, graph.y)

        loss = cfg.ntp_weight * ntp + cfg.margin_weight * margin + cfg.node_weight * nodes
        row_tokens = attention_mask.sum(dim=1)
        num_tokens = row_tokens[:B].sum() + (row_tokens[B:] * (pair_mask > 0)).sum()
        if "extra_attention_mask" in batch and cfg.graph_features == "live":
            num_tokens = num_tokens + batch["extra_attention_mask"].sum()
        return {
            "loss": loss,
            "ntp_loss": ntp.detach(),
            "margin_loss": margin.detach(),
            "node_loss": nodes.detach(),
            "num_tokens": num_tokens.detach(),
            "num_target_tokens": n_targets.detach(),
            "num_pairs_with_negative": (pair_mask > 0).sum().detach(),
            "num_nodes": torch.tensor(graph.num_nodes, device=input_ids.device),
        }

    def _legacy_live_features(self, x, pooled, batch, B):
        pos_node, neg_node = batch["pos_node"].to(x.device), batch["neg_node"].to(x.device)
        has_neg = neg_node >= 0
        index = [pos_node, neg_node[has_neg]]
        values = [pooled[:B], pooled[B:][has_neg]]
        if self.cfg.live_extra_nodes > 0 and batch.get("extra_node") is not None and len(batch["extra_node"]):
            extra_hidden, _ = lm_forward(self.lm, batch["extra_input_ids"], batch["extra_attention_mask"], None)
            index.append(batch["extra_node"].to(x.device))
            values.append(pool_hidden(extra_hidden, batch["extra_attention_mask"], self.cfg.pooling))
        return x.index_put((torch.cat(index),), torch.cat(values).to(x.dtype))
