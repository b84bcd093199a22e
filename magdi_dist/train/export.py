"""Hugging Face export: a directory ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained`` load.

Contents: model.safetensors + config.json + generation_config.json (the causal LM, LoRA merged),
the tokenizer files, graph_encoder.safetensors (GCN encoder ``encoder.*`` and scorer ``scorer.*``)
and graph_encoder.json (what is needed to rebuild them).

Consolidation is DeepSpeed's: ``engine.save_16bit_model`` gathers ZeRO-3 partitions layer by layer to
rank 0 (presets set stage3_gather_16bit_weights_on_model_save) and is the plain module state dict at
stages 0-2. Rank 0 then loads that state into a freshly built student on the host, which gives a
normal transformers model to merge LoRA into and ``save_pretrained``. The exported dtype is
model.dtype (bf16 training params are upcast exactly when model.dtype is float32).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from magdi_dist.config import MAGDiConfig
from magdi_dist.train.dist import barrier

GRAPH_ENCODER_FORMAT = 1


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


def write_export(student, cfg: MAGDiConfig, tokenizer, out_dir: Path) -> Path:
    """Write the export of a host-side ``MAGDiStudent`` holding the trained weights."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    lm = student.lm
    if cfg.model.lora is not None:
        lm = lm.merge_and_unload()  # W + BA folded in: a plain transformers model again
    lm.config.use_cache = True  # training turned the KV cache off; generation wants it
    lm.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    graph = {f"encoder.{k}": v for k, v in student.encoder.state_dict().items()}
    graph.update({f"scorer.{k}": v for k, v in student.scorer.state_dict().items()})
    save_file({k: v.detach().contiguous().cpu() for k, v in graph.items()},
              str(out_dir / "graph_encoder.safetensors"))
    (out_dir / "graph_encoder.json").write_text(json.dumps(_graph_encoder_config(student, cfg), indent=2))
    return out_dir


def export(engine, cfg: MAGDiConfig, tokenizer, out_dir: Path, rank: int) -> Path:
    """Collective: every rank must call it (ZeRO-3 consolidation gathers from all ranks)."""
    from magdi_dist.model import MAGDiStudent, unwrap_lm

    tmp = out_dir / ".consolidated"
    if rank == 0 and out_dir.exists():
        shutil.rmtree(out_dir)
    barrier()
    if not engine.save_16bit_model(str(tmp), "state.bin"):
        raise RuntimeError("DeepSpeed did not consolidate the weights (stage3_gather_16bit_weights_on_model_save)")
    barrier()
    if rank == 0:
        state = torch.load(tmp / "state.bin", map_location="cpu", weights_only=True)
        # Gradient checkpointing is a training-time setting; the fresh student only holds weights.
        # The GCN's input width is the frozen features' (model.feature_model may differ from the LM).
        first = next(v for k, v in state.items() if k.startswith("encoder.convs.0.") and v.ndim == 2)
        student = MAGDiStudent(cfg.model.model_copy(update={"gradient_checkpointing": False}),
                               tokenizer=tokenizer, feature_dim=int(first.shape[1]))
        missing, unexpected = student.load_state_dict(state, strict=False)
        # Tied embeddings may appear under one name only; anything else missing is a real error.
        is_tied = getattr(unwrap_lm(student.lm).config, "tie_word_embeddings", False)
        tied = {k for k in missing if k.endswith("lm_head.weight")} if is_tied else set()
        if set(missing) - tied or unexpected:
            raise RuntimeError(f"export: state dict mismatch: missing={missing} unexpected={unexpected}")
        student.eval()
        write_export(student, cfg, tokenizer, out_dir)
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    return out_dir
