"""The debate configuration: who discusses (agents on OpenAI-compatible endpoints), how (protocol and
its prompt templates), about what (a question file), how hard the endpoints may be pushed, and where
the MAGs go. Loaded from YAML plus ``key.sub=value`` overrides, or built from the CLI's flags for the
simple case (K agents on one endpoint). Every section forbids unknown keys.

An API key is never part of the config: an agent names the environment variable that holds it.
``fingerprint`` covers exactly what decides a turn's text (models, sampling, prompts, rounds), so a
resumed run refuses turns a different config produced, while endpoints, limits and worker counts may
change between runs (a local server restarted on another port keeps its turns).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from magdi_dist.config import ConfigError, durable_path, load_yaml_config, validate_config
from magdi_dist.debate.prompts import default_templates, template_errors
from magdi_dist.eval.config import EndpointLimits  # shared with remote evaluation (eval: the lower layer)
from magdi_dist.mag.schema import TASK_FAMILIES


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class AgentSpec(_Section):
    """One discussant: a model behind an OpenAI-compatible chat-completions endpoint."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Agent name in the MAGs (responses' ``agent``)."""
    base_url: str = Field(pattern=r"^https?://")
    """OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1."""
    model: str = Field(min_length=1)
    """Model name the endpoint serves."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (never the key itself); None: send a
    placeholder key (local servers need none)."""
    system_prompt: str | None = None
    """Optional system message (a persona); part of the prompt-template hash."""
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    """Sampling temperature (0: greedy)."""
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    """Nucleus sampling; None: the endpoint's default."""
    max_tokens: int = Field(256, ge=1)
    """Completion budget per turn."""
    seed: int = 0
    """Agent seed; each request sends a seed derived from (run seed, this seed, question, round)."""
    extra_body: dict[str, Any] = Field(default_factory=dict)
    """Extra request fields sent as they are (vendor extensions). ``transformers serve`` samples only
    with ``{generation_config: '{"do_sample": true}'}`` (otherwise it decodes greedily whatever the
    temperature)."""

    @model_validator(mode="before")
    @classmethod
    def _no_inline_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and "api_key" in data:
            raise ValueError("api_key must not be written in the config: put the key in an environment "
                             "variable and name that variable in api_key_env")
        return data

    def sampling(self) -> dict[str, Any]:
        """The request parameters that shape this agent's text (provenance and fingerprint)."""
        return {"model": self.model, "temperature": self.temperature, "top_p": self.top_p,
                "max_tokens": self.max_tokens, "seed": self.seed, "extra_body": self.extra_body,
                "system_prompt": self.system_prompt}


class ProtocolConfig(_Section):
    """The discussion protocol and its prompt templates (Python ``str.format`` fields)."""

    kind: Literal["du", "reconcile"] = "du"
    """``du``: Du et al.'s debate, each agent keeps its own chat history and reads the others' previous
    answers; ``reconcile``: ReConcile, one prompt per round showing every agent's previous answer,
    reasoning and confidence, answers given as JSON with a confidence."""
    first_round: str | None = None
    """Round-0 user prompt; fields {question}, {options}, {answer_format}. None: the kind's default."""
    later_rounds: str | None = None
    """Prompt of rounds >= 1; fields {question}, {options}, {answer_format}, {peers}, {own}. None: default."""
    peer: str | None = None
    """How one other agent's previous turn is shown in {peers} (and the agent's own in {own}); fields
    {agent}, {reasoning}, {answer}, {confidence}. None: the kind's default."""
    answer_formats: dict[str, str] | None = None
    """{answer_format} per task family (numeric, multiple_choice, yes_no, math). None: defaults."""

    @model_validator(mode="after")
    def _fill_and_check(self) -> ProtocolConfig:
        defaults = default_templates(self.kind)
        for key in ("first_round", "later_rounds", "peer"):
            if getattr(self, key) is None:
                setattr(self, key, defaults[key])
        formats = {**defaults["answer_formats"], **(self.answer_formats or {})}
        unknown = sorted(set(formats) - set(TASK_FAMILIES))
        if unknown:
            raise ValueError(f"answer_formats: unknown task families {unknown}; expected {list(TASK_FAMILIES)}")
        self.answer_formats = formats
        problems = template_errors(self.first_round, self.later_rounds, self.peer)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def templates(self) -> dict[str, Any]:
        return {"kind": self.kind, "first_round": self.first_round, "later_rounds": self.later_rounds,
                "peer": self.peer, "answer_formats": self.answer_formats}


class QuestionsConfig(_Section):
    """Where the questions come from: any file ``magdi-dist evaluate`` reads."""

    path: str
    """A benchmark file (GSM8K, StrategyQA, ECQA, ARC, AQuA) or a MAG file (its questions and golds)."""
    format: str | None = None
    """Force gsm8k, strategyqa, ecqa, arc, aqua or mag; None detects it."""
    task: str | None = None
    """Force the task family used for prompts and grading; None: the format's."""
    limit: int | None = Field(None, ge=1)
    """Only the first N questions (raising it later adds questions; done ones are kept)."""


