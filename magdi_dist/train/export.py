"""Hugging Face export: a directory ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained`` load.

Contents: the causal LM with LoRA merged, as ``model.safetensors`` when it fits one shard of
``train.export_max_shard_size``, else as Hugging Face shards ``model-0000k-of-0000n.safetensors`` +
``model.safetensors.index.json``; config.json + generation_config.json; the tokenizer files;
graph_encoder.safetensors (GCN encoder ``encoder.*`` and scorer ``scorer.*``) and graph_encoder.json
(what is needed to rebuild them). ``export_weight_files`` lists the LM weight files either way.

Streamed, so no process ever holds the whole model: the LM is walked a block at a time (each decoder
layer; the embeddings, final norm and head) and each block's ZeRO-3 partitions are gathered with
``deepspeed.zero.GatheredParameters`` (a no-op at stages 0-2, where every rank holds the weights).
Rank 0 folds each LoRA adapter into its base weight (peft's ``get_delta_weight``, the update
``merge_and_unload`` applies) and hands the block's tensors to the shard they belong to; the shard plan
comes from ``huggingface_hub.split_torch_state_dict_into_shards`` on the tensors' shapes alone, before
anything is gathered, and is filled in order, so rank 0 holds at most one shard plus one block. Tied
weights (Llama's lm_head = embed_tokens) are written once, as ``save_pretrained`` does. The exported
dtype is ``model.dtype`` (bf16 training params are upcast exactly when model.dtype is float32).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch
from torch import nn

from magdi_dist.config import MAGDiConfig
from magdi_dist.data.shards import TRAINING_QUESTIONS  # read by magdi_dist.eval.contamination
from magdi_dist.train.dist import barrier

GRAPH_ENCODER_FORMAT = 1
INDEX = "model.safetensors.index.json"


def export_weight_files(export_dir: str | Path) -> list[Path]:
    """The LM's safetensors files of an export (or any save_pretrained directory): one, or the shards."""
    export_dir = Path(export_dir)
    index = export_dir / INDEX
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [export_dir / n for n in names]
    return [export_dir / "model.safetensors"]


def _graph_encoder_config(student, cfg: MAGDiConfig) -> dict:
    m = cfg.model
    return {
        "format_version": GRAPH_ENCODER_FORMAT,
        "in_dim": student.encoder.convs[0].in_channels,
        "gcn_hidden": m.gcn_hidden,
        "gcn_layers": m.gcn_layers,
        "gcn_dropout": m.gcn_dropout,
        "num_classes": student.encoder.head.out_features,
        "scorer_hidden": m.scorer_hidden or student.hidden_size,
        "pooling": m.pooling,
        "graph_features": m.graph_features,
        "class_names": ["correct", "incorrect", "missing"],
        "modules": {"encoder": "magdi_dist.model.GraphEncoder", "scorer": "Linear-ReLU-Linear-tanh"},
    }


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _is_lora(module: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return isinstance(module, LoraLayer)


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module, bool]]:
    """(name prefix, module, whole subtree?) in state-dict order: every element of a ModuleList (the
    decoder layers) and every LoRA-wrapped module is one block; any other module contributes its own
    direct parameters (embeddings, final norm, head) as a block."""
    out: list[tuple[str, nn.Module, bool]] = []

    def walk(prefix: str, module: nn.Module) -> None:
        if _is_lora(module):
            out.append((prefix, module, True))
            return
        if any(True for _ in module.parameters(recurse=False)):
            out.append((prefix, module, False))
        for name, child in module.named_children():
            if isinstance(child, nn.ModuleList):
                out.extend((_join(prefix, f"{name}.{i}"), layer, True) for i, layer in enumerate(child))
            else:
                walk(_join(prefix, name), child)

    walk("", model)
    return out


def _block_tensors(prefix: str, block: nn.Module, recurse: bool, seen: set[int], shapes_only: bool):
    """(key, tensor or shape) of a block, LoRA merged. ``seen``: ids of parameters written already
    (tied weights). With ``shapes_only`` the partitioned shapes are read and nothing is computed."""
    lora = {name: m for name, m in block.named_modules() if _is_lora(m)} if recurse else {}
    owned = tuple(f"{name}." if name else "" for name in lora)
    for name, module in lora.items():
        base = module.get_base_layer()
        key = _join(prefix, _join(name, "weight"))
        if shapes_only:
            yield key, tuple(getattr(base.weight, "ds_shape", base.weight.shape))
        else:
            merged = base.weight.detach().clone()
            for adapter in module.active_adapters:
                merged += module.get_delta_weight(adapter).to(merged.dtype)
            yield key, merged
        if getattr(base, "bias", None) is not None:
            yield _join(prefix, _join(name, "bias")), (
                tuple(getattr(base.bias, "ds_shape", base.bias.shape)) if shapes_only else base.bias.detach())
    for name, param in block.named_parameters(recurse=recurse, remove_duplicate=False):
        if any(name.startswith(o) for o in owned if o) or (lora and "" in lora) or id(param) in seen:
            continue
        seen.add(id(param))
        yield _join(prefix, name), (tuple(getattr(param, "ds_shape", param.shape)) if shapes_only
                                    else param.detach())


