"""The capacity plan (launch/plan.py, model/shapes.py) and the pre-flight memory check of ``train``.

Checked against things outside the code under test: DeepSpeed's documented example figures (its
memory page, T5-3B on 1 node x 8 GPUs), real models built with real weights, the bytes autograd
actually saves (``saved_tensors_hooks``), and Meta's published Llama parameter counts."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psutil
import pytest
import torch
from launchers import REPO, SMALL, clean_env, write_config
from typer.testing import CliRunner

from magdi_dist.cli import app
from magdi_dist.config import ConfigError, LoraSpec, StudentConfig, config_from_dict, config_hash
from magdi_dist.launch.plan import GiB, Layout, activation_bytes, deepspeed_states, host_memory, preset_layout
from magdi_dist.launch.resolve import resolve_run
from magdi_dist.model import MAGDiStudent, load_lm
from magdi_dist.model.forward import lm_forward
from magdi_dist.model.losses import ntp_loss
from magdi_dist.model.shapes import student_shape

SPEC = {"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 160}
LLAMA3_70B = {"hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
              "intermediate_size": 28672, "vocab_size": 128256, "tie_word_embeddings": False}
LLAMA2_7B = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "intermediate_size": 11008,
             "vocab_size": 32000, "tie_word_embeddings": False}


def flow(d: dict) -> str:
    return json.dumps(d)  # JSON is YAML: an override value


@pytest.mark.parametrize(("layout", "device_gb", "host_gb"), [
    # DeepSpeed's memory page, "2851M total params, 32M largest layer params", 1 node x 8 GPUs, cold:
    (Layout(2, offload_optimizer=True), 5.31, 127.45),  # ZeRO-2 offload_optimizer=cpu
    (Layout(1), 15.93, 127.45),  # its ZeRO-2 "none" row: 4 N + 16 N / GPUs, ZeRO-1's partitioning
    # ZeRO-3 with zero_init=1: the trainer builds ZeRO-3 students under deepspeed.zero.Init.
    (Layout(3), 6.09, 1.43),  # offload_param=none, offload_optimizer=none
    (Layout(3, offload_optimizer=True), 0.78, 63.72),  # offload_param=none, offload_optimizer=cpu
    (Layout(3, offload_optimizer=True, offload_param=True), 0.12, 71.69),  # both cpu
])
def test_model_states_match_deepspeeds_documented_example(layout, device_gb, host_gb):
    dev, host = deepspeed_states(layout, int(2851e6), int(32e6), nodes=1, gpus_per_node=8)
    assert (round(dev / GiB, 2), round(host / GiB, 2)) == (device_gb, host_gb)


def test_presets_map_to_their_json():
    assert [preset_layout(n) for n in ("zero0", "zero1", "zero2", "zero3", "zero3_offload")] == [
        Layout(0), Layout(1), Layout(2), Layout(3), Layout(3, offload_optimizer=True, offload_param=True)]


@pytest.mark.parametrize("lora", [None, LoraSpec(r=4, alpha=8)])
def test_meta_counts_equal_the_real_students(lora):
    from deepspeed.runtime.zero.stage3 import model_to_params

    cfg = StudentConfig(base=SPEC, lora=lora, gcn_hidden=32)
    shape = student_shape(cfg, vocab_size=300)
    real = MAGDiStudent(cfg, lm=load_lm(SPEC, vocab_size=300, lora=lora))
    assert (shape.params, shape.largest_layer_params) == model_to_params(real)  # real tensors: data_ptr works
    assert shape.trainable_params == sum(p.numel() for p in real.parameters() if p.requires_grad)
    assert shape.trainable_params < shape.params if lora else shape.trainable_params == shape.params


def test_a_70b_plan_builds_no_weights():
    rss = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    shape = student_shape(StudentConfig(base=LLAMA3_70B, dtype="bfloat16"), vocab_size=1024)
    assert time.perf_counter() - t0 < 60  # ~1 s when the machine is idle
    assert psutil.Process().memory_info().rss - rss < 2 * GiB  # 141 GB of bf16 weights were never made
    assert shape.lm_params == 70_553_706_496  # Meta-Llama-3-70B
    assert shape.largest_layer_params == 128256 * 8192  # the (untied) embedding


def saved_for_backward(fn, module: torch.nn.Module) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of ``fn()``, but ``module``'s
    parameters (the weights a matmul saves for its input gradient are model states)."""
    weights = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in weights:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize("spec", [
    SPEC,
    {**SPEC, "hidden_size": 128, "num_attention_heads": 8, "intermediate_size": 352},
    {**SPEC, "hidden_size": 512, "num_attention_heads": 8, "intermediate_size": 1376},
])
@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("vocab", [500, 2000])  # 2000: the output head's share grows
def test_activation_estimate_matches_what_autograd_saves(spec, checkpointing, vocab):
    pairs, seq = 4, 64
    lm = load_lm(spec, vocab_size=vocab, gradient_checkpointing=checkpointing).train()
    ids = torch.randint(3, vocab, (2 * pairs, seq), generator=torch.Generator().manual_seed(0))

    def step():
        _, logits = lm_forward(lm, ids, torch.ones_like(ids), head_rows=pairs)
        return ntp_loss(logits, ids[:pairs])[0]

    measured = saved_for_backward(step, lm)
    acts = activation_bytes(student_shape(StudentConfig(base=spec), vocab), 2 * pairs, pairs, seq, 4, checkpointing)
    # "transient" (logits in flight, the layer a checkpointed backward rebuilds) is a peak, not saved.
    # docs/capacity.md says within 1%; measured -0.54% to +0.85% over these twelve cases.
    assert acts["decoder"] + acts["head"] == pytest.approx(measured, rel=0.01)


