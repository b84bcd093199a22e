"""Answers, in one place: the "The answer is X." statement (written into training targets, read
back from generations), extracting an answer from generated text, and grading it.

Every package that reads or grades an answer imports it from here: data/prompt.py (the statement it
writes and where a generation's answer ends), eval (extraction, the self-consistency vote), debate
(a turn's answer). The per-family grading rules live in :mod:`magdi_dist.mag.grading` and are
re-exported, so there is one import for all of it.

Light on purpose: the standard library, plus pydantic through the mag package. The registered pyfunc
student loads data/prompt.py, and with it this module, in a serving environment that has MLflow
(which needs pydantic) but not the training stack; math-verify runs only in math_equiv's helper
process.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from magdi_dist.mag.grading import (
    GoldAnswerError,
    check_gold,
    extract_boxed,
    extract_final_number,
    grade_answer,
    grade_mag,
    infer_task,
    parse_choice,
    parse_yes_no,
)

__all__ = [
    "ANSWER_PREFIX", "ANSWER_PREFIX_RX", "STATEMENT_END", "Extracted", "GoldAnswerError", "Vote",
    "answer_sentence", "check_gold", "extract_answer", "extract_boxed", "extract_final_number",
    "extract_turn", "grade_answer", "grade_mag", "infer_task", "is_correct", "majority_vote",
    "parse_choice", "parse_yes_no", "same_answer",
]

# --- the statement ----------------------------------------------------------------------------------
ANSWER_PREFIX = "The answer is "
ANSWER_PREFIX_RX = re.escape(ANSWER_PREFIX.strip())  # the statement's opening, for regexes


def answer_sentence(answer: str) -> str:
    """The final sentence of a training target: what answer_only_loss trains on and evaluation parses."""
    return f"{ANSWER_PREFIX}{str(answer).strip()}."


# A complete statement: its full stop is followed by whitespace, or a line break ends it (where
# data/prompt.py's answer_end stops a generation).
STATEMENT_END = re.compile(rf"(?i)\b{ANSWER_PREFIX_RX}(?=[\s:])[ \t]*:?\s*\S[^\n]*?(?:\.(?=\s)|(?=\n))")

# The first statement after the prompt is the student's answer: generation stops there, and what a
# student rambles on about afterwards (a made-up next question and its answer) is never graded. The
# answer ends at a full stop followed by a space, a line break or the end ("3.5." reads as 3.5); "is"
# must be followed by a space or a colon ("The answer isn't 5" states nothing).
_ANSWER_IS = re.compile(
    rf"(?i)\b{ANSWER_PREFIX_RX}(?=[\s:])\s*:?\s*(.*?)(?=\.\s|\.?\s*$|\n|\s+{ANSWER_PREFIX_RX})", re.S
)


def extract_answer(text: str) -> str | None:
    """The answer of the first ``The answer is X.`` statement, else the last ``\\boxed{}``."""
    found = [m.group(1).strip() for m in _ANSWER_IS.finditer(text)]
    found = [a.strip(" *\"'`") for a in found if a.strip(" *\"'`")]
    if found:
        return found[0]
    boxed = extract_boxed(text)
    return boxed.strip() if boxed and boxed.strip() else None


# --- a debate turn ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Extracted:
    """A generated turn's answer (and ReConcile confidence), and how it was found, so a reader of the
    MAG can tell a stated answer from a guess."""

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


def extract_turn(text: str, task: str, *, guess: bool = True) -> Extracted:
    """A debate turn's answer, read as the readers and the evaluator read answers. In order: the JSON
    object ReConcile asks for (``answer``, ``confidence_level``); the last ``\\boxed{}`` (what the Du
    reader takes, and what the prompts ask for); the first "The answer is X." statement; then what
    the grader itself would read from the whole text for the family (a numeric text's last number,
    a leading yes/no). Multiple-choice and math answers need a stated answer: a letter or an
    expression in prose is too ambiguous to guess.

    ``guess=False`` (a reply cut at max_tokens): no last-number guess, since the last number of a
    cut-off text is wherever the cut fell, not the agent's answer (a leading yes/no was said before it)."""
    data = _json_answer(text)
    if data is not None and str(data["answer"]).strip():
        reasoning = data.get("reasoning")
        confidence = _confidence(data.get("confidence_level", data.get("confidence")))
        return Extracted(str(data["answer"]).strip(), "json", confidence,
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


# --- the self-consistency vote ----------------------------------------------------------------------
# Answers are grouped by what the grader considers equal (``grade_answer`` with a group's first answer
# standing in as the gold), not by raw strings, so ``18``, ``$18`` and ``18.0`` are one vote and ``B``,
# ``B)300`` are one vote: exactly the equivalence that decides correctness.
def _graded_equal(task: str, a: str, gold: str, options: list[str] | None) -> bool:
    try:
        return grade_answer(task, a, gold, options)
    except GoldAnswerError:  # ``gold`` is not a well-formed answer for the family: compare as text
        return a.strip().lower() == gold.strip().lower()


def same_answer(task: str, a: str, b: str, options: list[str] | None) -> bool:
    """Whether the grader would call either one right if the other were the gold answer. Both ways:
    "Yes, because ..." is no well-formed gold, yet "yes" as the gold grades it right, so the vote
    must not depend on which of the two came first."""
    return _graded_equal(task, a, b, options) or _graded_equal(task, b, a, options)


@dataclass(frozen=True)
class Vote:
    answer: str | None  # the first sample answer of the winning group; None when nothing was extracted
    count: int  # samples in the winning group
    groups: list[list[int]]  # sample indices per equivalence group, groups in order of first appearance


def majority_vote(task: str, answers: list[str | None], options: list[str] | None = None) -> Vote:
    """Self-consistency vote. Ties go to the group whose first member came first in sample order,
    which is deterministic because each sample's seed is fixed by (seed, question, sample)."""
    groups: list[list[int]] = []
    for j, ans in enumerate(answers):
        if ans is None:
            continue  # no extracted answer: the sample abstains
        for group in groups:
            if same_answer(task, ans, answers[group[0]], options):
                group.append(j)
                break
        else:
            groups.append([j])
    if not groups:
        return Vote(None, 0, [])
    # max() keeps the first of equal keys, and groups are in order of first appearance
    best = max(groups, key=len)
    return Vote(answers[best[0]], len(best), groups)


def is_correct(task: str, answer: str | None, gold: str, options: list[str] | None) -> bool:
    return answer is not None and grade_answer(task, answer, gold, options)
