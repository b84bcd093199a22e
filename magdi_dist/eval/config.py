"""The evaluation configuration, typed once: ``EvalSettings`` is how students are evaluated (which
questions, how answers are decoded, how the work is spread), shared by ``magdi-dist evaluate`` and a
study's ``evaluation:`` section; ``EvalConfig`` adds what one run needs (the model, the data, where
results go). The ``evaluate`` command's options are these fields (cli_options), their docstrings its
help. Light on purpose: no torch, so a study config validates without loading the model stack.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from magdi_dist.eval.errors import EvalInputError


@dataclass(frozen=True)
class DecodeSettings:
    """What decides the generated text (every worker gets exactly these); the one place their rules live."""

    k: int = 1
    temperature: float = 0.0
    max_new_tokens: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 1:
            raise EvalInputError(f"k must be >= 1, got {self.k}")
        if self.k > 1 and self.temperature <= 0:
            raise EvalInputError("self-consistency (k > 1) needs --temperature > 0: greedy samples are identical")
        if self.max_new_tokens < 1:
            raise EvalInputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class EndpointLimits(_Section):
    """How hard one endpoint (one base_url) may be pushed: by a debate (over all its Ray workers
    together) and by a remote evaluation (``--base-url``). Defined here, the lower of the two layers."""

    max_concurrency: int = Field(4, ge=1)
    """Requests in flight at once (per endpoint)."""
    requests_per_second: float | None = Field(None, gt=0)
    """Request starts per second (per endpoint); None: unlimited."""
    timeout_s: float = Field(120.0, gt=0)
    """Per-request timeout (connect and read)."""
    max_retries: int = Field(5, ge=0)
    """Retries after the first attempt on 429, 5xx, timeouts, connection errors and bad replies."""
    backoff_initial_s: float = Field(0.5, ge=0)
    """First retry delay; doubles per retry (with seeded jitter), capped by backoff_max_s. A 429's
    Retry-After, when given, is honoured instead (also capped)."""
    backoff_max_s: float = Field(30.0, ge=0)
    """Longest delay between two attempts."""


def _fspath(value: Any) -> Any:
    """A path given as a Path (code, tests) is kept as the string a YAML file or a flag would give."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return [_fspath(v) for v in value] if isinstance(value, list | tuple) else value


