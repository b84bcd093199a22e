"""Single-process runs through the CLI with no rank env vars: the tiny config's golden losses, and LoRA
+ gradient checkpointing + bf16 + gradient accumulation + ZeRO-3 with CPU offload on real teacher MAGs,
ending in a merged, loadable export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from launchers import REPO, SMALL, losses, single_process, write_config
from safetensors.torch import load_file
from transformers import AutoTokenizer

pytestmark = pytest.mark.slow

# configs/tiny.yaml, first 3 steps, 1 process, 1 intra-op thread (tests/conftest.py sets
# OMP_NUM_THREADS=1), recorded with torch 2.13 CPU on x86-64. The first step depends only on data,
# tokenizer, init and the loss; steps 2-3 add two AdamW updates (warmup: steps 1-3 have the same LR
# whatever max_steps is, so these are the full config's first losses too). Not bitwise across
# machines: another CPU ISA or thread count changes float summation order (~1e-6 relative); a real
# change to data, tokenizer, init or objective moves these by > 1e-2. Hence rtol 1e-4.
GOLDEN = [7.868760108947754, 7.361805438995361, 7.106279373168945]


def test_tiny_config_golden_losses_single_process_without_rank_env(tmp_path):
    out = tmp_path / "tiny"
    proc = single_process(REPO / "configs" / "tiny.yaml", "train.max_steps=3", f"train.output_dir={out}",
                          "train.progress=false")
    assert "# resolved config, config_hash" in proc.stdout  # the resolved config is printed ...
    assert (out / "resolved_config.yaml").is_file()  # ... and saved next to the checkpoints
    # DeepSpeed's inference-only shared-memory op is not compiled for training (train/dist.py)
    assert "deepspeed_shm_comm" not in proc.stdout + proc.stderr
    np.testing.assert_allclose(losses(out), GOLDEN, rtol=1e-4)
    assert (out / "checkpoints" / "step-000003" / "COMPLETE").is_file()
    assert (out / "export" / "model.safetensors").is_file()


def test_lora_bf16_accumulation_zero3_offload_export_on_real_mags(tmp_path, shared_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from magdi_dist.model import load_lm

    out = tmp_path / "lora"
    cfg = write_config(tmp_path / "small.yaml", SMALL)
    teacher = shared_data / "mag" / "magdi_layout"  # real GPT-4o discussions, two task families
    files = f"[{teacher / 'GSM8k_gpt4o_round_2.json'}, {teacher / 'SQA_gpt4o_round_2.json'}]"
    single_process(cfg, f"data.paths={files}", f"train.output_dir={out}", "train.deepspeed=zero3_offload",
                   "train.max_steps=4",
                   "model.lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj]}",
                   "model.gradient_checkpointing=true", "train.precision=bf16", "train.grad_accum=2")
    assert len(losses(out)) == 4
    export = out / "export"
    weights = load_file(export / "model.safetensors")
    assert not any("lora" in k for k in weights), "adapters must be merged, not exported as such"
    tok = AutoTokenizer.from_pretrained(export)
    # bf16 training holds the frozen base in bf16; the export (model.dtype float32) upcasts it exactly.
    base = {k: v.bfloat16().float() for k, v in load_lm(SMALL["model"]["base"], tokenizer=tok).state_dict().items()}
    q, k = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"
    assert torch.equal(weights[k], base[k]), "a frozen, un-adapted weight changed"
    assert not torch.equal(weights[q], base[q]), "the trained adapter was not merged into q_proj"
    model = AutoModelForCausalLM.from_pretrained(export)
    ids = tok("Question: Ben has 5 pens.\nAnswer: ", return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] > ids["input_ids"].shape[1]


def test_student_trains_on_features_of_another_model(tmp_path):
    """model.feature_model: the GCN reads the feature model's width (48), not the student's (64)."""
    import json

    out = tmp_path / "fm"
    cfg = write_config(tmp_path / "small.yaml", SMALL)
    single_process(cfg, f"train.output_dir={out}", "train.max_steps=2",
                   "model.feature_model={hidden_size: 48, num_hidden_layers: 1, num_attention_heads: 2, "
                   "intermediate_size: 96}")
    assert len(losses(out)) == 2
    assert json.loads((out / "export" / "graph_encoder.json").read_text())["in_dim"] == 48
    assert json.loads((out / "shards" / "manifest.json").read_text())["feature_dim"] == 48


def test_zero_steps_evaluates_and_exports_the_untrained_student(tmp_path):
    """``train.max_steps=0`` (an ablation's baseline cell): no optimizer step, but the held-out loss is
    measured as for a trained cell and the export holds exactly the initial weights."""
    import json

    from magdi_dist.model import load_lm

    out = tmp_path / "base"
    cfg = write_config(tmp_path / "small.yaml", SMALL)
    single_process(cfg, "train.max_steps=0", f"train.output_dir={out}", "data.synthetic.n=80")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
               if line.startswith("{")]
    assert not [r for r in records if "loss" in r and "eval_loss" not in r]  # no training step
    evals = [r for r in records if "eval_ntp_loss" in r]
    assert len(evals) == 1 and evals[0]["step"] == 0 and evals[0]["eval_ntp_loss"] > 0
    tok = AutoTokenizer.from_pretrained(out / "export")
    initial = load_lm(SMALL["model"]["base"], tokenizer=tok, seed=0).state_dict()
    exported = load_file(str(out / "export" / "model.safetensors"))
    assert exported.keys() <= initial.keys() and len(exported) > 4
    for name, tensor in exported.items():
        torch.testing.assert_close(tensor, initial[name], rtol=0, atol=0)
