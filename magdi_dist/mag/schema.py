"""The multi-agent interaction graph (MAG): the domain object every other module consumes.

A MAG is one question's discussion. Nodes are responses (agent, round), ordered by round, then by
the agent order of the MAG; every (agent, round) of the grid is a node, and one the agent never
wrote (early consensus) is a node with label ``missing``. Edges are pairs of node indices and only
run forward in time. Without explicit edges, every response of round r feeds every agent's
response of round r+1 (each agent's own previous answer included): the topology of a debate where
each agent reads all answers of the previous round.
"""

from __future__ import annotations

import math
from enum import IntEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1


class Label(IntEnum):
    """Node classes of the graph objective; the integer is the class index the GCN predicts."""

    CORRECT = 0
    INCORRECT = 1
    MISSING = 2

    @property
    def text(self) -> str:
        return self.name.lower()


TASK_FAMILIES = ("yes_no", "multiple_choice", "numeric", "math")


def json_problem(value: Any, *, max_depth: int | None = None, finite: bool = True) -> tuple[tuple, str] | None:
    """The first place, as (key path, reason), where ``value`` holds NaN or Infinity (``finite``) or a
    container nested more than ``max_depth`` levels (``value`` itself is level 1); None when clean.

    Iterative, so the walk cannot overflow the stack on the hostile input it exists to catch. A
    depth problem's path is cut to its first three keys: the field to look at, not the nesting itself.
    """
    stack: list[tuple[Any, tuple, int]] = [(value, (), 1)]
    while stack:
        node, loc, depth = stack.pop()
        if isinstance(node, dict):
            children = list(node.items())
        elif isinstance(node, list | tuple):
            children = list(enumerate(node))
        else:
            if finite and isinstance(node, float) and not math.isfinite(node):
                return loc, f"{node!r} is not a finite number (JSON has no NaN or Infinity)"
            continue
        if max_depth is not None and depth > max_depth:
            return loc[:3], f"nested more than {max_depth} levels deep (ReadLimits.max_depth)"
        stack.extend((child, (*loc, key), depth + 1) for key, child in reversed(children))
    return None


def key_path(loc: tuple) -> str | None:
    """``("responses", 1, "meta")`` -> ``responses[1].meta``; None for the value itself."""
    out = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    return out.removeprefix(".") or None


