"""A scaling study: one training config, students of several sizes x objective variants.

Every cell is the base training config plus the study's shared overrides, the size's overrides and
the variant's overrides (dotted keys, applied in that order), trained into
``output_dir/cells/<size>-<variant>``. The file names its data and training settings once, so every
cell sees the same MAGs and the comparison is about the student alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from magdi_dist.config import ConfigError, MAGDiConfig, durable_path, load_config


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_grid(grid: list[float] | None) -> list[float] | None:
    if grid is not None and (not grid or any(lr <= 0 for lr in grid) or len(set(grid)) != len(grid)):
        raise ValueError(f"lr_grid must be distinct positive learning rates, got {grid}")
    return grid


class Axis(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    """Short name, part of the cell name and of the MLflow run name."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Dotted config keys -> values, e.g. ``{"model.base": "tiny-5m"}``."""
    lr_grid: list[float] | None = None
    """Sizes only: learning rates to sweep for this size (overrides the study's ``lr_grid``)."""

    _lr_grid = field_validator("lr_grid")(classmethod(lambda cls, grid: _check_grid(grid)))


class Cell(NamedTuple):
    """One training run of a study: a size, a variant and, in an lr sweep, its learning rate."""

    name: str
    size: Axis
    variant: Axis
    lr: float | None = None
    """The swept ``train.lr``; None: the config's own."""


class StudyEval(_Section):
    data: str | None = None
    """Held-out questions (a benchmark file or a MAG file); None: held-out SYNTHETIC problems drawn
    with ``synthetic_seed``, which never overlaps the training seed's stream."""
    synthetic_n: int = Field(100, ge=1)
    synthetic_seed: int = 10_000
    limit: int | None = Field(None, ge=1)
    """Evaluate only the first N questions (counted after ``exclude``)."""
    exclude: list[str] = Field(default_factory=list)
    """MAG files whose questions are never evaluated: the teacher discussions the students train on,
    when ``data`` is the benchmark they were drawn from (contamination)."""
    teachers: str | None = None
    """A MAG file whose discussions the students' answer lengths are compared with (tokens)."""
    k: int = Field(1, ge=1)
    """Samples per question; k > 1 is self-consistency (needs temperature > 0)."""
    temperature: float = Field(0.0, ge=0.0)
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(16, ge=1)
    workers: int = Field(1, ge=1)
    """Ray actors that share the questions (the same batches, so the same answers as one process)."""


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
    lr_grid: list[float] | None = None
    """Learning rates every size sweeps (a size's own ``lr_grid`` wins): each (size, variant, lr) is a
    child run tagged with its sweep; the scaling curve takes each size's best by ``eval_ntp_loss``."""
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
    def _grids_on_sizes(self) -> StudyConfig:
        if any(v.lr_grid for v in self.variants):
            raise ValueError("lr_grid belongs to sizes (or the study), not to variants")
        return self

    @model_validator(mode="after")
    def _champion_direction(self) -> StudyConfig:
        if self.champion_metric.endswith("loss") and self.champion_mode == "max":
            raise ValueError(f"champion_metric {self.champion_metric!r} is a loss: set champion_mode: min")
        return self

    _lr_grid = field_validator("lr_grid")(classmethod(lambda cls, grid: _check_grid(grid)))

    # --- cells -------------------------------------------------------------------------------
    def cells(self) -> list[Cell]:
        cells = []
        for s in self.sizes:
            grid = s.lr_grid or self.lr_grid or [None]
            for v in self.variants:
                for lr in grid:
                    name = f"{s.name}-{v.name}" + (f"-lr{lr:g}" if lr is not None else "")
                    cells.append(Cell(name, s, v, lr))
        return cells

    def cell_config(self, cell: Cell) -> MAGDiConfig:
        """The resolved training config of one cell (validated: a bad override names its key)."""
        size, variant = cell.size, cell.variant
        items = {**self.overrides, **size.overrides, **variant.overrides}
        if cell.lr is not None:
            items["train.lr"] = cell.lr
        items["train.output_dir"] = str(Path(self.output_dir) / "cells" / cell.name)
        overrides = [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
                     for key, value in items.items()]
        try:
            return load_config(self.base_config, overrides)
        except ConfigError as err:
            raise ConfigError(f"study {self.name}, cell {cell.name}: {err}") from None


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
    for cell in study.cells():  # every cell must resolve before anything starts
        study.cell_config(cell)
    return study
