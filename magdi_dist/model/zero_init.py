"""Building the student already partitioned for ZeRO-3, so no rank ever holds a full copy.

Without this every rank builds the whole model on the host and ``deepspeed.initialize`` partitions it
afterwards: a 1B-parameter fp32 student costs 4 GB per rank before a single shard exists. Under
ZeRO-3 presets the student is built the way Hugging Face's DeepSpeed integration builds it:

* hub ids, local and GGUF-converted directories: ``from_pretrained`` with an ``HfDeepSpeedConfig``
  alive, so transformers constructs under ``deepspeed.zero.Init`` and copies each checkpoint tensor
  into its module's gathered parameters one module at a time (``_load_state_dict_into_zero3_model``);
* tiny presets / config dicts: ``LlamaForCausalLM(config)`` inside ``deepspeed.zero.Init``. Each
  module is partitioned as soon as its ``__init__`` returns, so a rank holds 1/world of the model plus
  the module being built;
* the GCN and the scorer are built whole and partitioned at once (``zero.Init(module=...)``): they are
  small (in_dim x gcn_hidden + H x H) and a pyg ``GCNConv`` re-runs its ``Linear``'s init after the
  ``Linear`` is built, which on an already-partitioned tensor would draw nothing;
* LoRA adapters are added by peft after the context closes (rank x (in + out) per layer, small):
  peft zero-initialises ``lora_B`` in place, which on a partitioned stub would be a no-op and leave
  the adapter non-zero. ``deepspeed.initialize`` partitions them with the rest.

Seeded tiny init gives the same weights as the plain build. zero.Init itself keeps the RNG stream
(each module's default init runs on its full tensor, broadcast from rank 0, before partitioning), but
transformers' weight init (``post_init``) then runs on empty stubs and draws nothing. ``tiny_init``
therefore swaps ``initialize_weights`` for transformers' ZeRO-3 variant, which gathers each module
and inits it on rank 0, at the moment each ``post_init`` runs: the draws happen in the plain build's
order (the decoder's init before ``lm_head``'s default init, as in ``LlamaForCausalLM.__init__``).

Frozen graph features are not built here: ``data/features.py`` runs the feature model in preprocess
actors, each holding a full replica in inference mode. For a base that does not fit one actor that
would need the actors to shard it too (DeepSpeed inference / ZeRO-3 inference across actors, or
``device_map`` offload), which is not implemented.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch


def is_zero3(ds_config: dict | None) -> bool:
    return bool(ds_config) and ds_config.get("zero_optimization", {}).get("stage", 0) == 3


def _init_kwargs(ds_config: dict) -> dict:
    # mem_efficient_linear=False: DeepSpeed would otherwise swap torch.nn.functional.linear for its own
    # autograd function process-wide; keeping torch's keeps the forward the same kernel as at stages 0-2.
    # No dtype: given one, deepspeed 0.19.8 ignores it on an accelerator without fp16 (operator
    # precedence in Init._set_dtype) and rounds every weight to bf16 on CPU. Without one it takes the
    # config's: bf16 when training in bf16 (what the engine would cast the module to), else fp32.
    return {"config_dict_or_path": ds_config, "mem_efficient_linear": False}


def partitioned(ds_config: dict | None):
    """``deepspeed.zero.Init`` for a ZeRO-3 config, a no-op context otherwise."""
    if not is_zero3(ds_config):
        return nullcontext()
    import deepspeed

    return deepspeed.zero.Init(**_init_kwargs(ds_config))


def training_dtype(ds_config: dict) -> torch.dtype | None:
    """The dtype DeepSpeed trains the module's weights in (its master copy stays fp32), None for fp32."""
    if ds_config.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if ds_config.get("fp16", {}).get("enabled"):
        return torch.float16
    return None


def partition_module(module: torch.nn.Module, ds_config: dict | None) -> torch.nn.Module:
    """Partition an already-built (small) module now rather than at ``deepspeed.initialize``.

    ``zero.Init(module=...)`` partitions the tensors as they are, in fp32; ``deepspeed.initialize``
    casts only what it partitions itself. So the module is cast to the training dtype first, as the
    engine would have cast it: otherwise a bf16 run's optimizer finds fp32 and bf16 partitions in one
    group and stops (deepspeed's ``defragment`` asserts a single dtype)."""
    if is_zero3(ds_config):
        import deepspeed

        dtype = training_dtype(ds_config)
        if dtype is not None:
            module.to(dtype)
        deepspeed.zero.Init(module=module, **_init_kwargs(ds_config))
    return module


def cast_unpartitioned(module: torch.nn.Module, ds_config: dict | None) -> torch.nn.Module:
    """Cast the parameters built after zero.Init closed (LoRA adapters) to the training dtype, as the
    engine casts a module it partitions itself: ``deepspeed.initialize`` partitions them as they are."""
    dtype = training_dtype(ds_config) if is_zero3(ds_config) else None
    if dtype is not None:
        for param in module.parameters():
            if not hasattr(param, "ds_id"):  # already partitioned ones carry their ZeRO-3 id
                param.data = param.data.to(dtype)
    return module


@contextmanager
def hf_zero3(ds_config: dict | None):
    """transformers' ZeRO-3 integration on for the duration (``from_pretrained`` under zero.Init).

    ``HfDeepSpeedConfig`` registers itself through a weak reference: the object must stay alive for
    the whole ``from_pretrained`` call. It is dropped afterwards, so nothing later (peft's adapter init,
    the export) takes transformers' ZeRO-3 branches by accident."""
    if not is_zero3(ds_config):
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    keep_alive = HfDeepSpeedConfig(ds_config)
    try:
        yield keep_alive
    finally:
        unset_hf_deepspeed_config()


def tiny_init(config, ds_config: dict):
    """``LlamaForCausalLM(config)`` built partitioned, with the plain build's weights for the same RNG."""
    from transformers import LlamaForCausalLM, PreTrainedModel
    from transformers.integrations.deepspeed import initialize_weights_zero3

    plain = PreTrainedModel.initialize_weights

    def gathered(self) -> None:
        initialize_weights_zero3(self)

    PreTrainedModel.initialize_weights = gathered
    try:
        with partitioned(ds_config):
            lm = LlamaForCausalLM(config)
    finally:
        PreTrainedModel.initialize_weights = plain
    return lm
