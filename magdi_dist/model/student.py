"""The MAGDi student: causal LM + graph encoder + scorer, trained on NTP + node classification + margin.

Graph features (``graph_features``):

* ``frozen`` (the reference): node features are the base student's pooled embeddings, computed once
  before training (data/features.py) and carried in the batch. The node loss trains the GCN only.
* ``live``: the node loss also trains the LM. Row b of the batch is the formatted text of node
  ``pos_node[b]`` of graph b and row B+b that of ``neg_node[b]``, so the pooled embeddings this step
  computes anyway *are* those nodes' current features: they replace the frozen rows of ``x``
  (out-of-place ``index_put``), at zero extra LM compute. The other nodes keep frozen features unless
  ``live_extra_nodes`` = K > 0: then up to K more nodes per graph (picked by collate) run through the
  decoder, truncated to ``live_node_max_tokens`` tokens, without the output head. The extra cost per
  step is bounded by B * K * live_node_max_tokens tokens of decoder forward + backward.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from magdi_dist.config import StudentConfig
from magdi_dist.model.build import load_lm, unwrap_lm
from magdi_dist.model.encoder import GraphEncoder
from magdi_dist.model.forward import lm_forward
from magdi_dist.model.losses import margin_ranking_loss, node_loss, ntp_loss, pool_hidden
from magdi_dist.model.zero_init import is_zero3, partition_module

# Batch key of the LM row plan (``lm_rows``), set on the host before the batch moves to its device.
LM_ROWS = "lm_rows"


# One LM pass: (the batch rows it runs, or None for all; their padded width, or None for the batch's;
# how many of its first rows get output-head logits, or None for none).
LMPass = tuple[torch.Tensor | None, int | None, int | None]


def resolve_lm_passes(cfg: StudentConfig, ds_config: dict | None, world_size: int) -> StudentConfig:
    """``lm_passes: auto`` made concrete. Two passes skip the padding of the shorter side (positives are
    often shorter than the negatives they are padded to), but under ZeRO-3 on several ranks each pass
    gathers every parameter from the other ranks, forward and backward: there one padded pass is the
    cheaper trade. Elsewhere (ZeRO 0-2, or a single rank, where the fetch is a local copy) two passes
    are: on the real student at one rank under ZeRO-3, MAGDi/SFT time per token 1.72 against 1.84
    (docs/benchmarks.md)."""
    if cfg.lm_passes != "auto":
        return cfg
    one = is_zero3(ds_config) and world_size > 1
    return cfg.model_copy(update={"lm_passes": "one" if one else "split"})


def _width(attention_mask: np.ndarray, rows: np.ndarray) -> int:
    return int(attention_mask[rows].sum(axis=1).max())  # right padding: the longest of these rows


def lm_rows(cfg: StudentConfig, batch: dict) -> list[LMPass]:
    """The LM passes of this batch: which rows run, padded to what width.

    A pair without a negative carries a one-token placeholder row (data/collate.py) that no loss
    reads: its margin term is masked by pair_mask and live features skip it (neg_node -1). Running
    it still costs a full padded row of decoder forward + backward, and on real debate data most
    pairs have no negative (GSM8K debates: 80%, so 40% of all rows; benchmarks/padding.py), so
    those rows are left out of the LM pass. The losses are unchanged. Without a margin term
    (``margin_weight: 0``, the NTP-only / SFT baseline) and with frozen features no loss reads any
    negative, so none runs: the baseline does the work of plain fine-tuning, no more.

    ``lm_passes: split`` runs the positives and the needed negatives as two passes, each cut to its own
    longest row; otherwise (``one``, and ``auto`` outside training) one pass cut to the longest of all.

    The plan sets tensor shapes, so it is read on the host: from the collated batch before it moves
    (the training loop stores it under ``LM_ROWS``, no device sync), or here, copying the masks back
    from the device (a sync) when a caller did not."""
    pair_mask = batch["pair_mask"].detach().cpu().numpy()
    B = len(pair_mask)
    needed = pair_mask > 0
    if cfg.margin_weight == 0:
        needed[:] = False
    if cfg.graph_features == "live":  # every node that gets a live feature needs its row
        needed |= batch["neg_node"].detach().cpu().numpy() >= 0
    mask = batch["attention_mask"].detach().cpu().numpy()
    pos, neg = np.arange(B), B + np.flatnonzero(needed)
    if cfg.lm_passes == "split":
        passes: list[LMPass] = [(torch.from_numpy(pos), _width(mask, pos), B)]
        if len(neg):
            passes.append((torch.from_numpy(neg), _width(mask, neg), None))
        return passes
    if needed.all():
        return [(None, None, B)]
    keep = np.concatenate([pos, neg])
    return [(torch.from_numpy(keep), _width(mask, keep), B)]


class MAGDiStudent(nn.Module):
    def __init__(self, cfg: StudentConfig, lm: nn.Module | None = None, tokenizer=None,
                 feature_dim: int | None = None, ds_config: dict | None = None):
        """``feature_dim``: width of the frozen node features (the data's; default the LM hidden
        size, which it is unless ``cfg.feature_model`` names another model). ``ds_config``: a ZeRO-3
        DeepSpeed config builds every part already partitioned (model/zero_init.py)."""
        super().__init__()
        self.cfg = cfg
        self.lm = lm if lm is not None else load_lm(
            cfg.base, tokenizer=tokenizer, seed=cfg.seed, dtype=cfg.dtype, lora=cfg.lora,
            gradient_checkpointing=cfg.gradient_checkpointing, trust_remote_code=cfg.trust_remote_code,
            ds_config=ds_config,
        )
        hidden = unwrap_lm(self.lm).config.hidden_size
        self.hidden_size = hidden
        scorer_hidden = cfg.scorer_hidden or hidden
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            self.encoder = GraphEncoder(feature_dim or hidden, cfg.gcn_hidden, cfg.gcn_layers, cfg.gcn_dropout)
            # Reference: tanh(mlp2(relu(mlp1(pooled)))), mlp1 H -> H.
            self.scorer = nn.Sequential(nn.Linear(hidden, scorer_hidden), nn.ReLU(), nn.Linear(scorer_hidden, 1))
        partition_module(self.encoder, ds_config)
        partition_module(self.scorer, ds_config)

    def score(self, pooled: torch.Tensor) -> torch.Tensor:
        """Scalar score in [-1, 1] per pooled sequence embedding."""
        param = self.scorer[0].weight
        return torch.tanh(self.scorer(pooled.to(param.dtype))).squeeze(-1)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        B = input_ids.shape[0] // 2
        pair_mask = batch["pair_mask"].to(input_ids.device)

        # Positives (rows :B) and the negatives a loss reads (rows B:); logits for positives only.
        passes = batch[LM_ROWS] if LM_ROWS in batch else lm_rows(cfg, batch)
        ran, pooled_parts, num_tokens = [], [], 0
        for rows, width, head_rows in passes:
            ids, mask = input_ids, attention_mask
            if rows is not None:
                rows = rows.to(input_ids.device, non_blocking=True)
                ids, mask = input_ids[rows][:, :width], attention_mask[rows][:, :width]
            hidden, logits = lm_forward(self.lm, ids, mask, head_rows=head_rows)
            if head_rows is not None:
                pos_logits = logits
                labels = labels[:, :mask.shape[1]]
            ran.append(rows)
            pooled_parts.append(pool_hidden(hidden, mask, cfg.pooling))
            num_tokens = num_tokens + mask.sum()  # real tokens of the rows that ran: no padding, no skipped row
        if len(ran) == 1 and ran[0] is None:  # every row, at the batch width
            pooled = pooled_parts[0]
        else:  # back to one row per batch row; a skipped row gets a zero embedding no loss reads
            kept = torch.cat(pooled_parts)
            pooled = kept.new_zeros((input_ids.shape[0], kept.shape[1])).index_copy(0, torch.cat(ran), kept)
        ntp, n_targets = ntp_loss(pos_logits, labels[:B])
        if cfg.margin_weight > 0:
            scores = self.score(pooled)
            margin = margin_ranking_loss(scores[:B], scores[B:], pair_mask, cfg.margin)
        else:  # no negative ran: the term is off, not computed on zero embeddings
            margin = pos_logits.new_zeros(())

        graph = batch["graph"]
        x = graph.x.to(self.encoder.head.weight.dtype)
        if cfg.graph_features == "live":
            x = self._live_features(x, pooled, batch, B)
        node_logits = self.encoder(x, graph.edge_index)
        nodes = node_loss(node_logits, graph.y)

        loss = cfg.ntp_weight * ntp + cfg.margin_weight * margin + cfg.node_weight * nodes
        if "extra_attention_mask" in batch and cfg.graph_features == "live":
            num_tokens = num_tokens + batch["extra_attention_mask"].sum()
        return {
            "loss": loss,
            "ntp_loss": ntp.detach(),
            "margin_loss": margin.detach(),
            "node_loss": nodes.detach(),
            "num_tokens": num_tokens.detach(),
            "num_head_tokens": attention_mask[:B].sum().detach(),  # the output head runs on positives only
            "num_target_tokens": n_targets.detach(),
            "num_pairs_with_negative": (pair_mask > 0).sum().detach(),
            "num_nodes": torch.tensor(graph.num_nodes, device=input_ids.device),
        }

    def _live_features(self, x: torch.Tensor, pooled: torch.Tensor, batch: dict, B: int) -> torch.Tensor:
        """x with the rows of this batch's chain nodes replaced by their (differentiable) embeddings."""
        dim = x.shape[1]
        if dim != self.hidden_size:
            raise ValueError(f"live graph features need node features of the LM hidden size "
                             f"{self.hidden_size}, got {dim}")
        pos_node, neg_node = batch["pos_node"].to(x.device), batch["neg_node"].to(x.device)
        has_neg = neg_node >= 0
        index = [pos_node, neg_node[has_neg]]
        values = [pooled[:B], pooled[B:][has_neg]]
        if self.cfg.live_extra_nodes > 0 and batch.get("extra_node") is not None and len(batch["extra_node"]):
            extra_hidden, _ = lm_forward(self.lm, batch["extra_input_ids"], batch["extra_attention_mask"], None)
            index.append(batch["extra_node"].to(x.device))
            values.append(pool_hidden(extra_hidden, batch["extra_attention_mask"], self.cfg.pooling))
        # Out-of-place: x may be a leaf of the batch; collate guarantees the indices are distinct.
        return x.index_put((torch.cat(index),), torch.cat(values).to(x.dtype))
