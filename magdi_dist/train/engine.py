"""DeepSpeed engine: preset JSON + our config -> ``deepspeed.initialize``.

DeepSpeed itself does not resolve ``"auto"`` (only the HF Trainer integration does), so ``fill_auto``
replaces every "auto" from TrainConfig and fails on any it cannot fill.

What works on CPU (DS_ACCELERATOR=cpu, gloo), measured with deepspeed 0.19.8 / torch 2.13:
* torch.optim.AdamW as a *client* optimizer works at ZeRO 0, 1, 2, 3 and with CPU offload (offload
  needs ``zero_force_ds_cpu_optimizer: false``, else DeepSpeed insists on its own CPUAdam). No op build,
  and fp32 losses are bitwise identical across stages 0/1/2/3.
* DeepSpeedCPUAdam (ops/adam) works too but JIT-builds ``cpu_adam`` with gcc on first use (~2 min on 2
  cores, then cached in ~/.cache/torch_extensions).
* The preset's ``"type": "AdamW"`` block on CPU builds DeepSpeed's CPU ``fused_adam`` op (several
  minutes on 2 cores) -- so on CPU "auto" picks torch AdamW; on GPU it keeps the preset block
  (FusedAdam, or DeepSpeedCPUAdam under optimizer offload).
* bf16 works at every stage on CPU (fp16 needs mkldnn fp16 support: not offered here).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import torch

from magdi_dist.config import DS_PRESET_DIR, DS_PRESETS, MAGDiConfig, TrainConfig


def load_preset(name_or_path: str) -> dict:
    path = DS_PRESET_DIR / f"{name_or_path}.json" if name_or_path in DS_PRESETS else Path(name_or_path)
    return json.loads(path.read_text())


# ZeRO-3 sizes taken from the model, with the Hugging Face integration's "auto" rules. A fixed 5e7-
# element reduce bucket is sized for billion-parameter models: ZeRO-3 allocates it up front, 190.8 MiB
# per rank for tiny-20m, 60% of that model's whole ZeRO-0 state (docs/benchmarks.md). Bucket sizes
# only group elementwise reductions, so they change memory and message sizes, never the numbers.
MODEL_AUTO_KEYS = ("zero_optimization.reduce_bucket_size", "zero_optimization.stage3_prefetch_bucket_size",
                   "zero_optimization.stage3_param_persistence_threshold")


def model_auto_values(hidden_size: int) -> dict[str, int]:
    return {
        "zero_optimization.reduce_bucket_size": hidden_size * hidden_size,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden_size,
    }


def _auto_values(train: TrainConfig) -> dict[str, Any]:
    """The value of each fillable "auto" key, by its dotted path in the DeepSpeed config."""
    return {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "gradient_clipping": train.grad_clip,
        "bf16.enabled": train.precision == "bf16",
        "fp16.enabled": False,
        "optimizer.params.lr": train.lr,
        "optimizer.params.betas": list(train.betas),
        "optimizer.params.eps": train.eps,
        "optimizer.params.weight_decay": train.weight_decay,
    }


def fill_auto(preset: dict, train: TrainConfig, world_size: int, hidden_size: int | None = None) -> dict:
    """A copy of ``preset`` with every "auto" replaced and our settings enforced.

    Our config is the single source of truth: a preset that hard-codes a batch size or precision
    different from TrainConfig is overridden (otherwise the schedule, data position and logged batch
    would disagree with what DeepSpeed does). The ``MODEL_AUTO_KEYS`` need the model's hidden size;
    without it (validating a config before any model exists) they stay "auto".
    """
    values = _auto_values(train) | (model_auto_values(hidden_size) if hidden_size else {})
    out = copy.deepcopy(preset)

    def walk(node: dict, prefix: str) -> None:
        for key, val in node.items():
            path = f"{prefix}{key}"
            if isinstance(val, dict):
                walk(val, path + ".")
            elif val == "auto":
                if path in MODEL_AUTO_KEYS and hidden_size is None:
                    continue
                if path not in values:
                    raise ValueError(f"DeepSpeed config: no value for \"auto\" at {path}")
                node[key] = values[path]

    walk(out, "")
    out["train_micro_batch_size_per_gpu"] = train.micro_batch_size
    out["gradient_accumulation_steps"] = train.grad_accum
    out["train_batch_size"] = train.micro_batch_size * train.grad_accum * world_size
    out["gradient_clipping"] = train.grad_clip
    out.setdefault("bf16", {})["enabled"] = train.precision == "bf16"
    out.pop("fp16", None)
    out.pop("scheduler", None)  # the LR schedule is ours (build_scheduler), passed as a client callable
    zero = out.setdefault("zero_optimization", {})
    if train.zero_stage is not None:
        zero["stage"] = train.zero_stage
    if zero.get("stage", 0) not in (0, 1, 2, 3):
        raise ValueError(f"DeepSpeed config: unknown ZeRO stage {zero.get('stage')}")
    if zero.get("stage", 0) < 3:
        zero.pop("offload_param", None)  # only stage 3 partitions (and so can offload) parameters
    out.setdefault("steps_per_print", 10**9)  # our logger reports; silence DeepSpeed's own
    return out


def resolve_optimizer_choice(choice: str, accelerator: str) -> str:
    if choice == "auto":
        return "torch_adamw" if accelerator == "cpu" else "deepspeed"
    return choice


def _pin_memory_off(ds_config: dict) -> None:
    """Pinned host memory only helps host<->GPU copies; on the CPU accelerator it is pointless."""
    zero = ds_config.get("zero_optimization", {})
    for key in ("offload_optimizer", "offload_param"):
        if isinstance(zero.get(key), dict):
            zero[key]["pin_memory"] = False


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups: decayed matrices, undecayed biases / norm scales (ndim < 2).

    Frozen parameters (LoRA base weights) are left out: the optimizer never holds state for them.
    """
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """The multiplier of the peak lr for optimizer step ``step`` (0-based).

    Warmup is linear and counts steps from 1: step k < warmup trains at lr * (k + 1) / warmup, so the
    first step already learns (transformers' ``get_*_schedule_with_warmup`` give step 0 a rate of 0,
    a step that only costs time). After warmup the decay is transformers': cosine or linear from the
    peak to 0 over the remaining steps, or constant.
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def build_scheduler(train: TrainConfig, total_steps: int):
    """A callable optimizer -> LambdaLR (DeepSpeed calls it with its base optimizer, saves and restores
    the scheduler state in checkpoints and steps it once per optimizer step)."""
    from torch.optim.lr_scheduler import LambdaLR

    def make(optimizer):
        return LambdaLR(optimizer, lambda step: lr_factor(step, train.warmup_steps, total_steps, train.schedule))

    return make


def build_ds_config(cfg: MAGDiConfig, world_size: int, accelerator: str,
                    hidden_size: int | None = None) -> tuple[dict, str]:
    """(DeepSpeed config dict, optimizer choice actually used)."""
    ds_config = fill_auto(load_preset(cfg.train.deepspeed), cfg.train, world_size, hidden_size)
    choice = resolve_optimizer_choice(cfg.train.optimizer, accelerator)
    if choice == "torch_adamw":
        ds_config.pop("optimizer", None)
        # With offload DeepSpeed otherwise refuses a client optimizer that is not its CPUAdam.
        ds_config["zero_force_ds_cpu_optimizer"] = False
    elif "optimizer" not in ds_config:
        raise ValueError(f"train.optimizer=deepspeed but {cfg.train.deepspeed} has no optimizer block")
    if accelerator == "cpu":
        _pin_memory_off(ds_config)
    return ds_config, choice


def engine_config(cfg: MAGDiConfig, world_size: int, accelerator: str,
                  hidden_size: int | None) -> tuple[dict, str]:
    """(DeepSpeed config ready for ``deepspeed.initialize`` / ``zero.Init``, optimizer choice)."""
    ds_config, choice = build_ds_config(cfg, world_size, accelerator, hidden_size=hidden_size)
    zero = ds_config.get("zero_optimization", {})
    for key in [k for k, v in zero.items() if v == "auto"]:
        del zero[key]  # a model without a known hidden size: DeepSpeed's own default applies
    return ds_config, choice


def initialize(model: torch.nn.Module, train: TrainConfig, total_steps: int, ds_config: dict, optimizer: str):
    """(engine, ds_config) for ``ds_config`` and ``optimizer`` as ``engine_config`` made them (on a
    rank: the resolved run's). ``model`` is built on the host, or already partitioned under ZeRO-3's
    ``zero.Init`` with this same ``ds_config``; DeepSpeed moves it and partitions what is not yet."""
    import deepspeed

    client = None
    groups = param_groups(model, train.weight_decay)
    if optimizer == "torch_adamw":
        # foreach=False: the single-tensor loop is deterministic and the same code path on every rank.
        client = torch.optim.AdamW(groups, lr=train.lr, betas=tuple(train.betas), eps=train.eps,
                                   weight_decay=train.weight_decay, foreach=False)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=groups if client is None else None,
        optimizer=client,
        lr_scheduler=build_scheduler(train, total_steps),
        config=ds_config,
    )
    return engine, ds_config
