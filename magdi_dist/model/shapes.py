"""A student's parameter counts and layer shapes, without its weights.

The LM (LoRA adapters included), the graph encoder and the scorer are built exactly as training builds
them, but on the meta device: tensors have shapes and no storage, and nothing is initialised. A 70B
Llama costs about a second and no memory, so a capacity plan (launch/plan.py) runs on a laptop. Hub
ids need their config.json (cached, or the network); a dict of LlamaConfig fields needs nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from magdi_dist.config import LoraSpec, MAGDiConfig, StudentConfig
from magdi_dist.model.build import DTYPES, is_tiny_spec, load_lm, tiny_config, unwrap_lm


class ShapeError(ValueError):
    """The model's config cannot be read (an unreachable hub id, a missing directory)."""


@dataclass(frozen=True)
class StudentShape:
    params: int
    """Every parameter of the student (LM, graph encoder, scorer); a tied tensor counts once."""
    largest_layer_params: int
    """Parameters of the largest single module (its own, not its children's): what ZeRO-3 gathers at once."""
    trainable_params: int
    """Parameters the optimizer holds: all of them, or under LoRA the adapters + graph encoder + scorer."""
    lm_params: int
    """Parameters of the causal LM alone (adapters included)."""
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    weight_bytes: int
    """Bytes per LM weight as loaded (``model.dtype``)."""

    @property
    def frozen_params(self) -> int:
        return self.params - self.trainable_params


# config.json of the hub models the shipped configs name (architecture fields only; Apache-2.0 /
# Llama 3.2 community licence releases): a capacity plan needs a shape, not a download, so it runs on
# a machine that cannot reach the hub. Training still loads the model itself from the hub.
HUB_CONFIGS = Path(__file__).resolve().parent / "hub_configs"


def shipped_hub_config(spec: str) -> Path | None:
    path = HUB_CONFIGS / f"{spec.replace('/', '--')}.json"
    return path if "/" in spec and not Path(spec).exists() and path.is_file() else None


def _lm_config(spec: str | dict[str, Any], vocab_size: int, trust_remote_code: bool):
    if is_tiny_spec(spec):
        return tiny_config(spec, vocab_size, {})
    from transformers import AutoConfig

    shipped = shipped_hub_config(spec)
    if shipped is not None:
        fields = json.loads(shipped.read_text())
        return AutoConfig.for_model(fields.pop("model_type"), **fields)

    from magdi_dist.model.sources import checkpoint_dir

    try:
        return AutoConfig.from_pretrained(str(checkpoint_dir(spec)), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ShapeError(f"cannot read the config of model {spec!r} ({str(err).splitlines()[0]}); "
                         "give its shape as a dict of LlamaConfig fields instead, e.g. model.base="
                         "'{hidden_size: 4096, num_hidden_layers: 32, num_attention_heads: 32, "
                         "intermediate_size: 11008, vocab_size: 32000}'") from None


def _meta_lm(spec, vocab_size: int, dtype: str, lora: LoraSpec | None, trust_remote_code: bool) -> nn.Module:
    """The LM on the meta device: tiny presets and dicts through ``load_lm`` itself (the same code as
    training, LoRA included), hub ids and directories from their config."""
    if is_tiny_spec(spec):
        with torch.device("meta"):
            return load_lm(spec, vocab_size=vocab_size, dtype=dtype, lora=lora)
    from transformers import AutoModelForCausalLM

    # Outside the meta context: reading a GGUF source's config converts it on first use, and that
    # loads real weights (transformers refuses from_pretrained under a meta device).
    config = _lm_config(spec, vocab_size, trust_remote_code)
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code)
        if lora is None:
            return lm
        from peft import LoraConfig, get_peft_model

        # The adapter config load_lm applies (model/build.py); only the parameter count matters here.
        return get_peft_model(lm, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                             target_modules=list(lora.target_modules), bias="none",
                                             task_type="CAUSAL_LM"))


def _unique(module: nn.Module) -> dict[int, nn.Parameter]:
    # DeepSpeed's own counter (runtime.zero.stage3.model_to_params) keys tied tensors by data_ptr(),
    # which is 0 for every meta tensor; the Python identity of the parameter works on any device.
    return {id(p): p for p in module.parameters()}


def largest_layer_params(module: nn.Module) -> int:
    """DeepSpeed's ZeRO-3 gather unit: the most parameters one module owns directly."""
    return max(sum(p.numel() for p in m.parameters(recurse=False)) for m in module.modules())


def student_shape(model: StudentConfig, vocab_size: int, feature_dim: int | None = None) -> StudentShape:
    """Counts of the student ``model`` describes, built on the meta device. ``vocab_size`` sizes a
    tiny / dict LM (a hub model has its own); ``feature_dim``: frozen node-feature width (default the
    LM hidden size)."""
    from magdi_dist.model.student import MAGDiStudent

    lm = _meta_lm(model.base, vocab_size, model.dtype, model.lora, model.trust_remote_code)
    with torch.device("meta"):
        student = MAGDiStudent(model, lm=lm, feature_dim=feature_dim)
    params = _unique(student)
    cfg = unwrap_lm(lm).config
    heads = cfg.num_attention_heads
    return StudentShape(
        params=sum(p.numel() for p in params.values()),
        largest_layer_params=largest_layer_params(student),
        trainable_params=sum(p.numel() for p in params.values() if p.requires_grad),
        lm_params=sum(p.numel() for p in _unique(lm).values()),
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
        intermediate_size=getattr(cfg, "intermediate_size", None) or 4 * cfg.hidden_size,
        vocab_size=cfg.vocab_size,
        weight_bytes=DTYPES[model.dtype].itemsize,
    )


def _feature_dim(cfg: MAGDiConfig, vocab_size: int) -> int | None:
    """Width of the frozen node features when another model computes them (``model.feature_model``)."""
    spec = cfg.model.feature_model
    if spec is None or cfg.model.graph_features == "live":
        return None
    return _lm_config(spec, vocab_size, cfg.model.trust_remote_code).hidden_size


def plan_vocab_size(cfg: MAGDiConfig) -> int:
    """The vocabulary a tiny / dict LM gets: the trained tokenizer's target size, else the named
    tokenizer's length (read from its files, no model). A hub model has its own: nothing is read."""
    tiny = [s for s in (cfg.model.base, cfg.model.feature_model) if s is not None and is_tiny_spec(s)]
    if not tiny:
        return 0
    if cfg.data.tokenizer == "train":
        return cfg.data.vocab_size
    from transformers import AutoTokenizer

    from magdi_dist.model.sources import checkpoint_dir

    try:
        return len(AutoTokenizer.from_pretrained(str(checkpoint_dir(cfg.data.tokenizer))))
    except (OSError, ValueError) as err:
        raise ShapeError(f"cannot read the tokenizer {cfg.data.tokenizer!r} ({str(err).splitlines()[0]})") from None


def config_shape(cfg: MAGDiConfig) -> StudentShape:
    """The shape of the student a run config trains."""
    vocab = plan_vocab_size(cfg)
    return student_shape(cfg.model, vocab, _feature_dim(cfg, vocab))
