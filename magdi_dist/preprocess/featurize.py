"""The bridge from the pipeline to the data and model modules: build the student's tokenizer and frozen
base model the same way in every process, and turn one shard's MAGs into feature matrices and rows.

Everything a worker needs travels as a ``FeatureSpec`` (plain, picklable values), never as a live
tokenizer or model, so Ray ships a few hundred bytes and each actor loads its own copy once.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from magdi_dist.mag.schema import MAG


class FeatureSpec(BaseModel):
    """How to build the tokenizer, the frozen base student and the rows."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    tokenizer: str
    """Directory of a saved tokenizer (``AutoTokenizer.from_pretrained``)."""
    model: str | dict[str, Any]
    """``load_lm`` spec of the base student: tiny preset, config dict, local directory or hub id."""
    seed: int = 0
    """Initialisation seed of tiny models (their frozen features depend on it)."""
    dtype: str = "float32"
    trust_remote_code: bool = False
    features: Literal["frozen", "zero"] = "frozen"
    """``zero``: all-zero node features (``data.features: zero``); the model still sets their width."""
    pooling: str = "weighted_mean"
    """How node token states are pooled (the student's pooling: ``model.losses.pool_hidden``)."""
    rows: dict[str, Any] = Field(default_factory=dict)
    """``RowConfig`` fields (max_length, answer_only_loss, node_max_tokens)."""


@lru_cache(maxsize=4)
def load_tokenizer(path: str):
    """One tokenizer per process and path (the write tasks reuse it across shards)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def load_feature_model(spec: FeatureSpec, device: str = "cpu"):
    """The frozen feature model (the untrained student, or ``model.feature_model``), in eval mode (no
    dropout: features must be a function of the text)."""
    from magdi_dist.model import load_lm

    # The student's own LM before training, as MAGDiStudent builds it (LoRA and activation
    # checkpointing do not change an untrained model's forward pass, so they are left out).
    model = load_lm(spec.model, tokenizer=load_tokenizer(spec.tokenizer), seed=spec.seed, dtype=spec.dtype,
                    trust_remote_code=spec.trust_remote_code)
    model.eval().requires_grad_(False)
    return model.to(device)


def feature_dim(model) -> int:
    return int(model.config.hidden_size)


class MemoTokenizer:
    """The tokenizer with ``__call__`` memoised. A shard tokenizes every node twice (its feature and
    its row) and every node's prompt repeats its question; profiling one 250-MAG shard put 66% of the
    actor's time in those calls. Same outputs, so the shard bytes do not change; ``clear`` per shard
    bounds the memory. Everything else (ids of special tokens, decode, ...) is the tokenizer's."""

    def __init__(self, tokenizer) -> None:
        self._tok = tokenizer
        self._memo: dict = {}

    def __call__(self, text, **kwargs):
        key = (text, tuple(sorted(kwargs.items())))
        if key not in self._memo:
            self._memo[key] = self._tok(text, **kwargs)
        return self._memo[key]

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __len__(self) -> int:
        return len(self._tok)

    def clear(self) -> None:
        self._memo.clear()


def feature_extractor(spec: FeatureSpec, model, tokenizer, *, batch_size: int, device: str = "cpu"):
    """The data module's ``FrozenFeatureExtractor`` over ``model``.

    Determinism: it sorts one call's nodes by length (stable) and cuts fixed batches, so as long as a
    call gets one whole shard's MAGs -- which the pipeline guarantees -- a node's padding and batch
    mates, and hence its float bits, depend on the shard's content alone, never on Ray's scheduling.
    Node texts are cut at the rows' ``max_length``, so a node feature matches its row's chain.
    """
    from magdi_dist.data.features import FrozenFeatureExtractor
    from magdi_dist.data.rows import zero_features

    if spec.features == "zero":
        return zero_features(feature_dim(model))
    return FrozenFeatureExtractor(
        model,
        tokenizer,
        pooling=spec.pooling,
        max_tokens=row_config(spec).max_length,
        batch_size=batch_size,
        device=device,
    )


def row_config(spec: FeatureSpec):
    from magdi_dist.data.rows import RowConfig

    return RowConfig(**spec.rows)


def build_rows(mags: Sequence[MAG], features: Sequence[np.ndarray], tokenizer, spec: FeatureSpec) -> list[dict]:
    """Example rows (docs/CONTRACTS.md) of one shard, with the features computed by the actor pool."""
    from magdi_dist.data.rows import rows_from_mags

    feats = list(features)
    return rows_from_mags(mags, tokenizer, row_config(spec), lambda completed: feats)


def feature_spec_from_config(cfg, tokenizer_dir: str) -> FeatureSpec:
    """The FeatureSpec a run config (``MAGDiConfig``) implies: its student, pooling and row settings."""
    from magdi_dist.data.rows import RowConfig
    from magdi_dist.model.sources import checkpoint_dir

    m = cfg.model
    return FeatureSpec(
        tokenizer=tokenizer_dir,
        # A GGUF source as its converted directory: converted once here on the driver, and named by
        # the GGUF's content hash, so the shards' fingerprint changes when the weights do.
        model=checkpoint_dir(m.feature_model if m.feature_model is not None else m.base),
        seed=m.seed,
        dtype=m.dtype,
        trust_remote_code=m.trust_remote_code,
        features=cfg.data.features,
        pooling=m.pooling,
        rows=RowConfig.for_student(m, cfg.data.max_len).model_dump(),
    )
