"""One LM pass that returns the last hidden layer for every row and logits only for the rows that need them.

``output_hidden_states=True`` keeps every layer's output referenced until the end of the step (under
activation checkpointing that defeats the checkpointing) and the full forward computes [rows, T, V]
logits for the negative rows too, which no loss uses. Instead the decoder stack (``get_decoder()``)
runs once and the output head is applied to the positive rows only.

That shortcut is only valid when the causal-LM forward is exactly ``lm_head(decoder(x))``. It is for
the architectures in ``HEAD_IS_PLAIN_LINEAR`` (checked against transformers 5.x); others (logit
soft-capping, logit scaling, ...) take the generic path: the full forward with hidden states.
Peft-wrapped models work through either path: LoRA layers are injected into the base model's modules,
so calling its decoder directly runs the adapters.
"""

from __future__ import annotations

import torch

from magdi_dist.model.build import unwrap_lm

HEAD_IS_PLAIN_LINEAR = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe"})


def fast_path_modules(lm: torch.nn.Module):
    """(decoder, output head) when the shortcut is valid for this model, else None."""
    base = unwrap_lm(lm)
    if getattr(base.config, "model_type", None) not in HEAD_IS_PLAIN_LINEAR:
        return None
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    if decoder is base or head is None:
        return None
    return decoder, head


def lm_forward(
    lm: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    head_rows: int | None,
    *,
    force_generic: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(last hidden state [R, T, H], logits [head_rows, T, V] of rows 0..head_rows-1 or None).

    ``head_rows=None`` skips the head entirely (node features).
    """
    modules = None if force_generic else fast_path_modules(lm)
    if modules is not None:
        decoder, head = modules
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        logits = head(hidden[:head_rows]) if head_rows is not None else None
        return hidden, logits
    kwargs = {}
    if head_rows is None:
        kwargs["logits_to_keep"] = 1  # most models accept it; it cuts the [R, T, V] logits to [R, 1, V]
    try:
        out = lm(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                 use_cache=False, **kwargs)
    except TypeError:
        out = lm(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
    logits = out.logits[:head_rows] if head_rows is not None else None
    return out.hidden_states[-1], logits
