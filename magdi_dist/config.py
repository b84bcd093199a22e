"""The run configuration: one typed tree (model / data / train / preprocess) loaded from YAML plus
``key.sub=value`` overrides, validated before any process starts. The top of the package: it imports
nothing from the packages it configures.

Every section forbids unknown keys, so a typo is an error naming the key instead of a silently ignored
setting. Field docstrings are the documentation (and CLI help). ``config_hash`` covers only what
changes the trained weights: a resumed run must hash the same as the run that wrote the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from magdi_dist.config_loader import (
    CONFIG_DIR,
    ConfigError,
    apply_override,
    exit_on_error,
    load_yaml_config,
    or_exit,
    validate_config,
)
from magdi_dist.storage import is_uri, join

# The loader, re-exported: ``from magdi_dist.config import ConfigError`` is how the packages name it.
__all__ = ["CONFIG_DIR", "ConfigError", "apply_override", "exit_on_error", "load_yaml_config", "or_exit",
           "validate_config"]

DS_PRESET_DIR = Path(__file__).resolve().parent.parent / "ds_configs"
DS_PRESETS = ("zero0", "zero1", "zero2", "zero3", "zero3_offload")


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


class LoraSpec(_Section):
    """LoRA adapters (peft). Defaults are the reference MAGDi run's (r=16, alpha=32, q/v projections)."""

    r: int = Field(16, ge=1)
    """Rank of the low-rank update."""
    alpha: int = Field(32, ge=1)
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    """Dropout on the LoRA branch input."""
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])
    """Names of the linear modules that get adapters (Llama/Mistral naming by default)."""


class StudentConfig(_Section):
    """The student model and its training objective."""

    base: str | dict[str, Any] = "tiny-5m"
    """Causal LM: a hub id (e.g. mistralai/Mistral-7B-Instruct-v0.2), a local directory, a .gguf file or
    GGUF preset (smollm2-135m-instruct; dequantized once into a cached safetensors directory), a tiny
    preset (tiny-1m, tiny-5m, tiny-20m) or a dict of LlamaConfig fields (may name a preset to override)."""
    seed: int = 0
    """Initialisation seed of a tiny LM, the graph encoder and the scorer."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype the LM weights are loaded in (the graph encoder and scorer stay float32)."""
    trust_remote_code: bool = False
    """Allow a hub model to run its own Python code. Off unless you trust the repository."""
    lora: LoraSpec | None = None
    """Train LoRA adapters instead of the full LM (the graph encoder and scorer are always trained)."""
    gradient_checkpointing: bool = False
    """Recompute decoder activations in the backward pass (less memory, ~30% more compute)."""
    graph_features: Literal["frozen", "live"] = "frozen"
    """frozen: node features from the base student, the node loss trains only the GCN (reference).
    live: this batch's chains replace their nodes' features, so the node loss trains the LM too."""
    feature_model: str | dict[str, Any] | None = None
    """frozen only: compute the node features with this model instead of the student's own untrained
    base (same forms as ``base``; tiny presets are seeded with ``seed``). A study names one for every
    cell so every size's graph objective sees the same features, and a from-scratch student gets
    informative ones from a pretrained model. None: the student's base (the reference)."""
    live_extra_nodes: int = Field(0, ge=0)
    """live only: run up to this many more nodes per graph through the LM (bounded extra compute)."""
    live_node_max_tokens: int = Field(256, ge=1)
    """live only: token budget of each extra node (collate truncates to it)."""
    lm_passes: Literal["auto", "one", "split"] = "auto"
    """How the positive rows and the negatives a loss reads go through the LM. one: a single pass, every
    row padded to the longest of either; split: two passes, each padded to its own longest row (fewer
    padded positions, but two parameter gathers per step under ZeRO-3). auto: one under ZeRO-3 on more
    than one rank, split otherwise (decided when training starts)."""
    pooling: Literal["weighted_mean", "mean"] = "weighted_mean"
    """Sequence embedding for the scorer and node features: position-weighted mean (reference) or mean."""
    gcn_layers: int = Field(2, ge=1)
    """GCN layers of the graph encoder (each adds one round of message passing)."""
    gcn_hidden: int = Field(512, ge=1)
    """Hidden size of the GCN layers."""
    gcn_dropout: float = Field(0.5, ge=0.0, lt=1.0)
    """Dropout after each GCN layer."""
    scorer_hidden: int | None = None
    """Hidden size of the scorer MLP (None: the LM hidden size, as the reference)."""
    ntp_weight: float = Field(1.0, ge=0.0)
    """Weight of the next-token loss on correct chains (alpha)."""
    node_weight: float = Field(1.0, ge=0.0)
    """Weight of the node-classification loss (beta)."""
    margin_weight: float = Field(0.1, ge=0.0)
    """Weight of the margin ranking loss between correct and incorrect chains (gamma)."""
    margin: float = Field(1.0, ge=0.0)
    """Margin of the ranking loss (scores are tanh outputs in [-1, 1])."""
    answer_only_loss: bool = False
    """NTP only on the final answer sentence ("The answer is X." + eos) instead of the whole chain.
    The prompt is never a target. Applied when rows are built (RowConfig.answer_only_loss)."""


    @model_validator(mode="after")
    def _features_from_one_place(self) -> StudentConfig:
        if self.feature_model is not None and self.graph_features == "live":
            raise ValueError("feature_model is for frozen graph features; live features are the student's own")
        return self