class DebateConfig(_Section):
    """``magdi-dist debate --config FILE``: agents discuss questions, graded MAGs come out."""

    agents: list[AgentSpec] = Field(min_length=1)
    """The discussants, in MAG agent order."""
    rounds: int = Field(2, ge=1)
    """Discussion rounds (round 0 answers alone)."""
    protocol: ProtocolConfig = Field(default_factory=ProtocolConfig)
    """Protocol and prompt templates."""
    questions: QuestionsConfig
    """Question source."""
    out: str
    """Output MAG JSONL (generic format: ``preprocess``, ``train`` and ``inspect`` read it)."""
    state_dir: str | None = None
    """Turn log, failures and lock; None: ``<out>.debate/`` next to the output."""
    limits: EndpointLimits = Field(default_factory=EndpointLimits)
    """Limits of every endpoint not named in ``endpoints``."""
    endpoints: dict[str, EndpointLimits] = Field(default_factory=dict)
    """Per-endpoint limits, keyed by an agent's base_url."""
    workers: int = Field(1, ge=1)
    """Ray worker actors; questions are sharded over them."""
    questions_per_worker: int = Field(2, ge=1)
    """Questions one worker discusses at once (each round's agents are asked concurrently)."""
    seed: int = 0
    """Run seed: request seeds and retry jitter derive from it."""

    @field_validator("agents")
    @classmethod
    def _unique_names(cls, agents: list[AgentSpec]) -> list[AgentSpec]:
        names = [a.name for a in agents]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"agent names must be unique, repeated: {dup}")
        return agents

    @model_validator(mode="after")
    def _known_endpoints(self) -> DebateConfig:
        used = {a.base_url for a in self.agents}
        unused = sorted(set(self.endpoints) - used)
        if unused:
            raise ValueError(f"endpoints: {unused} is not the base_url of any agent ({sorted(used)})")
        return self

    def limits_for(self, base_url: str) -> EndpointLimits:
        return self.endpoints.get(base_url, self.limits)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir) if self.state_dir else Path(self.out + ".debate")

    def fingerprint(self) -> dict[str, Any]:
        """What decides the text of a turn: a resumed run must match the run that wrote its turns."""
        return {"rounds": self.rounds, "seed": self.seed, "protocol": self.protocol.templates(),
                "agents": [{"name": a.name, **a.sampling()} for a in self.agents]}


def _with_durable_outputs(cfg: DebateConfig, storage: str | None) -> DebateConfig:
    # Outputs resolve like every other command's (--storage / MAGDI_STORAGE), so a Ray job's driver
    # never writes into the working-dir copy Ray deletes.
    update = {"out": durable_path(cfg.out, storage, key="out")}
    if cfg.state_dir is not None:
        update["state_dir"] = durable_path(cfg.state_dir, storage, key="state_dir")
    return cfg.model_copy(update=update)


def debate_config_from_dict(tree: dict[str, Any], *, source: str = "<dict>",
                            storage: str | None = None) -> DebateConfig:
    cfg = validate_config(DebateConfig, tree, kind="debate config", source=source)
    return _with_durable_outputs(cfg, storage)


def load_debate_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                       storage: str | None = None) -> DebateConfig:
    """YAML file + overrides -> validated config; errors name the file and the key."""
    return _with_durable_outputs(load_yaml_config(DebateConfig, path, overrides, kind="debate config"), storage)


# Default spread of the simple case: agents differ by seed and temperature, so sampling endpoints give
# each its own discussion (0.7, 0.8, 0.9, ...; capped at the API's maximum of 2).
SIMPLE_BASE_TEMPERATURE = 0.7
SIMPLE_TEMPERATURE_STEP = 0.1


def simple_config(*, questions: str, out: str, base_url: str, model: str, agents: int = 3, rounds: int = 2,
                  limit: int | None = None, max_tokens: int = 256, protocol: str = "du",
                  api_key_env: str | None = None, extra_body: dict[str, Any] | None = None,
                  workers: int = 1, seed: int = 0, storage: str | None = None) -> DebateConfig:
    """K agents on one endpoint (the CLI's flags), agent i with seed i and temperature 0.7 + 0.1 i."""
    if agents < 1:
        raise ConfigError("--agents must be at least 1")
    tree = {
        "agents": [
            {"name": f"agent{i}", "base_url": base_url, "model": model, "api_key_env": api_key_env,
             "temperature": min(2.0, round(SIMPLE_BASE_TEMPERATURE + SIMPLE_TEMPERATURE_STEP * i, 6)),
             "max_tokens": max_tokens, "seed": i, "extra_body": extra_body or {}}
            for i in range(agents)
        ],
        "rounds": rounds, "protocol": {"kind": protocol}, "workers": workers, "seed": seed,
        "questions": {"path": questions, "limit": limit}, "out": out,
    }  # fmt: skip
    return debate_config_from_dict(tree, source="command-line flags", storage=storage)


def config_from_cli(config: str | Path | None, overrides: list[str], flags: dict[str, Any],
                    storage: str | None) -> DebateConfig:
    """``magdi-dist debate``'s settings: a config file with ``key=value`` overrides, or the simple case's
    flags (``flags``: flag name -> value, None when not given); never both (ConfigError)."""
    given = {k: v for k, v in flags.items() if v is not None}
    if config is not None:
        if given:
            raise ConfigError(f"with --config, give settings as overrides (key=value), not "
                              f"{', '.join('--' + k.replace('_', '-') for k in given)}")
        return load_debate_config(config, overrides, storage)
    need = [f"--{k.replace('_', '-')}" for k in ("questions", "base_url", "model", "out") if k not in given]
    if need or overrides:
        raise ConfigError(f"give --config FILE, or {', '.join(need) or 'no overrides'} for the simple case")
    if isinstance(given.get("extra_body"), str):
        try:
            given["extra_body"] = json.loads(given["extra_body"])
        except ValueError as err:
            raise ConfigError(f"--extra-body is not JSON: {err}") from None
    given.update(questions=str(given["questions"]), out=str(given["out"]))
    return simple_config(**given, storage=storage)
