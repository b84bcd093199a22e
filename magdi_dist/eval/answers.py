"""From generated text to a graded answer: extraction, and the self-consistency majority vote.

The vote groups answers by what the grader considers equal (``grade_answer`` with a group's first
answer standing in as the gold), not by raw strings, so ``18``, ``$18`` and ``18.0`` are one vote and
``B``, ``B)300`` are one vote: exactly the equivalence that decides correctness.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from magdi_dist.data.prompt import ANSWER_PREFIX
from magdi_dist.mag.grading import GoldAnswerError, extract_boxed, grade_answer

# The training target ends with data/prompt.py's answer sentence, "The answer is X.". The last such
# sentence wins, so a chain that quotes another answer earlier is still read at its conclusion; the
# answer ends at a full stop followed by a space, a line break or the end ("3.5." reads as 3.5).
_PREFIX = re.escape(ANSWER_PREFIX.strip())
_ANSWER_IS = re.compile(rf"(?i)\b{_PREFIX}\s*:?\s*(.*?)(?=\.\s|\.?\s*$|\n|\s+{_PREFIX})", re.S)


def extract_answer(text: str) -> str | None:
    """The answer stated by ``... The answer is X.`` (last occurrence), else the last ``\\boxed{}``."""
    found = [m.group(1).strip() for m in _ANSWER_IS.finditer(text)]
    found = [a.strip(" *\"'`") for a in found if a.strip(" *\"'`")]
    if found:
        return found[-1]
    boxed = extract_boxed(text)
    return boxed.strip() if boxed and boxed.strip() else None


def same_answer(task: str, a: str, b: str, options: list[str] | None) -> bool:
    """Whether the grader would call ``a`` right if ``b`` were the gold answer."""
    try:
        return grade_answer(task, a, b, options)
    except GoldAnswerError:  # ``b`` is not a well-formed answer for the family: compare as text
        return a.strip().lower() == b.strip().lower()


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