class PreprocessConfig(_Section):
    """The ``preprocess`` section of the run config (``MAGDiConfig.preprocess``): how teacher files
    become Parquet shards. Reader format and task come from ``data``; the tokenizer and the frozen
    base student from ``data.tokenizer`` and ``model``."""

    inputs: list[str] = Field(default_factory=list)
    """Teacher transcript files or glob patterns, in any supported format; empty: ``data.paths``, or
    the synthetic MAGs of ``data.synthetic`` written to a file first."""
    out_dir: str | None = None
    """Shards, their tokenizer, rejects and ``manifest.json``; None: ``<train.output_dir>/shards``."""
    strict: bool = False
    """Fail on the first bad record instead of writing it, with its reason, to the rejects file."""

    # --- content: part of the fingerprint ---
    records_per_shard: int = Field(1024, ge=1)
    """MAGs per shard: a big file becomes a fixed split of shards (files are the unit of work)."""
    feature_batch_size: int = Field(32, ge=1)
    """Node texts per forward pass of the frozen student. Batches are cut inside one shard, in a
    fixed order, so which texts share a padded batch never depends on scheduling."""
    torch_threads: int = Field(1, ge=1)
    """Threads per feature actor. Kept in the fingerprint: a CPU matmul's summation order can follow
    its thread count, and the shard hashes promise bit-equal features."""
    row_group_rows: int = Field(256, ge=1)
    """Parquet row-group size (rows)."""

    # --- run: not part of the fingerprint ---
    concurrency: int = Field(1, ge=1)
    """Feature actors in the pool."""
    batch_size: int = Field(1, ge=1)
    """Shards per actor call (Ray Data batch)."""
    actor_num_cpus: float = Field(1.0, gt=0)
    """CPUs Ray reserves per feature actor."""
    num_gpus: float | None = None
    """GPUs per feature actor; None: 1 when the cluster has GPUs, else 0."""


class DataConfig(_Section):
    paths: list[str] = Field(default_factory=list)
    """MAG files (a single path is accepted too) in any format magdi_dist.mag.readers reads (magdi,
    debate, reconcile_pickle, jsonl); empty: generate synthetic MAGs from ``synthetic``. Checked when
    the data is prepared, not when the config loads: a capacity plan needs no data."""
    format: str | None = None
    """Force the reader format of ``paths``; None detects it per file."""
    task: str | None = None
    """Force the task family of ``paths`` (yes_no, multiple_choice, numeric, math); None infers it."""
    synthetic: SynthSpec = Field(default_factory=SynthSpec)
    """Synthetic generator settings (used only when ``paths`` is empty)."""
    max_mags: int | None = Field(None, ge=1)
    """Use only the first N MAGs of the inputs (files in sorted order, records in file order), written
    once as one input file under the shards folder; frozen features, rows and the split see only those.
    For smoke runs and budgets; None: every MAG."""
    max_len: int = Field(256, ge=8)
    """Maximum tokens per chain (prompt + reasoning + eos); longer chains are cut at the end."""
    tokenizer: str = "train"
    """"train": train a byte-level BPE tokenizer on the training questions' MAGs (saved with the shards,
    ``<shards>/tokenizer``); otherwise a tokenizer directory, hub id, .gguf file or GGUF preset (the
    tokenizer and chat template inside it). A tokenizer with a chat template gets chat prompts."""
    vocab_size: int = Field(1024, ge=300)
    """Vocabulary of a locally trained tokenizer (byte alphabet 256 + specials + merges)."""
    clean_chains: bool = True
    """Drop the sentences of teacher reasoning that talk about the discussion ("Based on the other
    agents' solutions ...", "I agree with ...") before anything is built from it: NTP targets,
    negatives and node features alike (magdi_dist/mag/clean.py). At test time there are no peers."""
    chain_patterns: list[str] | None = None
    """Regexes (case-insensitive, searched per sentence) that mark a sentence for removal; None: the
    defaults in magdi_dist/mag/clean.py, written against the shared real transcripts."""
    features: Literal["frozen", "zero"] = "frozen"
    """Node features of the graph objective: ``frozen`` = the base student's pooled embeddings
    (MAGDi reference), ``zero`` = zeros (debugging; the GCN then only sees the graph structure)."""
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of questions held out for the eval loss. A question (its text, whitespace-normalised, so
    the same question in two teacher files is one question) is held out when its seeded hash falls
    below this fraction: the share is approximate, and adding input files never moves a question
    between train and held-out. The split is recorded in the shards' manifest."""
    split_seed: int = 0
    """Seed of the train/held-out split."""

    @field_validator("paths", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return [value] if isinstance(value, str) else value


class TrainConfig(_Section):
    seed: int = 0
    """Seed of data order, dropout and every other training-time randomness."""
    max_steps: int | None = Field(None, ge=0)
    """Optimizer steps to train; None: ``epochs`` passes over the training rows; 0: no step, the
    untrained student is evaluated and exported (the baseline of an ablation)."""
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
    verify_checkpoints: Literal["hash", "size", "off"] = "hash"
    """What a resume checks of the checkpoint it takes against the sizes and hashes its marker
    recorded: ``hash`` reads every file once, ``size`` only stats them. One that fails is set aside
    (``step-N.corrupt``) and the previous complete one is taken; none left: the run stops (exit 2)."""
    output_dir: str = "runs/magdi"
    """Checkpoints, metrics.jsonl, resolved_config.yaml, tokenizer and the export go here."""
    export: bool = True
    """Write the Hugging Face export (output_dir/export) at the end of training."""
    export_max_shard_size: str = "5GB"
    """Largest safetensors file of the export ("2GB", "500MB"): a larger LM is written as Hugging Face
    shards + model.safetensors.index.json, streamed a block at a time (train/export.py)."""
    peak_flops: float | None = Field(None, gt=0)
    """Peak FLOP per wall-clock second of one rank's device, the denominator of MFU (whose numerator is
    the step's FLOPs per wall-clock second); None: measured with a matmul at startup."""
    progress: bool = True
    """Show a progress bar on rank 0."""
    skip_memory_check: bool = False
    """Start even when the capacity plan (``magdi-dist plan``) says the run cannot fit this machine's
    memory under its ZeRO preset (the check runs before any rank starts, for local runs)."""

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
              "verify_checkpoints", "output_dir", "export", "export_max_shard_size", "peak_flops", "progress",
              "skip_memory_check"},
}


