"""Build the student's causal LM from a spec: a hub id, a local directory, a tiny preset or a config dict.

Tiny presets exist so the whole pipeline (data -> DeepSpeed -> eval) runs on a laptop or in CI; they
are Llama-architecture models sized by *non-embedding* parameters (the count that sets FLOPs per
token), so their size does not depend on the vocabulary of the tokenizer they are paired with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from magdi_dist.config import LoraSpec
from magdi_dist.model.sources import PRESETS, checkpoint_dir

# Non-embedding parameter counts: tiny-1m 1.00M, tiny-5m 4.75M, tiny-20m 19.27M (see docs in the report
# and tests). Embeddings are tied, so the total adds vocab_size * hidden_size once.
TINY_PRESETS: dict[str, dict[str, int]] = {
    "tiny-1m": dict(hidden_size=128, num_hidden_layers=5, num_attention_heads=4, intermediate_size=352),
    "tiny-5m": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=8, intermediate_size=688),
    "tiny-20m": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=1408),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def tiny_config(spec: str | dict[str, Any], vocab_size: int, special_ids: dict[str, int | None]):
    """A ``LlamaConfig`` for a preset name or a dict of LlamaConfig kwargs (optionally with ``preset``)."""
    from transformers import LlamaConfig

    if isinstance(spec, str):
        spec = {"preset": spec}
    kwargs = dict(spec)
    preset = kwargs.pop("preset", None)
    base: dict[str, Any] = dict(TINY_PRESETS[preset]) if preset else {}
    base.update(
        vocab_size=vocab_size,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        # Small models need no rope scaling tricks; keep the default theta explicit for reproducibility.
        rope_theta=10000.0,
        **{k: v for k, v in special_ids.items() if v is not None},
    )
    base.update(kwargs)
    return LlamaConfig(**base)


def is_tiny_spec(spec: str | dict[str, Any]) -> bool:
    return isinstance(spec, dict) or spec in TINY_PRESETS


def load_lm(
    spec: str | dict[str, Any],
    *,
    tokenizer=None,
    vocab_size: int | None = None,
    seed: int = 0,
    dtype: str = "float32",
    lora: LoraSpec | None = None,
    gradient_checkpointing: bool = False,
    trust_remote_code: bool = False,
    ds_config: dict | None = None,
) -> torch.nn.Module:
    """Load or build the causal LM.

    ``spec``: a tiny preset name (``tiny-1m``/``tiny-5m``/``tiny-20m``), a dict of ``LlamaConfig``
    kwargs (may name a ``preset`` to override), a local directory written by ``save_pretrained``, a hub
    id, or a GGUF file / GGUF preset (``smollm2-135m-instruct``), loaded from its converted directory
    (model/sources.py). Tiny models take their vocabulary (and bos/eos/pad ids) from ``tokenizer`` (or
    ``vocab_size``) and are initialised from ``seed`` without touching the global RNG.
    Remote code is refused unless ``trust_remote_code`` is set explicitly. With a ZeRO-3 ``ds_config``
    the LM is built partitioned across the ranks (model/zero_init.py); LoRA is added after.
    """
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from magdi_dist.model.zero_init import cast_unpartitioned, hf_zero3, is_zero3, tiny_init

    torch_dtype = DTYPES[dtype]
    if is_tiny_spec(spec):
        if tokenizer is not None:
            vocab_size = len(tokenizer)
        if vocab_size is None:
            raise ValueError("a tiny model needs the tokenizer (or vocab_size) to size its embeddings")
        ids = {
            "bos_token_id": getattr(tokenizer, "bos_token_id", None),
            "eos_token_id": getattr(tokenizer, "eos_token_id", None),
            "pad_token_id": getattr(tokenizer, "pad_token_id", None),
        }
        config = tiny_config(spec, vocab_size, ids)
        # fork_rng: the same seed gives the same weights whatever the caller did to the global RNG before,
        # and building a model does not shift the RNG stream of the caller (data order, dropout).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            # Under ZeRO-3 built partitioned, in the training precision (model/zero_init.py).
            lm = tiny_init(config, ds_config) if is_zero3(ds_config) else LlamaForCausalLM(config).to(torch_dtype)
    else:
        spec = checkpoint_dir(spec)
        if not Path(str(spec)).is_dir() and "/" not in str(spec):
            raise ValueError(
                f"unknown model spec {spec!r}: expected a tiny preset {sorted(TINY_PRESETS)}, a GGUF "
                f"preset {sorted(PRESETS)}, a .gguf file, a config dict, a local directory or a hub id "
                "(owner/name)"
            )
        with hf_zero3(ds_config):
            lm = AutoModelForCausalLM.from_pretrained(
                str(spec), dtype=torch_dtype, trust_remote_code=trust_remote_code
            )
    lm.config.use_cache = False  # training never decodes; the KV cache only costs memory
    if gradient_checkpointing:
        # Non-reentrant checkpointing works with frozen base weights (LoRA) without
        # enable_input_require_grads, and with DeepSpeed ZeRO-3.
        kwargs = {"use_reentrant": False}
        if hasattr(lm, "activation_checkpointing_enable"):
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:  # transformers < 5
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM")
        # Seeded too (lora_A is random): the adapters then do not depend on what the caller drew before,
        # and a ZeRO-3 build (whose library calls draw differently around them) gets the same ones.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 2)
            lm = get_peft_model(lm, config)
        cast_unpartitioned(lm, ds_config)
    return lm


def unwrap_lm(lm: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper (LoRA layers stay injected in it)."""
    get_base = getattr(lm, "get_base_model", None)
    return get_base() if callable(get_base) else lm


def non_embedding_params(lm: torch.nn.Module) -> int:
    """Parameters of the LM minus the input embedding table and the output projection (Kaplan et al.'s
    N: tied or not, neither scales with depth). ``flops.py`` adds the output projection's matmul."""
    base = unwrap_lm(lm)
    seen = {id(p): p for p in base.parameters()}  # a tied tensor counts once
    emb = base.get_input_embeddings().weight
    out = base.get_output_embeddings()
    skip = {id(emb)} | ({id(out.weight)} if out is not None else set())
    # Under DeepSpeed ZeRO-3 a parameter is a partitioned stub (numel 0); ds_numel is its full size.
    return sum(getattr(p, "ds_numel", p.numel()) for i, p in seen.items() if i not in skip)
