"""The run configuration: one typed tree (model / data / train) loaded from YAML plus ``key.sub=value``
overrides, validated before any process starts.

Every section forbids unknown keys, so a typo is an error naming the key instead of a silently ignored
setting. Field docstrings are the documentation (and CLI help). ``config_hash`` covers only what
changes the trained weights: a resumed run must hash the same as the run that wrote the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from magdi_dist.model import StudentConfig

DS_PRESET_DIR = Path(__file__).resolve().parent.parent / "ds_configs"
DS_PRESETS = ("zero0", "zero1", "zero2", "zero3", "zero3_offload")


from magdi_dist.preprocess.settings import PreprocessConfig  # noqa: E402 -- pydantic only


class ConfigError(ValueError):
    """A config that cannot run; the message names the offending key(s)."""


_Loaded = TypeVar("_Loaded")


def or_exit(load: Callable[..., _Loaded], *args: Any) -> _Loaded:
    """``load(*args)`` at an entry point (a CLI command, a ray_jobs script, ``python -m
    magdi_dist.train``): a ConfigError is printed (it names the key) and the process exits with code
    2, before any rank or Ray worker starts."""
    try:
        return load(*args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class SynthSpec(_Section):
    """Synthetic MAGs (magdi_dist.mag.synth) used when no data file is given."""

    n: int = Field(200, ge=1)
    """Number of synthetic questions (MAGs)."""
    agents: int = Field(3, ge=1)
    """Agents per discussion."""
    rounds: int = Field(3, ge=1)
    """Discussion rounds."""
    seed: int = 0
    """Generator seed (same seed, same MAGs)."""


class DataConfig(_Section):
    paths: list[str] = Field(default_factory=list)
    """MAG files (a single path is accepted too) in any format magdi_dist.mag.readers reads (magdi,
    debate, reconcile_pickle, jsonl); empty: generate synthetic MAGs from ``synthetic``."""
    format: str | None = None
    """Force the reader format of ``paths``; None detects it per file."""
    task: str | None = None
    """Force the task family of ``paths`` (yes_no, multiple_choice, numeric, math); None infers it."""
    synthetic: SynthSpec = Field(default_factory=SynthSpec)
    """Synthetic generator settings (used only when ``paths`` is empty)."""
    max_len: int = Field(256, ge=8)
    """Maximum tokens per chain (prompt + reasoning + eos); longer chains are cut at the end."""
    tokenizer: str = "train"
    """"train": train a byte-level BPE tokenizer on the training MAGs (saved to output_dir/tokenizer);
    otherwise a tokenizer directory or hub id."""
    vocab_size: int = Field(1024, ge=300)
    """Vocabulary of a locally trained tokenizer (byte alphabet 256 + specials + merges)."""
    features: Literal["frozen", "zero"] = "frozen"
    """Node features of the graph objective: ``frozen`` = the base student's pooled embeddings
    (MAGDi reference), ``zero`` = zeros (debugging; the GCN then only sees the graph structure)."""
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Fraction of MAGs held out for the eval loss (split by question, so no question leaks)."""
    split_seed: int = 0
    """Seed of the train/eval split."""

    @field_validator("paths", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return [value] if isinstance(value, str) else value

    @field_validator("paths")
    @classmethod
    def _paths_exist(cls, value: list[str]) -> list[str]:
        missing = [p for p in value if not Path(p).is_file()]
        if missing:
            raise ValueError(f"data file not found: {', '.join(missing)}")
        return value


class TrainConfig(_Section):
    seed: int = 0
    """Seed of data order, dropout and every other training-time randomness."""
    max_steps: int | None = Field(None, ge=1)
    """Optimizer steps to train; None: ``epochs`` passes over the training rows."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the training data when ``max_steps`` is None (fractions allowed)."""
    stop_after: int | None = Field(None, ge=1)
    """Stop (checkpoint and exit) after this step without changing the schedule: simulates a
    preemption; the run resumes to ``max_steps`` later. Not part of the config hash."""
    micro_batch_size: int = Field(4, ge=1)
    """Contrastive pairs per rank per micro-step (the LM sees 2x rows: positives and negatives)."""
    grad_accum: int = Field(1, ge=1)
    """Micro-steps per optimizer step. Global batch = micro_batch_size * grad_accum * world size."""
    lr: float = 1e-3
    """Peak learning rate (after warmup)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = Field(1e-8, gt=0)
    """AdamW epsilon."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW decoupled weight decay (not applied to biases and norm weights)."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warmup steps from 0 to ``lr``."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warmup: cosine or linear to 0 at the last step, or constant."""
    grad_clip: float = Field(1.0, ge=0)
    """Clip the global gradient norm to this value (0 disables)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Training precision; bf16 uses DeepSpeed's bf16 mode (fp32 master weights in the optimizer)."""
    deepspeed: str = "zero2"
    """DeepSpeed preset (zero0, zero1, zero2, zero3, zero3_offload) or a path to a DeepSpeed JSON;
    its "auto" values are filled from this section."""
    zero_stage: int | None = None
    """Override the preset's ZeRO stage (0-3)."""
    optimizer: Literal["auto", "torch_adamw", "deepspeed"] = "auto"
    """auto: torch AdamW on CPU, the preset's DeepSpeed optimizer (FusedAdam / CPUAdam) on GPU.
    torch_adamw: torch.optim.AdamW handed to DeepSpeed (works at every stage, no op build).
    deepspeed: the preset's optimizer block (builds a C++ op on first use)."""
    length_grouping: int = Field(8, ge=1)
    """Rows of similar length are batched together within windows of this many global batches
    (1 = plain shuffling); cuts padding without a fixed long-to-short order."""
    log_every: int = Field(1, ge=1)
    """Write metrics every this many steps."""
    eval_every: int = Field(0, ge=0)
    """Eval loss on the held-out split every this many steps (0: only at the end)."""
    eval_max_batches: int | None = Field(None, ge=1)
    """Cap the eval batches per rank (None: the whole held-out split)."""
    save_every: int = Field(0, ge=0)
    """Checkpoint every this many steps (0: only at the end)."""
    keep_last_k: int = Field(2, ge=1)
    """Complete checkpoints kept; older ones are deleted once a newer one is complete."""
    output_dir: str = "runs/magdi"
    """Checkpoints, metrics.jsonl, resolved_config.yaml, tokenizer and the export go here."""
    export: bool = True
    """Write the Hugging Face export (output_dir/export) at the end of training."""
    peak_flops: float | None = Field(None, gt=0)
    """Peak FLOP/s of one rank's device for MFU; None: measured with a matmul at startup."""
    progress: bool = True
    """Show a progress bar on rank 0."""

    @field_validator("lr")
    @classmethod
    def _positive_lr(cls, value: float) -> float:
        if not value > 0:
            raise ValueError(f"learning rate must be > 0, got {value}")
        return value

    @field_validator("zero_stage")
    @classmethod
    def _known_stage(cls, value: int | None) -> int | None:
        if value is not None and value not in (0, 1, 2, 3):
            raise ValueError(f"unknown ZeRO stage {value}; expected 0, 1, 2 or 3")
        return value

    @field_validator("deepspeed")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value in DS_PRESETS or Path(value).is_file():
            return value
        raise ValueError(f"{value!r} is neither a preset {list(DS_PRESETS)} nor a DeepSpeed JSON file")

    @model_validator(mode="after")
    def _stop_within(self) -> TrainConfig:
        if self.stop_after is not None and self.max_steps is not None and self.stop_after > self.max_steps:
            raise ValueError(f"stop_after={self.stop_after} is beyond max_steps={self.max_steps}")
        return self


class MAGDiConfig(_Section):
    model: StudentConfig = Field(default_factory=StudentConfig)
    """The student (magdi_dist.model.StudentConfig)."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Training data."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """Optimisation, DeepSpeed, logging and checkpointing."""
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    """How teacher files become Parquet shards (Ray Data): inputs, shard size, feature actors."""

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# Keys that never change the trained weights: a resume may change them freely.
_HASH_EXCLUDE = {
    "preprocess": {"concurrency", "batch_size", "actor_num_cpus", "num_gpus", "out_dir", "strict"},
    "train": {"stop_after", "log_every", "eval_every", "eval_max_batches", "save_every", "keep_last_k",
              "output_dir", "export", "peak_flops", "progress"},
}


def config_hash(cfg: MAGDiConfig) -> str:
    """Stable 16-hex-digit hash of everything that shapes the trained weights (canonical JSON)."""
    data = cfg.model_dump(mode="json")
    for section, keys in _HASH_EXCLUDE.items():
        for key in keys:
            data[section].pop(key, None)
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _sections(annotation) -> list[type[BaseModel]]:
    """Pydantic models inside a field annotation (``X``, ``X | None``)."""
    args = getattr(annotation, "__args__", None) or (annotation,)
    return [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]


def describe_config(model: type[BaseModel] = MAGDiConfig, prefix: str = "") -> str:
    """Every key with its default and docstring (``magdi-dist train --keys``)."""
    lines = []
    for name, field in model.model_fields.items():
        key, doc = f"{prefix}{name}", " ".join((field.description or "").split())
        subs = _sections(field.annotation)
        if subs:
            optional = " (optional section, default null)" if field.default is None else ""
            lines += [f"{key}{optional}\n    {doc}", describe_config(subs[0], key + ".")]
        else:
            default = json.dumps(field.get_default(call_default_factory=True), default=str)
            lines.append(f"{key} = {default}\n    {doc}")
    return "\n".join(lines)


def apply_override(tree: dict, item: str) -> None:
    """Apply one ``a.b.c=value`` (value parsed as YAML: 1e-3, true, [1, 2], null) in place."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r}: empty key component")
    node = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise ConfigError(f"override {item!r}: {where} is a value ({child!r}), not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {key}: {msg}")
    return "invalid config:\n" + "\n".join(lines)


def config_from_dict(tree: dict[str, Any]) -> MAGDiConfig:
    try:
        return MAGDiConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> MAGDiConfig:
    """YAML file (or defaults when None) + overrides -> validated config; errors name the key."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections (model, data, train)")
        tree = loaded
    for item in overrides:
        apply_override(tree, item)
    return config_from_dict(tree)
