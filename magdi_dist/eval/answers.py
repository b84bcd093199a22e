"""From generated text to a graded answer: extraction, and the self-consistency majority vote.

The vote groups answers by what the grader considers equal (``grade_answer`` with a group's first
answer standing in as the gold), not by raw strings, so ``18``, ``$18`` and ``18.0`` are one vote and
``B``, ``B)300`` are one vote: exactly the equivalence that decides correctness.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from magdi_dist.data.prompt import ANSWER_PREFIX_RX as _PREFIX
from magdi_dist.mag.grading import GoldAnswerError, extract_boxed, grade_answer

# The training target ends with data/prompt.py's answer sentence, "The answer is X.". The first
# such statement after the prompt is the student's answer: generation stops there (``answer_end``,
# in data/prompt.py with the format it reads, so the registered pyfunc model cuts the same way),
# and what a student rambles on about afterwards (a made-up next question and its answer) is never
# graded. The answer ends at a full stop followed by a space, a line break or the end ("3.5." reads
# as 3.5); "is" must be followed by a space or a colon ("The answer isn't 5" states nothing).
_ANSWER_IS = re.compile(rf"(?i)\b{_PREFIX}(?=[\s:])\s*:?\s*(.*?)(?=\.\s|\.?\s*$|\n|\s+{_PREFIX})", re.S)
def extract_answer(text: str) -> str | None:
    """The answer of the first ``The answer is X.`` statement, else the last ``\\boxed{}``."""
    found = [m.group(1).strip() for m in _ANSWER_IS.finditer(text)]
    found = [a.strip(" *\"'`") for a in found if a.strip(" *\"'`")]
    if found:
        return found[0]
    boxed = extract_boxed(text)
    return boxed.strip() if boxed and boxed.strip() else None


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
