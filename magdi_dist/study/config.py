"""A scaling study: one training config, students of several sizes x objective variants.

Every cell is the base training config plus the study's shared overrides, the size's overrides and
the variant's overrides (dotted keys, applied in that order), trained into
``output_dir/cells/<size>-<variant>``. The file names its data and training settings once, so every
cell sees the same MAGs and the comparison is about the student alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from magdi_dist.config import ConfigError, MAGDiConfig, durable_path, load_config


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Axis(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    """Short name, part of the cell name and of the MLflow run name."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Dotted config keys -> values, e.g. ``{"model.base": "tiny-5m"}``."""


class StudyEval(_Section):
    data: str | None = None
    """Held-out questions (a benchmark file or a MAG file); None: held-out SYNTHETIC problems drawn
    with ``synthetic_seed``, which never overlaps the training seed's stream."""
    synthetic_n: int = Field(100, ge=1)
    synthetic_seed: int = 10_000
    limit: int | None = Field(None, ge=1)
    """Evaluate only the first N questions."""
    k: int = Field(1, ge=1)
    """Samples per question; k > 1 is self-consistency (needs temperature > 0)."""
    temperature: float = Field(0.0, ge=0.0)
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(16, ge=1)


class StudyConfig(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    """Study name: the MLflow parent run and the tag every cell carries."""
    base_config: str
    """Training config (YAML) shared by every cell; relative paths are relative to the study file."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Dotted overrides applied to every cell (e.g. ``train.deepspeed: zero2``)."""
    sizes: list[Axis] = Field(min_length=1)
    """Student sizes: tiny presets on CPU (``model.base: tiny-5m``), hub ids on GPU clusters."""
    variants: list[Axis] = Field(default_factory=lambda: [Axis(name="magdi")])
    """Objective variants, e.g. ntp-only ``{model.margin_weight: 0, model.node_weight: 0}``."""
    model_name: str
    """Registered model name in the MLflow model registry."""
    champion_metric: str = "eval_accuracy"
    """Metric that picks the ``champion`` alias among this study's students."""
    champion_mode: Literal["max", "min"] = "max"
    output_dir: str = "runs/study"
    tracking_uri: str | None = None
    """MLflow tracking URI; None: an embedded sqlite store under ``output_dir/mlflow``."""
    experiment: str = "magdi-dist"
    num_workers: int = Field(2, ge=1)
    """Ray Train workers (DeepSpeed ranks) per cell."""
    cpus_per_worker: float = Field(1.0, gt=0)
    max_failures: int = Field(2, ge=0)
    """Worker failures a cell survives (restart from its newest complete checkpoint)."""
    concurrency: int = Field(1, ge=1)
    """Cells trained at once; each needs num_workers x cpus_per_worker free CPUs (GPUs)."""
    ray_address: str | None = None
    evaluation: StudyEval = Field(default_factory=StudyEval)

    @field_validator("sizes", "variants")
    @classmethod
    def _unique(cls, axes: list[Axis]) -> list[Axis]:
        names = [a.name for a in axes]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate names {sorted(dup)}")
        return axes

    @model_validator(mode="after")
    def _champion_direction(self) -> StudyConfig:
        if self.champion_metric.endswith("loss") and self.champion_mode == "max":
            raise ValueError(f"champion_metric {self.champion_metric!r} is a loss: set champion_mode: min")
        return self

    # --- cells -------------------------------------------------------------------------------
    def cells(self) -> list[tuple[str, Axis, Axis]]:
        return [(f"{s.name}-{v.name}", s, v) for s in self.sizes for v in self.variants]

    def cell_config(self, size: Axis, variant: Axis) -> MAGDiConfig:
        """The resolved training config of one cell (validated: a bad override names its key)."""
        cell = f"{size.name}-{variant.name}"
        items = {**self.overrides, **size.overrides, **variant.overrides}
        items["train.output_dir"] = str(Path(self.output_dir) / "cells" / cell)
        overrides = [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
                     for key, value in items.items()]
        try:
            return load_config(self.base_config, overrides)
        except ConfigError as err:
            raise ConfigError(f"study {self.name}, cell {cell}: {err}") from None


def load_study(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
               storage: str | None = None) -> StudyConfig:
    """Read a study YAML; ``base_config`` resolves against the study file's folder and a relative
    ``output_dir`` against the storage root (``storage``, ``$MAGDI_STORAGE``, else the working
    directory; ``config.durable_path``), so a study runs the same from any shell and a submitted job's
    outputs outlive Ray's copy of the working dir."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study config not found: {path}")
    tree = yaml.safe_load(path.read_text()) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a study config is a mapping, got {type(tree).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not key=value")
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    base = tree.get("base_config")
    if isinstance(base, str) and not Path(base).is_absolute():
        candidate = path.parent / base
        tree["base_config"] = str(candidate if candidate.exists() else Path(base))
    try:
        study = StudyConfig.model_validate(tree)
    except ValidationError as err:
        lines = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors()]
        raise ConfigError(f"{path}: " + "; ".join(lines)) from None
    if not Path(study.base_config).is_file():
        raise ConfigError(f"{path}: base_config: file not found: {study.base_config}")
    study = study.model_copy(update={"output_dir": durable_path(study.output_dir, storage, key="output_dir")})
    for _, size, variant in study.cells():  # every cell must resolve before anything starts
        study.cell_config(size, variant)
    return study