def _finite(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """``meta`` and ``generation`` hold numbers that must survive JSON: NaN and Infinity would be
    written as null (pydantic's JSON mode), silently changing the data."""
    problem = json_problem(value) if value is not None else None
    if problem is not None:
        loc, reason = problem
        where = key_path(loc)
        raise ValueError(f"{where}: {reason}" if where else reason)
    return value


class Response(BaseModel):
    """One node: what ``agent`` wrote in ``round`` (``reasoning`` is None when it wrote nothing)."""

    model_config = ConfigDict(extra="forbid")

    agent: str = Field(min_length=1)
    round: int = Field(ge=0)
    reasoning: str | None = None
    answer: str | None = None
    label: Label | None = None
    meta: dict[str, Any] | None = None
    """Provenance of this one response, carried through and never read by training: for generated
    discussions (magdi_dist/debate) the endpoint, token usage, seed, attempts and timestamps."""

    @property
    def missing(self) -> bool:
        return self.reasoning is None

    @field_validator("meta")
    @classmethod
    def _meta_finite(cls, value):
        return _finite(value)

    @field_validator("label", mode="before")
    @classmethod
    def _label_from_text(cls, value):
        if isinstance(value, str):
            try:
                return Label[value.upper()]
            except KeyError:
                raise ValueError(
                    f"unknown label {value!r}; expected correct, incorrect or missing"
                ) from None
        return value

    @model_validator(mode="after")
    def _check(self) -> Response:
        if self.reasoning is not None and not self.reasoning.strip():
            raise ValueError("reasoning is empty; omit the response (a missing node) instead")
        if self.reasoning is None and self.label not in (None, Label.MISSING):
            raise ValueError("a response without reasoning can only be labelled missing")
        return self


class Provenance(BaseModel):
    """Where a MAG came from: kept through shards so any training row leads back to its source."""

    model_config = ConfigDict(extra="forbid")

    file: str
    record: int
    format: str


class MAG(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    task: str
    question: str | None = None  # ReConcile pickles carry no question text
    gold_answer: str = Field(min_length=1)
    options: list[str] | None = None
    responses: list[Response] = Field(min_length=1)
    edges: list[tuple[int, int]] | None = None
    rounds: int | None = Field(default=None, ge=1)
    """Rounds of the discussion grid; None means the last round any agent answered. A file whose
    records stop early (consensus) declares its full depth here, so silent agents become missing
    nodes instead of vanishing from the graph."""
    synthetic: bool = False
    source: Provenance | None = None
    generation: dict[str, Any] | None = None
    """How the discussion was generated, when this project generated it (magdi_dist/debate): protocol,
    each agent's endpoint, model and sampling parameters, the prompt templates' hash and a content hash.
    Carried through, never read by training."""

    @field_validator("generation")
    @classmethod
    def _generation_finite(cls, value):
        return _finite(value)

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        if value not in TASK_FAMILIES:
            raise ValueError(f"unknown task family {value!r}; expected one of {TASK_FAMILIES}")
        return value

    @model_validator(mode="after")
    def _check_graph(self) -> MAG:
        seen: set[tuple[str, int]] = set()
        for i, r in enumerate(self.responses):
            if (r.agent, r.round) in seen:
                raise ValueError(f"responses[{i}]: duplicate (agent, round) = ({r.agent!r}, {r.round})")
            seen.add((r.agent, r.round))
        rounds = sorted({r.round for r in self.responses})
        if rounds != list(range(len(rounds))):
            raise ValueError(f"rounds must be 0..R-1 without gaps, got {rounds}")
        if self.rounds is not None and self.rounds < len(rounds):
            raise ValueError(f"rounds = {self.rounds} but responses reach round {rounds[-1]}")
        if self.edges is not None:
            n = len(self.responses)
            pairs = set()
            for k, (src, dst) in enumerate(self.edges):
                if not (0 <= src < n and 0 <= dst < n):
                    raise ValueError(f"edges[{k}] = [{src}, {dst}] is out of range for {n} responses")
                if self.responses[src].round >= self.responses[dst].round:
                    raise ValueError(
                        f"edges[{k}] = [{src}, {dst}] runs from round {self.responses[src].round} "
                        f"to round {self.responses[dst].round}; edges must run forward in time"
                    )
                if (src, dst) in pairs:
                    raise ValueError(f"edges[{k}] = [{src}, {dst}] is a duplicate")
                pairs.add((src, dst))
        return self

    # --- derived structure -------------------------------------------------------------------
    @property
    def agents(self) -> list[str]:
        """Agent names in order of first appearance."""
        return list(dict.fromkeys(r.agent for r in self.responses))

    @property
    def num_rounds(self) -> int:
        return self.rounds or max(r.round for r in self.responses) + 1

    def edge_list(self) -> list[tuple[int, int]]:
        """Explicit edges, or the default all-to-all round r -> round r+1 topology."""
        if self.edges is not None:
            return [tuple(e) for e in self.edges]
        by_round: dict[int, list[int]] = {}
        for i, r in enumerate(self.responses):
            by_round.setdefault(r.round, []).append(i)
        return [
            (src, dst)
            for rnd in range(self.num_rounds - 1)
            for src in by_round.get(rnd, [])
            for dst in by_round.get(rnd + 1, [])
        ]

    def labels(self) -> list[Label]:
        missing = [i for i, r in enumerate(self.responses) if r.label is None]
        if missing:
            raise ValueError(f"MAG {self.id}: responses {missing} are not graded")
        return [r.label for r in self.responses]

    def completed(self) -> MAG:
        """The MAG on the full agents x rounds grid, in canonical (round, agent) order.

        Absent (agent, round) pairs become missing nodes. Explicit edges are re-indexed to the new
        order, so callers never see indices that moved under them.
        """
        agents = self.agents
        have = {(r.agent, r.round): (i, r) for i, r in enumerate(self.responses)}
        nodes: list[Response] = []
        new_index: dict[int, int] = {}
        for rnd in range(self.num_rounds):
            for agent in agents:
                if (agent, rnd) in have:
                    old, resp = have[(agent, rnd)]
                    new_index[old] = len(nodes)
                    nodes.append(resp)
                else:
                    nodes.append(Response(agent=agent, round=rnd, label=Label.MISSING))
        edges = None
        if self.edges is not None:
            edges = [(new_index[s], new_index[d]) for s, d in self.edges]
        return self.model_copy(update={"responses": nodes, "edges": edges})

    def to_json_dict(self) -> dict:
        """The generic JSONL record (labels as text, defaults omitted where they add nothing)."""
        data = self.model_dump(mode="json", exclude_none=True)
        for resp, raw in zip(self.responses, data["responses"], strict=True):
            if resp.label is not None:
                raw["label"] = resp.label.text
        if not self.synthetic:
            data.pop("synthetic", None)
        return data