def config_hash(cfg: MAGDiConfig) -> str:
    """Stable 16-hex-digit hash of everything that shapes the trained weights (canonical JSON)."""
    data = cfg.model_dump(mode="json")
    for section, keys in _HASH_EXCLUDE.items():
        for key in keys:
            data[section].pop(key, None)
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


STORAGE_ENV = "MAGDI_STORAGE"
# Where Ray unpacks a submitted job's --working-dir; deleted when the session ends.
_RAY_WORKING_DIR_COPY = "/runtime_resources/working_dir_files/"


def storage_root(storage: str | Path | None = None) -> str | None:
    """The root that relative output paths resolve against: ``storage`` (an entry point's
    ``--storage``), else ``$MAGDI_STORAGE``, else None (the current directory). An object-store URI
    (``s3://bucket/prefix``) stays a URI (storage.py)."""
    chosen = storage or os.environ.get(STORAGE_ENV)
    if not chosen:
        return None
    return str(chosen).rstrip("/") if is_uri(chosen) else str(Path(chosen).expanduser().resolve())


def durable_path(path: str, storage: str | Path | None = None, *, key: str = "output path") -> str:
    """``path`` as an absolute path or URI where outputs survive the process that wrote them.

    A URI is kept. Relative paths resolve against the storage root. Without one they resolve against
    the current directory, except inside the copy of the working dir that ``ray job submit`` unpacks
    for a job: Ray deletes that copy, so there a relative output path is refused (naming ``key``)."""
    if is_uri(path) or Path(path).is_absolute():
        return path
    root = storage_root(storage)
    if root is not None:
        return join(root, path)
    cwd = Path.cwd()
    if _RAY_WORKING_DIR_COPY in f"{cwd}/":
        raise ConfigError(
            f"{key}={path!r} is relative, and this process runs in Ray's temporary copy of the "
            f"working dir ({cwd}), which Ray deletes: name a storage root with --storage DIR or "
            f"{STORAGE_ENV}=DIR (shared by every node, or an object store: s3://bucket/prefix), or give "
            "an absolute path"
        )
    return str(cwd / path)


def with_durable_outputs(cfg: MAGDiConfig, storage: str | Path | None = None) -> MAGDiConfig:
    """``cfg`` with ``train.output_dir`` and ``preprocess.out_dir`` made absolute (``durable_path``):
    every launcher calls this first, so ranks, Ray workers and restarts all see one directory. Input
    paths are left as given (a job reads them from its working dir)."""
    train = cfg.train.model_copy(update={"output_dir": durable_path(cfg.train.output_dir, storage,
                                                                      key="train.output_dir")})
    pre = cfg.preprocess
    if pre.out_dir is not None:
        pre = pre.model_copy(update={"out_dir": durable_path(pre.out_dir, storage, key="preprocess.out_dir")})
    return cfg.model_copy(update={"train": train, "preprocess": pre})


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
            default = ("(required)" if field.is_required()
                       else json.dumps(field.get_default(call_default_factory=True), default=str))
            lines.append(f"{key} = {default}\n    {doc}")
    return "\n".join(lines)


def config_from_dict(tree: dict[str, Any]) -> MAGDiConfig:
    return validate_config(MAGDiConfig, tree)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> MAGDiConfig:
    """YAML file (or defaults when None) + overrides -> validated run config; errors name the key."""
    return load_yaml_config(MAGDiConfig, path, overrides)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (GGUF students and shards run to GBs).

    The one file hasher (shards, GGUF conversions, input stamps, study data hashes); here because
    this is the one module every package may import.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
