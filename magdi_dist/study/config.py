"""A scaling study: one training config, students of several sizes x objective variants (x seeds).

Every cell is the base training config plus the study's shared overrides, the size's overrides and
the variant's overrides (dotted keys, applied in that order), trained into
``output_dir/cells/<size>-<variant>`` (``-lr<lr>`` in an lr sweep, ``-s<seed>`` with ``seeds``). The
file names its data and training settings once, so every cell sees the same MAGs and the comparison is
about the student alone. ``seeds`` varies ``train.seed`` only (data order, dropout): the shards, the
split (``data.split_seed``), the initial weights and the held-out questions are the same for every seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from magdi_dist.config import CONFIG_DIR, ConfigError, MAGDiConfig, durable_path, load_config, load_yaml_config
from magdi_dist.eval.config import EvalSettings
from magdi_dist.storage import join


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
    """One training run of a study: a size, a variant and, in an lr sweep, its learning rate; with
    ``seeds``, its training seed."""

    name: str
    size: Axis
    variant: Axis
    lr: float | None = None
    """The swept ``train.lr``; None: the config's own."""
    seed: int | None = None
    """The cell's ``train.seed``; None: the config's own (a study without ``seeds``)."""


class StudyEval(EvalSettings):
    """How every cell's student is evaluated: ``magdi-dist evaluate``'s settings (EvalSettings) and where
    the questions come from. The model, output folder and seed (the cell's ``train.seed``) are the cell's."""

    data: str | None = None
    """Held-out questions (a benchmark file or a MAG file); None: held-out SYNTHETIC problems drawn
    with ``synthetic_seed``, which never overlaps the training seed's stream."""
    synthetic_n: int = Field(100, ge=1)
    """Synthetic held-out problems drawn when ``data`` is None."""
    synthetic_seed: int = 10_000
    """Seed of the synthetic held-out problems."""
    # A study's students are small and answer briefly: shorter budgets and larger batches than evaluate's.
    max_new_tokens: int = 64
    """Generation budget per sample."""
    batch_size: int = Field(16, ge=1)
    """Questions per generate call (each with its k samples)."""


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
    child run tagged with its sweep; the scaling curve takes each size's best by ``eval_ntp_loss``
    (with ``seeds``: by its mean over seeds)."""
    seeds: list[int] | None = None
    """Training seeds (``train.seed``: data order, dropout), one cell each, named ``...-s<seed>``; the
    curve fits each (size, variant)'s mean over seeds. None: one cell with the config's seed, named
    without a suffix (the names, and so the MLflow cells, of a study written before seeds existed)."""
    compare: list[str] | None = Field(None, min_length=2, max_length=2)
    """Two variants ``[a, b]`` compared per size in the report: accuracy a - b paired per question,
    held-out NTP loss a - b paired per seed, and the slope of the gap vs log10(params). None: the first
    two variants, when there are two or more."""
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

    @field_validator("base_config")
    @classmethod
    def _base_config_file(cls, value: str, info: ValidationInfo) -> str:
        # Relative to the study file first (where its author sees it), else to the working directory.
        folder = (info.context or {}).get(CONFIG_DIR)
        if folder is not None and not Path(value).is_absolute() and (Path(folder) / value).exists():
            value = str(Path(folder) / value)
        if not Path(value).is_file():
            raise ValueError(f"file not found: {value}")
        return value

    @field_validator("sizes", "variants")
    @classmethod
    def _unique(cls, axes: list[Axis]) -> list[Axis]:
        names = [a.name for a in axes]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate names {sorted(dup)}")
        return axes

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {seeds}")
        return seeds

    @model_validator(mode="after")
    def _compared_variants(self) -> StudyConfig:
        names = [v.name for v in self.variants]
        if self.compare is not None:
            unknown = [c for c in self.compare if c not in names]
            if unknown or self.compare[0] == self.compare[1]:
                raise ValueError(f"compare names two different variants of {names}, got {self.compare}")
        return self

    @property
    def compared(self) -> tuple[str, str] | None:
        """The (a, b) variants of the paired comparison, or None."""
        if self.compare is not None:
            return self.compare[0], self.compare[1]
        return (self.variants[0].name, self.variants[1].name) if len(self.variants) >= 2 else None

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
                    for seed in self.seeds or [None]:
                        name = (f"{s.name}-{v.name}" + (f"-lr{lr:g}" if lr is not None else "")
                                + (f"-s{seed}" if seed is not None else ""))
                        cells.append(Cell(name, s, v, lr, seed))
        return cells

    def cell_config(self, cell: Cell) -> MAGDiConfig:
        """The resolved training config of one cell (validated: a bad override names its key)."""
        size, variant = cell.size, cell.variant
        items = {**self.overrides, **size.overrides, **variant.overrides}
        if cell.lr is not None:
            items["train.lr"] = cell.lr
        if cell.seed is not None:  # the training seed only: shards and held-out split stay the study's
            items["train.seed"] = cell.seed
        items["train.output_dir"] = join(self.output_dir, "cells", cell.name)  # a path, or a URI
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
    study = load_yaml_config(StudyConfig, path, overrides, kind="study config")
    study = study.model_copy(update={"output_dir": durable_path(study.output_dir, storage, key="output_dir")})
    for cell in study.cells():  # every cell must resolve before anything starts
        study.cell_config(cell)
    return study
