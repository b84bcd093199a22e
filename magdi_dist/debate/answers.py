"""A generated turn's answer (and ReConcile confidence), extracted as the readers and the evaluator
read them, and how it was found, so a reader of the MAG can tell a stated answer from a guess.

Order: the JSON object ReConcile asks for (``answer``, ``confidence_level``); the last ``\\boxed{}``
(what the Du reader takes, and what the prompts ask for); the evaluator's first "The answer is X."
statement; then what the grader itself would read from the whole text for the family (a numeric
text's last number unless the reply was cut at max_tokens, a leading yes/no). Multiple-choice and
math answers need a stated answer: a letter or an expression in prose is too ambiguous to guess.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from magdi_dist.eval.answers import extract_answer
from magdi_dist.mag.grading import extract_boxed, extract_final_number, parse_yes_no


@dataclass(frozen=True)
class Extracted:
    answer: str | None
    source: str  # json | boxed | statement | last_number | yes_no | none
    confidence: float | None = None
    reasoning: str | None = None  # the JSON's reasoning, when the turn was JSON


_OBJECT = re.compile(r"\{.*\}", re.S)


def _json_answer(text: str) -> dict | None:
    """The outermost ``{...}`` of the text (fenced or not) when it parses to an object with an answer."""
    m = _OBJECT.search(text)
    if not m:
        return None
    try:
        data = json.loads(m.group(0))
    except ValueError:
        return None
    return data if isinstance(data, dict) and "answer" in data else None


def _confidence(value) -> float | None:
    try:
        c = float(str(value).strip().rstrip("%"))
    except (TypeError, ValueError):
        return None
    c = c / 100 if c > 1 else c  # "90" and "90%" mean 0.9
    return c if 0.0 <= c <= 1.0 else None


def _number_text(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def extract(text: str, task: str, *, guess: bool = True) -> Extracted:
    """``guess=False`` (a reply cut at max_tokens): no last-number guess, since the last number of a
    cut-off text is wherever the cut fell, not the agent's answer (a leading yes/no was said before it)."""
    data = _json_answer(text)
    if data is not None and str(data["answer"]).strip():
        reasoning = data.get("reasoning")
        return Extracted(str(data["answer"]).strip(), "json", _confidence(data.get("confidence_level",
                                                                                 data.get("confidence"))),
                         reasoning if isinstance(reasoning, str) and reasoning.strip() else None)
    boxed = extract_boxed(text)
    if boxed:
        return Extracted(boxed, "boxed")
    stated = extract_answer(text)
    if stated is not None:
        return Extracted(stated, "statement")
    if task == "numeric" and guess:
        value = extract_final_number(text)
        if value is not None:
            return Extracted(_number_text(value), "last_number")
    if task == "yes_no":
        value = parse_yes_no(text)
        if value is not None:
            return Extracted("yes" if value else "no", "yes_no")
    return Extracted(None, "none")
