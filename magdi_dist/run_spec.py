"""The resolved run: everything a rank needs that is decided once, on the driver.

``launch.resolve.resolve_run`` builds a ``RunSpec`` from a validated config (durable output paths,
the world size and accelerator the ranks will have, the checkpoints already there), and
``launch.resolve.with_data`` adds the prepared shards. The driver writes it as
``<output_dir>/run.json`` and every launcher hands the ranks that and nothing else: torchrun ranks
read the file (``python -m magdi_dist.launch.rank --run-file PATH``), Ray Train workers get the object
itself. ``train/`` reads a spec, never builds one: the DeepSpeed config, the optimizer, ``lm_passes``
and the model's shape are not worked out again on a rank.

This module imports only ``config``: it is plain data, below every package that reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from magdi_dist.config import MAGDiConfig, config_hash
from magdi_dist.storage import join, read_bytes, write_bytes

RUN_FILE = "run.json"
RESOLVED_CONFIG = "resolved_config.yaml"
RUN_SPEC_VERSION = 1


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ModelShape(_Frozen):
    """The student's sizes, counted on the meta device before any weight exists (model/shapes.py)."""

    hidden_size: int
    """The LM's hidden size: ZeRO-3's bucket sizes need it before the model is built under zero.Init."""
    params: int
    trainable_params: int
    lm_params: int
    largest_layer_params: int
    vocab_size: int
    """The vocabulary the shape was counted with (a trained tokenizer's target size for tiny LMs)."""


class RunData(_Frozen):
    """The prepared shards this run trains on."""

    manifest: str
    """Absolute path of the shards' manifest.json."""
    fingerprint: str
    """The manifest's fingerprint: a rank refuses shards that changed after the run was resolved."""
    split: dict[str, Any]
    """The manifest's held-out split summary (rule, fraction, seed, question counts; no keys)."""


class RunSpec(_Frozen):
    version: int = RUN_SPEC_VERSION
    config: MAGDiConfig
    """The config as the ranks run it: durable output paths, and ``model.lm_passes`` concrete
    (``one`` or ``split``, never ``auto``)."""
    config_hash: str
    """``config.config_hash(config)``: what a checkpoint records and a resume compares, so a resume
    compares two resolved runs (``lm_passes: auto`` resolves by world size and ZeRO stage, which the
    hash and the checkpoint's world size already pin)."""
    world_size: int
    accelerator: Literal["cpu", "cuda"]
    ds_config: dict[str, Any]
    """The DeepSpeed config ``zero.Init`` and ``deepspeed.initialize`` get, every "auto" filled."""
    optimizer: Literal["torch_adamw", "deepspeed"]
    """torch AdamW as a client optimizer, or the DeepSpeed config's own optimizer block."""
    shape: ModelShape
    resume: bool = True
    """False: start over; the driver deleted the output dir's checkpoints before the ranks started
    (``launch.resolve.claimed``), so ranks, restarted ones included, always resume from what is there."""
    resume_from: str | None = None
    """The newest complete checkpoint when the run was resolved (its config hash and world size
    checked), or None. Ranks resume from the newest complete checkpoint in ``output_dir``: this one,
    or a later one of this same run after a restart (``--no-resume`` removed every older one)."""
    corrupt: list[str] = []
    """Complete checkpoints newer than ``resume_from`` that failed verification: set aside by the
    driver (``step-N.corrupt``) before the ranks start, so they resume from ``resume_from``."""
    data: RunData | None = None
    """None until the shards are prepared (``launch.resolve.with_data``); ranks need it."""

    @model_validator(mode="after")
    def _resolved(self) -> RunSpec:
        if self.config.model.lm_passes == "auto":
            raise ValueError("config.model.lm_passes: a resolved run has 'one' or 'split', not 'auto'")
        if config_hash(self.config) != self.config_hash:
            raise ValueError(f"config_hash: {self.config_hash} is not the hash of this config "
                             f"({config_hash(self.config)}): the file was edited after it was resolved")
        return self

    @property
    def output_dir(self) -> Path:
        return Path(self.config.train.output_dir)

    @property
    def run_file(self) -> str:
        """Where ``write_run`` puts it: a local path, or a store URI for a stored run."""
        return join(self.config.train.output_dir, RUN_FILE)


def _write_whole(path: str, text: str) -> None:
    """Whole or not at all (storage.write_bytes): a rank never reads half a file."""
    write_bytes(path, text.encode())


def resolved_yaml(spec: RunSpec) -> str:
    return f"# resolved config, config_hash {spec.config_hash}\n" + spec.config.to_yaml()


def write_run(spec: RunSpec) -> str:
    """``<output_dir>/run.json`` and, next to it, ``resolved_config.yaml`` (the config alone, for
    people and for ``load_config``); returns the run file."""
    out = spec.config.train.output_dir
    _write_whole(join(out, RESOLVED_CONFIG), resolved_yaml(spec))
    _write_whole(join(out, RUN_FILE), json.dumps(spec.model_dump(mode="json"), indent=2) + "\n")
    return join(out, RUN_FILE)


def read_run(path: str | Path) -> RunSpec:
    """The spec a driver wrote (a local path or a store URI). Its config was validated on the driver;
    validating it again here checks only its form (no file on the driver's disk is looked up)."""
    return RunSpec.model_validate_json(read_bytes(str(path)))
