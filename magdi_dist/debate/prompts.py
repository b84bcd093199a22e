"""Prompt templates of the two protocols and the chat messages one agent is sent in one round.

Du et al. ("Improving Factuality and Reasoning in Language Models through Multiagent Debate"): each
agent keeps its own chat history; from round 1 on its user turn shows the other agents' previous
solutions and the question again. The defaults are the prompts of the shared Du transcripts
(``mag/debate_du``), generalised from GSM8K to every task family by ``{answer_format}``.

ReConcile (Chen et al.): every round is one fresh prompt; from round 1 on it shows each other agent's
previous answer with its confidence and the agent's own, and answers are JSON with a confidence.

Templates are ``str.format`` strings (literal braces doubled); the fields each may use are checked
when the config loads, so a typo fails before any request is sent.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Sequence
from typing import Any

FIELDS = {
    "first_round": {"question", "options", "answer_format"},
    "later_rounds": {"question", "options", "answer_format", "peers", "own"},
    "peer": {"agent", "reasoning", "answer", "confidence"},
}

_BOXED = "in the form \\boxed{answer}, at the end of your response."
_DU_FORMATS = {
    "numeric": f"Your final answer should be a single numerical number, {_BOXED}",
    "multiple_choice": f"Your final answer should be the letter of one option, {_BOXED}",
    "yes_no": f"Your final answer should be yes or no, {_BOXED}",
    "math": f"Your final answer should be a mathematical expression, {_BOXED}",
}
_JSON = ('Also, evaluate your confidence level (between 0.0 and 1.0) to indicate the possibility of your '
         'answer being right. Output your answer in json format, with the format as follows: '
         '{"reasoning": "", "answer": "", "confidence_level": ""}. Please strictly output in JSON format, '
         'do not output irrelevant content.')
_RECONCILE_FORMATS = {
    "numeric": f"The answer is a single number. {_JSON}",
    "multiple_choice": f"The answer is the letter of one option. {_JSON}",
    "yes_no": f"The answer is yes or no. {_JSON}",
    "math": f"The answer is a mathematical expression. {_JSON}",
}

DEFAULTS: dict[str, dict[str, Any]] = {
    "du": {
        "first_round": "Can you solve the following problem? {question}{options} Explain your reasoning. "
                       "{answer_format}",
        "later_rounds": "These are the solutions to the problem from other agents: {peers}\n\n Using the "
                        "solutions from other agents as additional information, can you provide your answer "
                        "to the problem? \n The original problem is {question}{options} {answer_format}",
        "peer": "\n\n One agent solution: ```{reasoning}```",
        "answer_formats": _DU_FORMATS,
    },
    "reconcile": {
        "first_round": "Q: {question}{options}\nAnswer: Please answer the question with step-by-step "
                       "reasoning. {answer_format}",
        "later_rounds": "Q: {question}{options}\n\nCarefully review the following solutions from other agents "
                        "as additional information, and provide your own answer and step-by-step reasoning to "
                        "the question.{peers}\n\nYour previous solution:{own}\n\nClearly state which point of "
                        "view you agree or disagree with and why. {answer_format}",
        "peer": "\n\nOne agent solution: {reasoning}\nIts answer: {answer} (confidence: {confidence})",
        "answer_formats": _RECONCILE_FORMATS,
    },
}


def default_templates(kind: str) -> dict[str, Any]:
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS[kind].items()}


def template_errors(first_round: str, later_rounds: str, peer: str) -> list[str]:
    """Problems with the templates: unparseable braces, or fields the template cannot be given."""
    problems = []
    for name, text in (("first_round", first_round), ("later_rounds", later_rounds), ("peer", peer)):
        try:
            used = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
        except ValueError as err:
            problems.append(f"protocol.{name}: {err} (write literal braces as {{{{ and }}}})")
            continue
        bad = sorted(f or "<positional {}>" for f in used - FIELDS[name])
        if bad:
            problems.append(f"protocol.{name}: unknown fields {bad}; allowed: {sorted(FIELDS[name])}")
    return problems


def template_hash(templates: dict[str, Any], system_prompts: Sequence[str | None]) -> str:
    """sha256 of the protocol's templates and the agents' system prompts (canonical JSON)."""
    blob = json.dumps({"templates": templates, "system_prompts": list(system_prompts)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def render_options(options: list[str] | None) -> str:
    """Options as the prompt shows them: lettered (A) ...), kept as they are when already lettered (AQuA)."""
    if not options:
        return ""
    lettered = all(o.strip()[:2].upper() == f"{chr(65 + i)})" for i, o in enumerate(options))
    shown = options if lettered else [f"{chr(65 + i)}) {o}" for i, o in enumerate(options)]
    return "\nOptions: " + " ".join(s.strip() for s in shown)


def peer_text(template: str, turn: dict) -> str:
    """One previous turn as others read it; ``turn``: agent, content, answer, confidence, reasoning."""
    confidence = turn.get("confidence")
    return template.format(
        agent=turn["agent"],
        reasoning=turn.get("reasoning") or turn.get("content") or "(no answer)",
        answer=turn.get("answer") if turn.get("answer") is not None else "(none)",
        confidence="unknown" if confidence is None else f"{confidence:g}",
    )


def round_prompt(protocol: dict[str, Any], task: str, question: str, options: list[str] | None, rnd: int,
                 agent: str, previous: Sequence[dict]) -> str:
    """The user prompt of ``agent`` in round ``rnd``; ``previous``: every agent's turn of round rnd-1."""
    fields = {"question": question, "options": render_options(options),
              "answer_format": protocol["answer_formats"][task]}
    if rnd == 0:
        return protocol["first_round"].format(**fields)
    peers = "".join(peer_text(protocol["peer"], t) for t in previous if t["agent"] != agent)
    own = "".join(peer_text(protocol["peer"], t) for t in previous if t["agent"] == agent)
    return protocol["later_rounds"].format(**fields, peers=peers, own=own)


def messages_for(protocol: dict[str, Any], task: str, question: str, options: list[str] | None, rnd: int,
                 agent: str, system_prompt: str | None, history: Sequence[Sequence[dict]]) -> list[dict]:
    """Chat messages for ``agent`` in round ``rnd``; ``history[k]``: every agent's turn of round k < rnd.

    Du keeps the agent's own conversation (its prompts and answers of every earlier round); ReConcile
    sends one prompt per round."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    if protocol["kind"] == "du":
        for k in range(rnd):
            own = next(t for t in history[k] if t["agent"] == agent)
            prompt = round_prompt(protocol, task, question, options, k, agent, history[k - 1] if k else ())
            messages += [{"role": "user", "content": prompt},
                         {"role": "assistant", "content": own.get("content") or "(no answer)"}]
    previous = history[rnd - 1] if rnd else ()
    messages.append({"role": "user", "content": round_prompt(protocol, task, question, options, rnd, agent,
                                                             previous)})
    return messages