def _shard_plan(model: nn.Module, dtype: torch.dtype, max_shard_size: str | int):
    from huggingface_hub import split_torch_state_dict_into_shards

    seen: set[int] = set()
    meta = {key: torch.empty(shape, dtype=dtype, device="meta")
            for prefix, block, recurse in _blocks(model)
            for key, shape in _block_tensors(prefix, block, recurse, seen, shapes_only=True)}
    return split_torch_state_dict_into_shards(meta, max_shard_size=max_shard_size)


def _gathered(params):
    import deepspeed

    # modifier_rank=None: read-only; on exit every rank drops the gathered copy and keeps its shard.
    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)


def write_lm(lm: nn.Module, out_dir: Path, dtype: torch.dtype, max_shard_size: str | int, rank: int) -> list[str]:
    """Collective: stream ``lm``'s merged weights into ``out_dir``; returns the files rank 0 wrote."""
    from safetensors.torch import save_file

    from magdi_dist.model import unwrap_lm

    model = unwrap_lm(lm)
    plan = _shard_plan(model, dtype, max_shard_size)
    left = {name: set(keys) for name, keys in plan.filename_to_tensors.items()}
    pending: dict[str, dict[str, torch.Tensor]] = {name: {} for name in left}
    written, seen = [], set()
    for prefix, block, recurse in _blocks(model):
        with _gathered(block.parameters(recurse=recurse)):
            if rank != 0:
                continue  # the gather is collective; only rank 0 merges and writes
            for key, tensor in _block_tensors(prefix, block, recurse, seen, shapes_only=False):
                name = plan.tensor_to_filename[key]
                pending[name][key] = tensor.to(dtype=dtype, copy=True).contiguous()
                left[name].discard(key)
                if not left[name]:  # shard complete: write it and let it go
                    save_file(pending.pop(name), str(out_dir / name), metadata={"format": "pt"})
                    written.append(name)
    if rank == 0:
        if pending or any(left.values()):
            raise RuntimeError(f"export: tensors planned but never produced: {sorted(set().union(*left.values()))}")
        if plan.is_sharded:
            index = {"metadata": plan.metadata, "weight_map": plan.tensor_to_filename}
            (out_dir / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        config = copy.deepcopy(model.config)
        config.use_cache = True  # training turned the KV cache off; generation wants it
        config.architectures = [type(model).__name__]
        config.dtype = dtype
        config.save_pretrained(str(out_dir))
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(str(out_dir))
    return written


def staging_dir(out_dir: Path) -> Path:
    """Where an export is written before it is renamed to ``out_dir``: an existing ``out_dir`` is whole."""
    return out_dir.with_name(out_dir.name + ".partial")


def export(engine, cfg: MAGDiConfig, tokenizer, out_dir: Path, rank: int,
           training_questions: dict | None = None) -> Path:
    """Collective: every rank must call it (ZeRO-3 gathers involve all ranks). Written into
    ``staging_dir(out_dir)`` and renamed into place at the end, so a rank killed mid-export leaves no
    half export that a resumed (already finished) run would take for a whole one. ``training_questions``
    (the manifest's entry; None for shards from before it existed) goes to TRAINING_QUESTIONS."""
    from safetensors.torch import save_file

    from magdi_dist.model.build import DTYPES

    student = engine.module
    final, out_dir = out_dir, staging_dir(out_dir)
    if rank == 0:
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
    barrier()
    was_training = student.training
    student.eval()
    with torch.no_grad():
        write_lm(student.lm, out_dir, DTYPES[cfg.model.dtype], cfg.train.export_max_shard_size, rank)
        graph_modules = {"encoder": student.encoder, "scorer": student.scorer}
        with _gathered(p for m in graph_modules.values() for p in m.parameters()):
            if rank == 0:
                graph = {f"{name}.{k}": v.detach().to(DTYPES[cfg.model.dtype], copy=True).contiguous()
                         for name, m in graph_modules.items() for k, v in m.state_dict().items()}
                save_file(graph, str(out_dir / "graph_encoder.safetensors"))
    if rank == 0:
        (out_dir / "graph_encoder.json").write_text(json.dumps(_graph_encoder_config(student, cfg), indent=2))
        tokenizer.save_pretrained(str(out_dir))
        if training_questions is not None:  # --- contamination (issue 24 item 3) ---
            (out_dir / TRAINING_QUESTIONS).write_text(json.dumps(training_questions, indent=1) + "\n")
        if final.exists():
            shutil.rmtree(final)
        out_dir.rename(final)
    student.train(was_training)
    barrier()
    return final
