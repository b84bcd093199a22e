"""Training FLOPs estimates for MFU, counted per token of the rows that ran.

A weight matrix costs 2 FLOPs per weight per token forward; the backward costs 2 more for the
gradient of its input and, when the weight trains, 2 more for its own gradient (Kaplan et al. 2020,
sec. 2.1). So a trained weight costs 6 per token and a frozen one 4: full fine-tuning is 6 N, LoRA
(frozen base, N_lora trained) 4 N + 6 N_lora. N = the LM's non-embedding parameters; the output
projection (d x V) adds 6 d V or, frozen, 4 d V, but only for the tokens it runs on: the student
applies it to the positive rows only (model/forward.py). Attention scores and values add 6 L T d at
sequence length T (no weights: the backward takes gradients of both operands, 2x the forward).
Per graph node: the GCN (encoder.flops_per_node). Recomputation under gradient checkpointing is not
model work and is not counted (MFU, not hardware FLOPs utilisation).
"""

from __future__ import annotations

from torch import nn

from magdi_dist.model.build import unwrap_lm


def _lm_of(model: nn.Module) -> nn.Module:
    return getattr(model, "lm", model)


def _numel(p: nn.Parameter) -> int:
    # Under DeepSpeed ZeRO-3 a parameter is a partitioned stub (numel 0); ds_numel is its full size.
    return getattr(p, "ds_numel", p.numel())


def _weight_flops(params) -> float:
    """Per-token FLOPs of a set of weights: 6 per trained weight, 4 per frozen one."""
    return float(sum((6 if p.requires_grad else 4) * _numel(p) for p in params))


def decoder_flops_per_token(model: nn.Module, seq_len: int = 0) -> float:
    """Training FLOPs per token through the decoder stack (every row that ran: positives, negatives,
    live extra nodes), LoRA-aware, plus attention at sequence length ``seq_len``."""
    base = unwrap_lm(_lm_of(model))
    cfg = base.config
    emb = base.get_input_embeddings().weight
    out = base.get_output_embeddings()
    skip = {id(emb)} | ({id(out.weight)} if out is not None else set())
    params = {id(p): p for p in base.parameters()}  # a tied tensor counts once
    body = [p for i, p in params.items() if i not in skip]
    return _weight_flops(body) + 6.0 * cfg.num_hidden_layers * seq_len * cfg.hidden_size


def head_flops_per_token(model: nn.Module) -> float:
    """Training FLOPs per token through the output projection (6 d V trained, 4 d V frozen)."""
    base = unwrap_lm(_lm_of(model))
    cfg = base.config
    out = base.get_output_embeddings()
    trained = out is not None and out.weight.requires_grad
    return (6.0 if trained else 4.0) * cfg.hidden_size * cfg.vocab_size


def flops_per_token(model: nn.Module, seq_len: int = 0) -> float:
    """Training FLOPs per token of a row that runs through the decoder and the output head."""
    return decoder_flops_per_token(model, seq_len) + head_flops_per_token(model)


def flops_per_node(model: nn.Module, avg_degree: float = 3.0) -> float:
    """Training FLOPs per graph node of the node objective (0 for a bare LM)."""
    encoder = getattr(model, "encoder", None)
    return encoder.flops_per_node(avg_degree) if encoder is not None else 0.0


def step_flops(model: nn.Module, num_tokens: int, num_nodes: int, seq_len: int = 0,
               num_head_tokens: int | None = None) -> float:
    """FLOPs of one micro-step: ``num_tokens`` through the decoder, ``num_head_tokens`` of them through
    the output head (None: all of them, a bare LM), ``num_nodes`` through the GCN."""
    head = num_tokens if num_head_tokens is None else num_head_tokens
    return (decoder_flops_per_token(model, seq_len) * num_tokens + head_flops_per_token(model) * head
            + flops_per_node(model) * num_nodes)
