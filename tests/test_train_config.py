"""Config loading, validation and DeepSpeed preset filling (in-process, no worker starts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from magdi_dist.cli import app
from magdi_dist.config import ConfigError, config_hash, load_config
from magdi_dist.train.engine import build_ds_config, fill_auto, load_preset

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


@pytest.mark.parametrize(
    ("override", "key", "why"),
    [
        ("train.lr=-0.001", "train.lr", "learning rate must be > 0"),
        ("train.zero_stage=4", "train.zero_stage", "unknown ZeRO stage 4"),
        ("data.paths=/no/such/mags.jsonl", "data.paths", "data file not found"),
        ("train.learning_rate=0.1", "train.learning_rate", "unknown key"),
        ("model.hiden_size=3", "model.hiden_size", "unknown key"),
        ("train.deepspeed=zero9", "train.deepspeed", "neither a preset"),
    ],
)
def test_bad_values_fail_before_any_process_starts(tmp_path, override, key, why):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["train", "--config", str(TINY), "--nproc-per-node", "2", override, f"train.output_dir={out}"]
    )
    assert result.exit_code == 2, result.output
    assert f"{key}: " in result.output and why in result.output
    assert not out.exists(), "a worker started (it writes resolved_config.yaml first)"


def test_yaml_plus_overrides(tmp_path):
    cfg = load_config(TINY, ["train.lr=1e-4", "train.betas=[0.8, 0.9]", "data.synthetic.n=12",
                             "model.lora={r: 4}", "train.max_steps=null"])
    assert cfg.train.lr == 1e-4 and cfg.train.betas == (0.8, 0.9) and cfg.data.synthetic.n == 12
    assert cfg.model.lora.r == 4 and cfg.train.max_steps is None
    with pytest.raises(ConfigError, match="train.lr is a value"):
        load_config(TINY, ["train.lr.x=1"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(TINY, ["train.lr"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train": {"zero_stage": 7}, "data": {"max_len": 2}}))
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "train.zero_stage" in str(err.value) and "data.max_len" in str(err.value)  # all errors at once


def test_config_hash_is_stable_and_ignores_run_only_keys():
    base = load_config(TINY)
    assert config_hash(base) == config_hash(load_config(TINY))
    same = load_config(TINY, ["train.output_dir=/elsewhere", "train.stop_after=3", "train.save_every=7",
                              "train.progress=false", "train.keep_last_k=5"])
    assert config_hash(same) == config_hash(base)
    for change in ("train.lr=0.1", "train.seed=1", "model.gcn_layers=3", "data.max_len=64"):
        assert config_hash(load_config(TINY, [change])) != config_hash(base), change


@pytest.mark.parametrize("preset", ["zero0", "zero1", "zero2", "zero3", "zero3_offload"])
def test_presets_fill_every_auto(preset):
    cfg = load_config(TINY, [f"train.deepspeed={preset}", "train.precision=bf16", "train.grad_accum=3",
                             "train.weight_decay=0.1"])
    ds = fill_auto(load_preset(preset), cfg.train, world_size=2, hidden_size=128)
    assert "auto" not in json.dumps(ds)
    assert ds["train_batch_size"] == cfg.train.micro_batch_size * 3 * 2
    assert ds["bf16"]["enabled"] is True and ds["gradient_clipping"] == cfg.train.grad_clip
    assert ds["optimizer"]["params"] == {"lr": cfg.train.lr, "betas": [0.9, 0.999], "eps": 1e-8,
                                         "weight_decay": 0.1}
    # On CPU "auto" hands DeepSpeed a torch AdamW (no op build) and allows it under offload.
    on_cpu, choice = build_ds_config(cfg, 2, "cpu")
    assert choice == "torch_adamw" and "optimizer" not in on_cpu and not on_cpu["zero_force_ds_cpu_optimizer"]
    on_gpu, choice = build_ds_config(cfg, 2, "cuda")
    assert choice == "deepspeed" and on_gpu["optimizer"]["type"] == "AdamW"


def test_zero_stage_override_and_unfillable_auto(tmp_path):
    cfg = load_config(TINY, ["train.deepspeed=zero3_offload", "train.zero_stage=2"])
    ds, _ = build_ds_config(cfg, 1, "cpu")
    assert ds["zero_optimization"]["stage"] == 2 and "offload_param" not in ds["zero_optimization"]
    custom = tmp_path / "ds.json"
    custom.write_text(json.dumps({"zero_optimization": {"stage": 1, "allgather_bucket_size": "auto"}}))
    cfg = load_config(TINY, [f"train.deepspeed={custom}"])
    with pytest.raises(ValueError, match="zero_optimization.allgather_bucket_size"):
        build_ds_config(cfg, 1, "cpu")


def test_keys_lists_every_field_with_its_docstring():
    result = CliRunner().invoke(app, ["train", "--keys"])
    assert result.exit_code == 0, result.output
    assert "train.lr = 0.001\n    Peak learning rate (after warmup)." in result.output
    for key in ("model.lora.r", "data.synthetic.n", "train.zero_stage", "train.keep_last_k"):
        assert f"\n{key} = " in result.output, key


def test_zero3_buckets_follow_the_model_hidden_size():
    """ZeRO-3's buckets are "auto" and sized from the model (hidden^2, as the HF integration does),
    not a fixed 5e7 elements that ZeRO-3 allocates up front whatever the model."""
    cfg = load_config(TINY, ["train.deepspeed=zero3"])
    zero = fill_auto(load_preset("zero3"), cfg.train, world_size=2, hidden_size=4096)["zero_optimization"]
    assert zero["reduce_bucket_size"] == 4096 * 4096
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 4096 * 4096)
    assert zero["stage3_param_persistence_threshold"] == 40960
    # Validating a config before a model exists leaves them for initialize() to fill.
    ds, _ = build_ds_config(cfg, 2, "cpu")
    assert ds["zero_optimization"]["reduce_bucket_size"] == "auto"


@pytest.mark.parametrize(
    ("entry", "config", "override", "named"),
    [
        (["ray_jobs/preprocess.py"], "configs/tiny.yaml", "train.nope=1", "train.nope: unknown key"),
        (["ray_jobs/train.py"], "configs/tiny.yaml", "train.nope=1", "train.nope: unknown key"),
        (["ray_jobs/scaling_study.py"], "configs/study_tiny.yaml", "nope=1", "nope: unknown key"),
        (["-m", "magdi_dist.launch.rank"], "configs/tiny.yaml", "train.nope=1", "train.nope: unknown key"),
        (["-m", "magdi_dist.cli", "preprocess"], "configs/tiny.yaml", "train.nope=1", "train.nope: unknown key"),
        (["-m", "magdi_dist.cli", "study"], "configs/study_tiny.yaml", "nope=1", "nope: unknown key"),
    ],
)
def test_every_entry_point_names_a_bad_key_and_exits_2(entry, config, override, named):
    """Ray jobs, the training module and the CLI share config.exit_on_error: exit code 2 and the key,
    before Ray or any rank starts."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, *entry, "--config", config, override], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert named in proc.stderr


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_warmup_gives_step_one_a_learning_rate_then_decays_as_transformers(schedule):
    """Step 1 trains at lr/warmup (not 0), the peak is reached at step ``warmup``, and from there on the
    rate is transformers' own schedule of the same kind."""
    import transformers

    from magdi_dist.config import TrainConfig
    from magdi_dist.train.engine import build_scheduler

    warmup, total, lr = 4, 20, 1e-3

    def rates(make):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        sched, out = make(opt), []
        for _ in range(total):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    ours = rates(build_scheduler(TrainConfig(lr=lr, warmup_steps=warmup, schedule=schedule), total))
    theirs = rates(lambda opt: getattr(transformers, f"get_{schedule}_schedule_with_warmup")(
        opt, warmup, *([total] if schedule != "constant" else [])))
    assert ours[:warmup] == pytest.approx([lr * k / warmup for k in range(1, warmup + 1)])
    assert theirs[0] == 0.0  # what this replaces: a first step that learns nothing
    assert ours[warmup:] == pytest.approx(theirs[warmup:])
    assert all(r > 0 for r in ours[:-1])