class EvalSettings(EndpointLimits):
    """How students are evaluated: the keys ``magdi-dist evaluate`` and a study's ``evaluation:`` share
    (the endpoint limits apply with ``base_url`` only)."""

    format: str | None = None
    """Force the question file format: gsm8k, strategyqa, ecqa, arc, aqua or mag; None detects it."""
    task: str | None = None
    """Force the task family used for prompts and grading; None: the format's."""
    limit: int | None = Field(None, ge=1)
    """Evaluate only the first N questions (counted after ``exclude``)."""
    exclude: list[str] = Field(default_factory=list)
    """Extra MAG file (repeatable) whose questions are never evaluated. The questions the student was
    trained on need none: its export records them and they are dropped anyway (allow_contaminated)."""
    allow_contaminated: bool = False
    """Evaluate the questions the student was trained on too (their count is reported as
    ``contaminated``, with a warning). Default: drop them, reported as ``contamination_excluded``."""
    teachers: str | None = None
    """MAG file whose discussions the student's answer lengths are compared with (tokens per question)."""
    k: int = 1
    """Samples per question; k > 1 is self-consistency (majority vote; needs temperature > 0)."""
    temperature: float = Field(0.0, ge=0.0)
    """0: greedy; > 0 samples."""
    max_new_tokens: int = 256
    """Generation budget per sample."""
    batch_size: int = Field(8, ge=1)
    """Questions per generate call (each with its k samples)."""
    workers: int = Field(1, ge=1)
    """Ray actors that share the questions (the same batches, so the same answers as one process); > 1
    without ray_address starts a local Ray."""
    worker_cpus: float = Field(1.0, gt=0)
    """CPUs per Ray actor."""
    worker_gpus: float = Field(0.0, ge=0)
    """GPUs per Ray actor (1 on a GPU cluster)."""
    base_url: list[str] = Field(default_factory=list)
    """OpenAI-compatible API root serving the student (repeatable: requests are shared among them), e.g.
    http://host:8000/v1 of ``vllm serve EXPORT_DIR``. Empty: generate here (or on Ray actors). The
    student's tokenizer is still read from ``model`` (prompts, stop rule, token counts)."""
    api_key_env: str | None = None
    """With base_url: the environment variable holding the endpoints' API key (never the key itself)."""
    extra_body: str | None = None
    """With base_url: JSON object of extra request fields (vendor extensions), e.g. transformers serve
    samples only with '{"generation_config": "{\\"do_sample\\": true}"}'."""

    _paths = field_validator("exclude", "teachers", mode="before")(classmethod(lambda cls, v: _fspath(v)))

    @field_validator("base_url")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        bad = [u for u in urls if not u.startswith(("http://", "https://"))]
        if bad:
            raise ValueError(f"not an http(s) API root: {bad}")
        return urls

    @field_validator("extra_body")
    @classmethod
    def _json_object(cls, value: str | None) -> str | None:
        if value is not None and not isinstance(json.loads(value), dict):  # a JSONDecodeError is a ValueError
            raise ValueError("extra_body must be a JSON object")
        return value

    @field_validator("teachers")
    @classmethod
    def _teachers_file(cls, value: str | None) -> str | None:
        # Checked when the config loads: a study would otherwise find out after training every cell.
        if value is not None and not Path(value).is_file():
            raise ValueError(f"no such teachers file: {value}")
        return value

    @model_validator(mode="after")
    def _decodable(self) -> EvalSettings:
        DecodeSettings(self.k, self.temperature, self.max_new_tokens)  # its rules, not a copy of them
        if self.base_url and self.workers > 1:
            raise ValueError("workers shard local generation; with base_url the endpoints do the work "
                             "(max_concurrency requests each)")
        return self

    @property
    def limits(self) -> EndpointLimits:
        """The endpoint limits of a remote evaluation (this config's own fields)."""
        return EndpointLimits(**self.model_dump(include=set(EndpointLimits.model_fields)))

    @property
    def remote(self) -> bool:
        return bool(self.base_url)

    def for_run(self, **run) -> EvalConfig:
        """One evaluation with these settings; ``run``: the EvalConfig keys of that run (model, data, ...)."""
        return EvalConfig.model_validate({**self.model_dump(include=set(EvalSettings.model_fields)), **run})


class EvalConfig(EvalSettings):
    """One evaluation: ``magdi-dist evaluate``'s options, ``evaluate(EvalConfig(...))`` in code."""

    model: str
    """Exported student directory, or an MLflow URI (models:/NAME@ALIAS, runs:/ID/PATH). With base_url,
    only its tokenizer and training questions are read here."""
    served_model: str | None = None
    """With base_url: the model name the endpoints serve the student under; None: ``model`` as given
    (the name ``vllm serve EXPORT_DIR`` and ``transformers serve`` give it)."""
    data: str
    """Held-out questions: a GSM8K/StrategyQA/ECQA/ARC/AQuA file or a MAG file."""
    seed: int = 0
    """Per-sample seeds derive from (seed, question index, sample)."""
    out: str | None = None
    """Output folder (predictions.jsonl, summary.json; with base_url the request log, so a killed run
    asks only what is missing); None: outputs/eval/<data>-<time>."""
    ray_address: str | None = None
    """Shard over Ray actors on this cluster ('auto': the running one)."""
    mlflow_run_id: str | None = None
    """Log metrics and predictions to this MLflow run."""
    tracking_uri: str | None = None
    """MLflow tracking URI (models:/ URIs and mlflow_run_id); None: MLflow's default."""
    progress: bool = True
    """Show a progress bar (stderr)."""
    reuse: bool = False
    """Return the evaluation already in ``out`` when it is this one (same model files, questions and
    decoding) instead of running it again."""

    _own_paths = field_validator("model", "data", "out", mode="before")(classmethod(lambda cls, v: _fspath(v)))

    @property
    def settings(self) -> DecodeSettings:
        return DecodeSettings(self.k, self.temperature, self.max_new_tokens, self.seed)

    @property
    def distributed(self) -> bool:
        return bool(self.ray_address) or self.workers > 1
