"""Train a small byte-level BPE tokenizer for tiny students (the pipeline then needs no hub access).

Byte-level: every string is representable (no unknown token). Special tokens: <pad> 0, <s> 1 (bos,
prepended when ``add_special_tokens=True``, like Llama), </s> 2 (eos, appended by data/encode.py).
Deterministic: BPE training has no randomness and the merges are tie-broken by pair ids, which come
from the sorted byte alphabet (the known non-determinism of the tokenizers trainer is in WordPiece's
``##`` continuation tokens, which are not used here); the test checks it across processes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

PAD, BOS, EOS = "<pad>", "<s>", "</s>"


def build_bpe(texts: Iterable[str], vocab_size: int):
    """A ``tokenizers.Tokenizer`` (byte-level BPE) trained on ``texts``; imports only ``tokenizers``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return tok


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 8192):
    """Train, save to ``out_dir`` (loadable by ``AutoTokenizer.from_pretrained(out_dir)``) and return
    the ``PreTrainedTokenizerFast``."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=build_bpe(texts, vocab_size),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="right",
        model_max_length=1_000_000,  # no truncation warnings; RowConfig.max_length truncates
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return fast


def mag_texts(mags) -> list[str]:
    """The texts a tokenizer for these MAGs should see: every prompt and every chain, in MAG order."""
    from magdi_dist.data.prompt import format_prompt, format_target

    texts = []
    for mag in mags:
        texts.append(format_prompt(mag.question, mag.options))
        texts.extend(format_target(r.reasoning, r.answer) for r in mag.responses if r.reasoning is not None)
    return texts
