"""Persisted turns -> one graded MAG per fully discussed question, with its provenance.

The MAG's content (question, gold, every response's text and answer, the protocol, the agents'
models and sampling parameters, the template hash) is hashed into ``generation.content_sha256``;
what varies between two runs that produced the same discussion -- endpoints, timestamps, latencies,
attempts, token counts -- sits in each response's ``meta``, outside the hash. Everything here is a
pure function of the turn log and the config, so rebuilding writes the same bytes.
"""

from __future__ import annotations

import hashlib
import json

from magdi_dist.debate.config import DebateConfig
from magdi_dist.debate.prompts import template_hash
from magdi_dist.eval.questions import EvalQuestion
from magdi_dist.mag.answers import extract_turn, grade_mag
from magdi_dist.mag.schema import MAG, Response

GENERATOR = "magdi-dist debate"


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


def question_sha(q: EvalQuestion) -> str:
    """Identity of a question's content: a turn logged for another text under the same id is refused."""
    return _sha({"task": q.task, "question": q.question, "gold": q.gold, "options": q.options})


def request_seed(run_seed: int, agent_seed: int, question_id: str, rnd: int) -> int:
    """The seed one request sends: fixed by (run, agent, question, round), independent of scheduling."""
    digest = hashlib.sha256(f"{run_seed}:{agent_seed}:{question_id}:{rnd}".encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


def turn_view(turn: dict, task: str) -> dict:
    """What the prompts and the MAG take from a logged turn: its text, answer, confidence."""
    text = turn["content"] if turn["content"].strip() else None
    ext = extract_turn(text, task, guess=turn.get("finish_reason") != "length") if text else None
    return {
        "agent": turn["agent"], "round": turn["round"], "content": text,
        "reasoning": (ext.reasoning if ext and ext.reasoning else text),
        "answer": ext.answer if ext else None, "answer_source": ext.source if ext else "empty",
        "confidence": ext.confidence if ext else None,
    }  # fmt: skip


def generation_info(cfg: DebateConfig) -> dict:
    templates = cfg.protocol.templates()
    return {
        "generator": GENERATOR,
        "protocol": cfg.protocol.kind,
        "rounds": cfg.rounds,
        "run_seed": cfg.seed,
        "template_sha256": template_hash(templates, [a.system_prompt for a in cfg.agents]),
        "agents": [{"name": a.name, **a.sampling()} for a in cfg.agents],
    }


def build_mag(q: EvalQuestion, cfg: DebateConfig, turns: dict[tuple[str, int], dict]) -> MAG:
    """The graded MAG of ``q`` from its turns (every (agent, round) must be present)."""
    responses, meta_keys = [], ("endpoint", "served_model", "seed", "attempts", "usage", "finish_reason",
                                "started_at", "finished_at", "latency_s")
    for rnd in range(cfg.rounds):
        for agent in cfg.agents:
            turn = turns[(agent.name, rnd)]
            view = turn_view(turn, q.task)
            meta = {k: turn.get(k) for k in meta_keys}
            meta.update(answer_source=view["answer_source"], confidence=view["confidence"])
            # An empty completion is a node without text (a missing node): the agent said nothing.
            responses.append(Response(agent=agent.name, round=rnd, reasoning=view["reasoning"],
                                      answer=view["answer"] if view["reasoning"] else None, meta=meta))
    mag = grade_mag(MAG(id=q.id, task=q.task, question=q.question, gold_answer=q.gold, options=q.options,
                        responses=responses, rounds=cfg.rounds, generation=generation_info(cfg)))
    mag.generation["content_sha256"] = content_sha256(mag)
    return mag


def content_sha256(mag: MAG) -> str:
    """sha256 of what was discussed and said (question, gold, every response's agent, round, text and
    answer) and how (``generation`` without this hash); labels, ``meta`` and ``source`` stay outside."""
    generation = {k: v for k, v in (mag.generation or {}).items() if k != "content_sha256"}
    return _sha({
        "id": mag.id, "task": mag.task, "question": mag.question, "gold_answer": mag.gold_answer,
        "options": mag.options, "responses": [[r.agent, r.round, r.reasoning, r.answer] for r in mag.responses],
        "generation": generation,
    })  # fmt: skip
