"""The streamed, sharded export (train/export.py) of a ZeRO-3 LoRA run on 2 real gloo ranks: Hugging
Face shards + index that ``from_pretrained`` loads, with the logits of the export written the way it
was before (consolidated state dict -> fresh student -> merge_and_unload -> save_pretrained)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from launchers import REPO, clean_env, write_config
from safetensors.torch import load_file

from magdi_dist.train.export import INDEX, export_weight_files

pytestmark = pytest.mark.slow

CONFIG = {
    "model": {"base": "tiny-20m", "gcn_hidden": 32, "lora": {"r": 8, "target_modules": ["q_proj", "v_proj"]}},
    "data": {"synthetic": {"n": 24}, "max_len": 64, "vocab_size": 400},
    "train": {"max_steps": 2, "micro_batch_size": 2, "lr": 3e-3, "warmup_steps": 1, "progress": False,
              "deepspeed": "zero3", "export_max_shard_size": "20MB"},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_sharded")
    cfg = write_config(root / "c.yaml", CONFIG)
    out = root / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "tests/jobs/export_reference.py", "--config", str(cfg), "--no-resume", f"train.output_dir={out}"]
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return out


def test_export_is_sharded_with_an_index(run):
    export = run / "export"
    index = json.loads((export / INDEX).read_text())
    files = export_weight_files(export)
    assert len(files) >= 4 and not (export / "model.safetensors").exists()
    n = len(files)
    assert [f.name for f in files] == [f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]
    keys = set()
    for f in files:
        assert f.stat().st_size < 21e6  # 20 MB cap; tiny-20m has no single tensor above it
        keys |= set(load_file(f))
    assert keys == set(index["weight_map"])
    assert not any("lora" in k or "base_layer" in k for k in keys)  # LoRA merged, plain names
    # The reference is one file; same tensors (save_pretrained also drops the tied lm_head).
    assert keys == set(load_file(run / "export_ref" / "model.safetensors"))
    assert {"graph_encoder.safetensors", "graph_encoder.json", "tokenizer.json", "config.json",
            "generation_config.json"} <= {p.name for p in export.iterdir()}


def test_sharded_export_loads_with_the_reference_logits(run):
    from transformers import AutoModelForCausalLM

    ours = AutoModelForCausalLM.from_pretrained(run / "export")
    ref = AutoModelForCausalLM.from_pretrained(run / "export_ref")
    assert ours.config.use_cache and ours.config.tie_word_embeddings
    ids = torch.randint(0, ours.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours(ids).logits, ref(ids).logits
    # Same weights: both gather the same partitions and merge W + scale * B @ A in fp32.
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    sd_a = {k: v for f in export_weight_files(run / "export") for k, v in load_file(f).items()}
    sd_b = load_file(run / "export_ref" / "model.safetensors")
    for key in sd_b:
        torch.testing.assert_close(sd_a[key], sd_b[key], rtol=0, atol=1e-6, msg=key)
