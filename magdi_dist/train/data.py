"""Training rows from the data config: MAGs (file or synthetic) -> held-out split -> tokenizer -> rows.

This is the seam the Parquet reader replaces: the loop only needs ``TrainData`` (a sequence of example
rows per split, and their lengths for the sampler), not how the rows were made.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from magdi_dist.config import MAGDiConfig
from magdi_dist.train.dist import DistInfo, barrier

log = logging.getLogger(__name__)


@dataclass
class TrainData:
    train: Sequence[dict]
    eval: Sequence[dict]
    train_lengths: list[int] | None = None

    def lengths(self) -> list[int]:
        """Padded width each training row needs (the longer chain of the pair)."""
        if self.train_lengths is None:
            self.train_lengths = [max(len(r["pos_input_ids"]), len(r["neg_input_ids"]) or 1)
                                  for r in self.train]
        return self.train_lengths


def load_mags_for(cfg: MAGDiConfig) -> list:
    d = cfg.data
    if not d.paths:
        from magdi_dist.mag.synth import synth_mags

        s = d.synthetic
        return synth_mags(s.n, agents=s.agents, rounds=s.rounds, seed=s.seed)
    from magdi_dist.mag.readers import read_mags

    # strict: a bad record stops training with its file and record (the Parquet pipeline is lenient).
    return list(read_mags(d.paths, format=d.format, task=d.task, strict=True).mags)


def split_mags(mags: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, eval) by question; eval order is the input order (stable, whatever the seed)."""
    n_eval = int(round(len(mags) * fraction))
    if fraction > 0 and n_eval == 0 and len(mags) > 1:
        n_eval = 1
    held = set(np.random.default_rng(seed).permutation(len(mags))[:n_eval].tolist())
    return ([m for i, m in enumerate(mags) if i not in held], [m for i, m in enumerate(mags) if i in held])


def tokenizer_for(cfg: MAGDiConfig, train_mags: list, info: DistInfo):
    """The configured tokenizer, or one trained on the training MAGs by rank 0 and read by the others.

    A tokenizer already in output_dir/tokenizer is reused only when it is stamped with this config's
    hash (a resumed run); one left by a run with other data or vocab_size is retrained.
    """
    from transformers import AutoTokenizer

    from magdi_dist.config import config_hash

    if cfg.data.tokenizer != "train":
        return AutoTokenizer.from_pretrained(cfg.data.tokenizer)
    out = Path(cfg.train.output_dir) / "tokenizer"
    stamp = out / "magdi_config_hash"
    if info.is_main and not (stamp.is_file() and stamp.read_text() == config_hash(cfg)):
        from magdi_dist.data.tokenizer import mag_texts, train_tokenizer

        if not train_mags:
            raise ValueError("data.tokenizer=train needs the training MAGs; pass a tokenizer directory")
        train_tokenizer(mag_texts(train_mags), out, vocab_size=cfg.data.vocab_size)
        stamp.write_text(config_hash(cfg))
    barrier()
    return AutoTokenizer.from_pretrained(str(out))


def build_rows(cfg: MAGDiConfig, mags: list, tokenizer, lm) -> list[dict]:
    """Rows of ``mags`` with frozen node features from ``lm`` (the untrained base student)."""
    from magdi_dist.data import FrozenFeatureExtractor, RowConfig, rows_from_mags, zero_features
    from magdi_dist.model import unwrap_lm

    row_cfg = RowConfig.for_student(cfg.model, cfg.data.max_len)
    if cfg.data.features == "zero":
        feature_fn = zero_features(unwrap_lm(lm).config.hidden_size)
    else:
        feature_fn = FrozenFeatureExtractor(lm, tokenizer, pooling=cfg.model.pooling,
                                            max_tokens=cfg.data.max_len)
    return rows_from_mags(mags, tokenizer, row_cfg, feature_fn)


def build_train_data(cfg: MAGDiConfig, info: DistInfo, student_factory) -> tuple[TrainData, object, object]:
    """(rows, tokenizer, student). ``student_factory(tokenizer)`` builds the model: rows need its
    untrained LM for frozen features, and the LM needs the tokenizer for its vocabulary.

    Every rank builds all rows (deterministic; for the tiny configs this takes seconds). Large corpora
    go through the Parquet preprocessing pipeline instead and arrive here as ready rows.
    """
    mags = load_mags_for(cfg)
    train_mags, eval_mags = split_mags(mags, cfg.data.eval_fraction, cfg.data.split_seed)
    tokenizer = tokenizer_for(cfg, train_mags, info)
    student = student_factory(tokenizer)
    train_rows = build_rows(cfg, train_mags, tokenizer, student.lm)
    eval_rows = build_rows(cfg, eval_mags, tokenizer, student.lm) if eval_mags else []
    if info.is_main:
        log.info("data: %d MAGs -> %d train rows, %d eval rows", len(mags), len(train_rows), len(eval_rows))
    return TrainData(train_rows, eval_rows), tokenizer, student