def test_plan_json_reports_deepspeeds_figures_and_what_fits():
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    result = CliRunner().invoke(app, ["plan", f"model.base={flow(LLAMA2_7B)}", "train.precision=bf16",
                                      "model.gradient_checkpointing=true", "train.micro_batch_size=1",
                                      "data.max_len=1024", "--gpus-per-node", "8", "--device-memory-gb", "80",
                                      "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout.strip().splitlines()[-1])
    n, big = plan["params"], plan["largest_layer_params"]
    assert plan["lm_params"] == 6_738_415_616  # Llama-2-7b
    presets = plan["presets"]
    assert presets["zero2"]["per_device_bytes"] == estimate_zero2_model_states_mem_needs(n, 8, 1, False)[1]
    assert presets["zero3"]["per_device_bytes"] == estimate_zero3_model_states_mem_needs(
        n, big, 8, 1, cpu_offload=False, cpu_offload_params=False, zero_init=True)[1]
    for name, offload in (("zero3", False), ("zero3_offload", True)):
        assert presets[name]["per_node_cpu_bytes"] == estimate_zero3_model_states_mem_needs(
            n, big, 8, 1, cpu_offload=offload, cpu_offload_params=offload, zero_init=True)[0]
    # 20 bytes per parameter on every GPU is 135 GB: only partitioning fits 80 GiB.
    assert [k for k, p in presets.items() if p["fits"]] == plan["fitting"] == ["zero1", "zero2", "zero3",
                                                                               "zero3_offload"]
    assert all(p["device_need_bytes"] == p["per_device_bytes"] + plan["activation_bytes"] for p in presets.values())


def test_lora_states_are_reported_next_to_deepspeeds():
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    args = ["plan", f"model.base={flow(LLAMA2_7B)}", "train.precision=bf16", "--gpus-per-node", "1",
            "--device-memory-gb", "40", "--json"]
    full = json.loads(CliRunner().invoke(app, args).stdout.strip().splitlines()[-1])
    lora = json.loads(CliRunner().invoke(app, [*args, "model.lora={r: 16}"]).stdout.strip().splitlines()[-1])
    # DeepSpeed's figure stays full fine-tuning's (of every parameter, the adapters included).
    assert lora["params"] - full["params"] == 32 * 2 * 16 * (4096 + 4096)  # r=16 on q_proj, v_proj
    assert lora["presets"]["zero2"]["per_device_bytes"] > full["presets"]["zero2"]["per_device_bytes"]
    # One 40 GiB GPU: full fine-tuning (135 GB of states) fits nowhere but offload; LoRA keeps a 16-bit
    # frozen base (13.5 GB) plus states of ~24M trainable parameters.
    assert full["fitting"] == ["zero3_offload"]
    assert lora["presets"]["zero0"]["lora_per_device_bytes"] < 15 * GiB and "zero0" in lora["fitting"]
    # Host: ZeRO-0/1/2 build the whole student on it either way; ZeRO-3 offload holds the trainable
    # parameters' states (DeepSpeed's zero.Init figure for them) and the 16-bit frozen base.
    t, n, big = lora["trainable_params"], lora["params"], lora["largest_layer_params"]
    assert all(lora["presets"][k]["lora_per_node_cpu_bytes"] == lora["presets"][k]["per_node_cpu_bytes"]
               for k in ("zero0", "zero1", "zero2", "zero3"))
    assert lora["presets"]["zero3_offload"]["lora_per_node_cpu_bytes"] == estimate_zero3_model_states_mem_needs(
        t, big, 1, 1, cpu_offload=True, cpu_offload_params=True, zero_init=True)[0] + 2 * (n - t)


def test_skip_memory_check_never_changes_the_config_hash():
    cfg = config_from_dict({})
    assert config_hash(cfg) == config_hash(config_from_dict({"train": {"skip_memory_check": True}}))


def _too_big_for_zero0(tmp_path):
    """A Llama sized from this machine's RAM: 2 CPU ranks under ZeRO-0 need ~40 N bytes (20 each),
    under ZeRO-1 ~24 N: N = RAM / 30 fails the first and fits the second, whatever the machine."""
    hidden, inter = 1024, 2816
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    layers = max(1, round(host_memory() / 30 / per_layer))
    tree = {**SMALL, "model": {**SMALL["model"], "base": {"hidden_size": hidden, "num_hidden_layers": layers,
                                                          "num_attention_heads": 8, "intermediate_size": inter}}}
    tree["train"] = {**SMALL["train"], "deepspeed": "zero0", "micro_batch_size": 1,
                     "output_dir": str(tmp_path / "run")}
    tree["data"] = {**SMALL["data"], "max_len": 32}
    return tree


def test_train_refuses_a_run_that_cannot_fit_before_any_rank_starts(tmp_path):
    cfg = write_config(tmp_path / "big.yaml", _too_big_for_zero0(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "magdi_dist.cli", "train", "--config", str(cfg),
                           "--nproc-per-node", "2"], cwd=REPO, env=clean_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    # Two ranks share this machine's RAM: the node is what overflows.
    assert "GiB per node under ZeRO stage 0" in proc.stderr and "train.deepspeed=zero1" in proc.stderr
    assert not (tmp_path / "run").exists(), "a rank or the data preparation started"


def test_skip_memory_check_lets_preflight_pass(tmp_path):
    tree = _too_big_for_zero0(tmp_path)

    def resolve():
        return resolve_run(config_from_dict(tree), world_size=2, accelerator="cpu", resume=True, check_memory=True)

    with pytest.raises(ConfigError, match="train.deepspeed=zero1"):
        resolve()
    tree["train"]["skip_memory_check"] = True
    resolve()


# Published parameter counts of the shipped configs' hub models (their model cards / config.json).
PUBLISHED_LM_PARAMS = {
    "mistralai/Mistral-7B-Instruct-v0.2": 7_241_732_096,
    "Qwen/Qwen2.5-0.5B-Instruct": 494_032_768,
    "meta-llama/Llama-3.2-1B-Instruct": 1_235_814_400,
}


@pytest.mark.parametrize("hub_id", sorted(PUBLISHED_LM_PARAMS))
def test_shipped_hub_shapes_are_the_published_ones(hub_id):
    shape = student_shape(StudentConfig(base=hub_id, dtype="bfloat16"), vocab_size=0)
    assert shape.lm_params == PUBLISHED_LM_PARAMS[hub_id]


def test_a_gpu_plan_needs_no_data_files_and_no_network(tmp_path):
    """configs/gpu_mistral7b.yaml names teacher files under /data and a hub model: neither is read."""
    import os

    assert not os.path.exists("/data/magdi/SQA_gpt4o_round_2.json")
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["plan", "--config", str(REPO / "configs" / "gpu_mistral7b.yaml"), "--nodes",
                                      "1", "--gpus-per-node", "8", "--device-memory-gb", "80", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout.strip().splitlines()[-1])
    # LoRA r=16 on q_proj and v_proj: A (in x r) + B (r x out) per projection, 32 layers; k/v are 8 x 128 wide.
    adapters = 32 * ((4096 * 16 + 16 * 4096) + (4096 * 16 + 16 * 1024))
    assert plan["lm_params"] == PUBLISHED_LM_PARAMS["mistralai/Mistral-7B-Instruct-v0.2"] + adapters
    assert plan["lora"] and "zero3" in plan["fitting"]
    assert time.perf_counter() - started < 60  # a hub download attempt alone retries for about a minute
