"""ZeRO-3 construction under ``deepspeed.zero.Init`` (model/zero_init.py), on 2 real gloo ranks: each
rank's memory during construction is about its share of the model, and a seeded build gives exactly the
weights (LoRA adapters included) of the plain build."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from launchers import REPO, clean_env

pytestmark = pytest.mark.slow

CONFIG = {
    "model": {"base": "tiny-20m", "lora": {"r": 8, "target_modules": ["q_proj", "v_proj"]}},
    "data": {"synthetic": {"n": 40}, "max_len": 96, "vocab_size": 1024},
    "train": {"micro_batch_size": 1, "deepspeed": "zero3", "progress": False},
}


def _build_both(out, tree: dict) -> None:
    (out / "c.yaml").write_text(yaml.safe_dump(tree))
    env = clean_env()
    # glibc's mmap threshold slides up to 32 MiB after the first large free, after which freed
    # blocks of a few MiB (tiny-20m's per-module tensors) stay in the heap and the peak depends on
    # allocation order. Pinning it makes the measurement about tensors; a 1B model's per-module
    # tensors are above 32 MiB and are returned to the system either way.
    env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    for mode in ("plain", "zero3"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "tests/jobs/build_memory.py", mode, str(out), str(out / "c.yaml")]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    out = tmp_path_factory.mktemp("zero3_build")
    _build_both(out, CONFIG)
    return out


@pytest.fixture(scope="module")
def dir_builds(tmp_path_factory):
    """A save_pretrained directory (the layout of hub ids and GGUF-converted models): loaded by
    transformers' own ZeRO-3 path (``HfDeepSpeedConfig`` + ``from_pretrained``)."""
    from magdi_dist.model.build import load_lm

    out = tmp_path_factory.mktemp("zero3_dir_build")
    load_lm("tiny-5m", vocab_size=1024, seed=3).save_pretrained(out / "model")
    _build_both(out, {**CONFIG, "model": {**CONFIG["model"], "base": str(out / "model")}})
    return out


def _rank(out, mode: str, rank: int) -> dict:
    return json.loads((out / f"{mode}_rank{rank}.json").read_text())


def test_zero3_construction_holds_a_share_per_rank(builds):
    for rank in (0, 1):
        plain, zero3 = _rank(builds, "plain", rank), _rank(builds, "zero3", rank)
        assert plain["params"] == zero3["params"] > 19_000_000
        # Each rank keeps its half of every parameter (rounded up per tensor; LoRA is partitioned later
        # by deepspeed.initialize and counts whole here).
        assert zero3["local_numel"] < 0.51 * plain["local_numel"]
        # The plain build's peak growth is the whole fp32 model; the partitioned one is its half plus
        # the largest module while it is built or initialised (measured 0.65x on this machine).
        assert plain["growth_kib"] * 1024 > 0.9 * 4 * plain["params"]
        assert zero3["growth_kib"] < 0.7 * plain["growth_kib"], (plain, zero3)


@pytest.mark.parametrize("which", ["builds", "dir_builds"])
def test_zero3_build_has_the_plain_builds_weights(which, request):
    out = request.getfixturevalue(which)
    plain = torch.load(out / "plain_state.pt", weights_only=True)
    zero3 = torch.load(out / "zero3_state.pt", weights_only=True)
    assert _rank(out, "zero3", 1)["local_numel"] < 0.51 * _rank(out, "plain", 1)["local_numel"]
    assert plain.keys() == zero3.keys()
    assert any("lora_A" in k for k in plain) and any(k.startswith("encoder.") for k in plain)
    for key in plain:
        assert torch.equal(plain[key], zero3[key]), key


@pytest.mark.parametrize("lora", [None, "{r: 4, alpha: 8, target_modules: [q_proj, v_proj]}"])
def test_bf16_student_built_under_zero_init_trains_in_bf16(tmp_path, lora):
    """bf16 under ZeRO-3: zero.Init makes the LM's weights bf16, but the GCN, the scorer (partitioned
    whole) and the LoRA adapters (added after the context) are built fp32 and must be cast as the engine
    casts what it partitions: in full fine-tuning DeepSpeed's optimizer otherwise finds two dtypes in one
    group and stops; with LoRA every trainable weight would silently stay fp32."""
    from launchers import SMALL, losses, torchrun, write_config

    out = tmp_path / "bf16"
    extra = [f"model.lora={lora}"] if lora else []
    torchrun(write_config(tmp_path / "small.yaml", SMALL), f"train.output_dir={out}", "train.deepspeed=zero3",
             "train.precision=bf16", "train.max_steps=2", "train.save_every=2", *extra)
    assert len(losses(out)) == 2 and all(np.isfinite(losses(out)))
    # The saved partitions are the bf16 weights the ranks trained (fp32 masters live in the optimizer).
    states = torch.load(next((out / "checkpoints").glob("step-*/zero_pp_rank_0_mp_rank_00_model_states.pt")),
                        weights_only=False)
    dtypes = {str(v.dtype) for k, v in states["module"].items() if "lora" in k or k.startswith(("encoder", "scorer"))}
    assert dtypes == {"torch.bfloat16"}, dtypes


def test_zero3_sub_groups_change_memory_not_numbers(tmp_path):
    """The ZeRO-3 presets step the optimizer in sub-groups (``sub_group_size``): the fp32 gradient and
    the optimizer's temporaries then exist for one sub-group at a time, which is what let the ~1B run
    fit (docs/benchmarks.md). Cutting the partition into one sub-group per parameter must train the
    same weights as one group; only the gradient norm's summation order differs."""
    from launchers import SMALL, losses, single_process, write_config
    from safetensors.torch import load_file

    preset = json.loads((REPO / "ds_configs" / "zero3.json").read_text())
    # The preset really sub-groups a rank's partition of the ~1B benchmark student on 2 ranks.
    assert preset["zero_optimization"]["sub_group_size"] < 0.892e9 / 2
    preset["zero_optimization"]["sub_group_size"] = 1  # every parameter its own sub-group
    (tmp_path / "many.json").write_text(json.dumps(preset))
    config = write_config(tmp_path / "small.yaml", SMALL)
    runs = {}
    for name, ds in (("one", "zero3"), ("many", str(tmp_path / "many.json"))):
        runs[name] = tmp_path / name
        single_process(config, f"train.output_dir={runs[name]}", f"train.deepspeed={ds}", "train.max_steps=4")
    np.testing.assert_allclose(losses(runs["many"]), losses(runs["one"]), rtol=1e-5)
    one = load_file(runs["one"] / "export" / "model.safetensors")
    many = load_file(runs["many"] / "export" / "model.safetensors")
    assert one.keys() == many.keys()
    for key in one:
        torch.testing.assert_close(many[key], one[key], rtol=1e-5, atol=1e-6)
