"""Training FLOPs estimates for MFU (forward + backward ~ 3x the forward's 2 FLOPs per weight).

Per token: 6 N (N = non-embedding LM parameters) + 6 d V for the output projection + 6 L T d for the
attention scores and values at sequence length T (Kaplan et al. 2020, sec. 2.1). Per node: the GCN
(encoder.flops_per_node). The estimate is an upper bound in two ways worth knowing: the output
projection runs on positive rows only, and with LoRA the frozen weights get no weight gradient
(~4 N instead of 6 N); both are ignored so MFU stays comparable across runs.
"""

from __future__ import annotations

from torch import nn

from magdi_dist.model.build import non_embedding_params, unwrap_lm


def _lm_of(model: nn.Module) -> nn.Module:
    return getattr(model, "lm", model)


def flops_per_token(model: nn.Module, seq_len: int = 0) -> float:
    """Training FLOPs per processed token of the LM (a ``MAGDiStudent`` or a bare causal LM)."""
    base = unwrap_lm(_lm_of(model))
    cfg = base.config
    d, vocab, layers = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    return 6.0 * non_embedding_params(base) + 6.0 * d * vocab + 6.0 * layers * seq_len * d


def flops_per_node(model: nn.Module, avg_degree: float = 3.0) -> float:
    """Training FLOPs per graph node of the node objective (0 for a bare LM)."""
    encoder = getattr(model, "encoder", None)
    return encoder.flops_per_node(avg_degree) if encoder is not None else 0.0


def step_flops(model: nn.Module, num_tokens: int, num_nodes: int, seq_len: int = 0) -> float:
    """FLOPs of one optimizer micro-step: tokens through the LM plus nodes through the GCN."""
    return flops_per_token(model, seq_len) * num_tokens + flops_per_node(model) * num_nodes
