"""MAGs -> example rows (docs/CONTRACTS.md "Example row"): one row per contrastive pair.

Rows hold plain Python values only, so the same dict is an in-memory dataset item and a Parquet row.
Each row carries its question's whole graph (features, edges, labels), so a batch never has to look a
graph up elsewhere: example b is trained with its own question's graph by construction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from magdi_dist.data.encode import IGNORE_INDEX, encode_chain, node_parts
from magdi_dist.data.pairs import make_pairs
from magdi_dist.mag.schema import MAG
from magdi_dist.mag.split import question_key

log = logging.getLogger(__name__)

FeatureFn = Callable[[Sequence[MAG]], list[np.ndarray]]


class RowConfig(BaseModel):
    """How MAGs become token rows."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    max_length: int = Field(1024, ge=8)
    """Maximum tokens of prompt + chain + eos; longer chains are cut at the end."""
    answer_only_loss: bool = False
    """NTP targets only on the final answer sentence and eos (StudentConfig.answer_only_loss)."""
    node_max_tokens: int = Field(0, ge=0)
    """> 0: store every node's token ids (truncated to this) in the row as ``node_input_ids``, which
    collate needs for StudentConfig.live_extra_nodes; 0: do not (the contract's plain row)."""

    @classmethod
    def for_student(cls, student_cfg, max_length: int) -> RowConfig:
        """The row settings a StudentConfig implies (answer_only_loss, node tokens for live extra nodes)."""
        live_extra = student_cfg.graph_features == "live" and student_cfg.live_extra_nodes > 0
        return cls(max_length=max_length, answer_only_loss=student_cfg.answer_only_loss,
                   node_max_tokens=student_cfg.live_node_max_tokens if live_extra else 0)


def ready_mag(mag: MAG) -> MAG:
    """The completed grid with every node labelled (graded with magdi_dist.mag.answers if needed)."""
    mag = mag.completed()
    if any(r.label is None for r in mag.responses):
        from magdi_dist.mag.answers import grade_mag  # only when the input was not graded upstream

        mag = grade_mag(mag)
    return mag


def zero_features(dim: int) -> FeatureFn:
    """A feature_fn giving zero node features (live graph features, or tests)."""
    return lambda mags: [np.zeros((len(m.responses), dim), dtype=np.float32) for m in mags]


def rows_from_mags(mags: Sequence[MAG], tokenizer, cfg: RowConfig, feature_fn: FeatureFn) -> list[dict]:
    """Example rows of every pair of every MAG, in MAG order then pair order.

    ``feature_fn(completed_mags) -> [N_i x H float32 arrays]`` gives the frozen node features
    (data/features.py FrozenFeatureExtractor, zero rows for missing nodes). Questions without a
    correct chain give no row (data/pairs.py). A pair whose prompt alone fills ``max_length`` has no
    target token left and is dropped (logged). Rows of one MAG share their graph lists (node_features,
    edge_index, ...): treat rows as read-only.
    """
    mags = [ready_mag(m) for m in mags]
    features = feature_fn(mags)
    if len(features) != len(mags):
        raise ValueError(f"feature_fn returned {len(features)} feature matrices for {len(mags)} MAGs")
    rows: list[dict] = []
    dropped = 0
    for mag, feats in zip(mags, features, strict=True):
        feats = np.asarray(feats, dtype=np.float32)
        n = len(mag.responses)
        if feats.ndim != 2 or feats.shape[0] != n:
            raise ValueError(f"MAG {mag.id}: features of shape {feats.shape} for {n} nodes")
        labels = [int(label) for label in mag.labels()]
        edges = mag.edge_list()
        edge_index = [s for s, _ in edges] + [d for _, d in edges]
        encoded: dict[int, tuple[list[int], list[int]]] = {}

        def encode(node: int, mag=mag, encoded=encoded) -> tuple[list[int], list[int]]:
            if node not in encoded:
                prompt, target = node_parts(mag, node, tokenizer)
                encoded[node] = encode_chain(tokenizer, prompt, target, cfg.max_length, cfg.answer_only_loss)
            return encoded[node]

        shared = {
            "mag_id": mag.id,
            "question_key": question_key(mag.question),  # what the held-out split is keyed by
            "source_file": mag.source.file if mag.source else "",
            "source_record": mag.source.record if mag.source else -1,
            "node_features": feats.reshape(-1).tolist(),
            "feature_dim": int(feats.shape[1]),
            "edge_index": edge_index,
            "node_labels": labels,
        }
        if cfg.node_max_tokens > 0:
            shared["node_input_ids"] = [
                [] if node_parts(mag, i, tokenizer) is None else encode(i)[0][: cfg.node_max_tokens] for i in range(n)
            ]
        for k, pair in enumerate(make_pairs(labels)):
            pos_ids, pos_labels = encode(pair.pos)
            if all(t == IGNORE_INDEX for t in pos_labels):
                dropped += 1
                continue
            neg_ids = encode(pair.neg)[0] if pair.neg is not None else []
            rows.append({
                **shared,
                "pair_index": k,
                "pos_input_ids": pos_ids,
                "pos_labels": pos_labels,
                "neg_input_ids": neg_ids,
                "has_negative": pair.neg is not None,
                "pos_node": pair.pos,
                "neg_node": pair.neg if pair.neg is not None else -1,
            })
    if dropped:
        log.warning("dropped %d pairs whose prompt fills max_length=%d (no target token left)",
                    dropped, cfg.max_length)
    return rows
