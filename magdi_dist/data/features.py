"""Frozen node features: each node's pooled last-layer embedding under the base student (reference:
get_node_emb.py), computed once before training.

Node text = the same prompt + chain + eos token ids as a training row (data/encode.py), pooled the same
way as the student pools rows, so the frozen feature of a node equals the embedding the untrained
student computes for a row carrying that node's chain (what live features substitute).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from magdi_dist.data.encode import encode_chain, node_parts
from magdi_dist.mag.schema import MAG
from magdi_dist.model.build import unwrap_lm
from magdi_dist.model.forward import lm_forward
from magdi_dist.model.losses import pool_hidden


class FrozenFeatureExtractor:
    """``extractor(mags) -> [N_i x H float32 arrays]``, the ``feature_fn`` of ``rows_from_mags``.

    ``max_tokens`` should equal RowConfig.max_length (then the features match the rows' texts).
    Deterministic: nodes are sorted by length (stable) and batched in that order, the LM runs in eval
    mode under ``torch.no_grad()``; missing nodes get zero vectors. Sorting by length also keeps padding,
    and so wasted compute, small.
    """

    def __init__(self, lm, tokenizer, pooling: str = "weighted_mean", max_tokens: int = 1024,
                 batch_size: int = 16, device: str | torch.device | None = None):
        self.lm, self.tokenizer, self.pooling = lm, tokenizer, pooling
        self.max_tokens, self.batch_size = max_tokens, batch_size
        self.device = torch.device(device) if device is not None else next(lm.parameters()).device
        self.dim = unwrap_lm(lm).config.hidden_size
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else tokenizer.eos_token_id

    def __call__(self, mags: Sequence[MAG]) -> list[np.ndarray]:
        out = [np.zeros((len(m.responses), self.dim), dtype=np.float32) for m in mags]
        items = []  # (length, mag index, node index, ids)
        for mi, mag in enumerate(mags):
            for ni in range(len(mag.responses)):
                parts = node_parts(mag, ni, self.tokenizer)
                if parts is not None:
                    ids, _ = encode_chain(self.tokenizer, *parts, self.max_tokens)
                    items.append((len(ids), mi, ni, ids))
        items.sort(key=lambda it: it[0])
        was_training = self.lm.training
        self.lm.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(items), self.batch_size):
                    chunk = items[start : start + self.batch_size]
                    pooled = self._embed([it[3] for it in chunk])
                    for (_, mi, ni, _), vec in zip(chunk, pooled, strict=True):
                        out[mi][ni] = vec
        finally:
            self.lm.train(was_training)
        return out

    def _embed(self, seqs: list[list[int]]) -> np.ndarray:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):  # right padding, as in training batches
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden, _ = lm_forward(self.lm, ids, mask, head_rows=None)
        return pool_hidden(hidden, mask, self.pooling).float().cpu().numpy()
