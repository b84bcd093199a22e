"""A LoRA run's checkpoints leave out the frozen base (``exclude_frozen_parameters``), and a run resumed
from one still ends with the uninterrupted run's weights, bit for bit: the base comes back from the
build, not from the checkpoint. One process, ZeRO-2 and ZeRO-3 (whose frozen weights DeepSpeed would
otherwise store as fp32 fragments, 4 bytes a parameter)."""

from __future__ import annotations

import json

import pytest
import torch
from launchers import assert_same_run, single_process, write_config

from magdi_dist.train.checkpoint import FROZEN, latest_checkpoint

pytestmark = pytest.mark.slow
LORA = "model.lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj]}"


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_lora_checkpoint_leaves_out_the_frozen_base_and_resumes_bitwise(tmp_path, stage):
    cfg = write_config(tmp_path / "small.yaml")
    common = [LORA, f"train.deepspeed={stage}", "train.save_every=3", "train.keep_last_k=2"]
    ref, run = tmp_path / "reference", tmp_path / "resumed"
    single_process(cfg, *common, f"train.output_dir={ref}")
    single_process(cfg, *common, f"train.output_dir={run}", "train.stop_after=3")
    ckpt = latest_checkpoint(run)
    assert ckpt.name == "step-000003" and not (run / "export").exists()

    state = json.loads((ckpt / "trainer_state.json").read_text())
    frozen = state[FROZEN]
    assert frozen["count"] > 0
    (module_file,) = ckpt.glob("*mp_rank_00_model_states.pt")
    saved = torch.load(module_file, map_location="cpu", weights_only=False)  # our own file, just written
    assert saved.get("frozen_param_fragments") is None, "the frozen base was stored as ZeRO fragments"
    # k_proj is no LoRA target: all of it is frozen base, in every layer.
    base_weights = [k for k in saved["module"] if "k_proj" in k]
    assert not base_weights, f"frozen base weights stored in the module state: {base_weights[:3]}"
    assert any("lora_A" in k for k in saved["module"]), "the trained adapters must be stored"

    single_process(cfg, *common, f"train.output_dir={run}", resume=True)
    assert_same_run(ref, run, f"LoRA {stage}, resumed from a checkpoint without its frozen base")
