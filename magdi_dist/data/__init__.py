"""MAGs -> training data: prompt format, tokenizer, contrastive pairs, rows, frozen features, batches;
and the read side of the shards (``data.shards``), the only way rows reach the training loop."""

from magdi_dist.data.collate import batch_to, collate
from magdi_dist.data.encode import encode_chain, node_parts
from magdi_dist.data.features import FrozenFeatureExtractor
from magdi_dist.data.pairs import Pair, make_pairs
from magdi_dist.data.prompt import answer_sentence, format_prompt, format_target, render_prompt
from magdi_dist.data.rows import RowConfig, rows_from_mags, zero_features
from magdi_dist.data.tokenizer import train_tokenizer

__all__ = [
    "FrozenFeatureExtractor",
    "Pair",
    "RowConfig",
    "answer_sentence",
    "batch_to",
    "collate",
    "encode_chain",
    "format_prompt",
    "render_prompt",
    "format_target",
    "make_pairs",
    "node_parts",
    "rows_from_mags",
    "train_tokenizer",
    "zero_features",
]
