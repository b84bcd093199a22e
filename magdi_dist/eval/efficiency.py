"""Inference cost of the student against the teacher discussion it replaces.

A MAG's cost is every response it holds: all agents, all rounds (the reasoning text of each node;
missing nodes cost nothing), counted with the *student's* tokenizer so both sides are in the same
unit. The student's cost is what it generated to answer (all self-consistency samples). Questions are
matched by normalised question text; only matched pairs enter the ratio. Without any match the two
averages are still reported, over their own question sets, and ``matched`` says so.
"""

from __future__ import annotations

from pathlib import Path

from magdi_dist.mag.split import normalize_question  # the contamination key's normalisation, not a copy


def teacher_tokens(mags, tokenizer) -> dict[str, list[int]]:
    """Normalised question -> tokens of each teacher discussion of it (usually one)."""
    out: dict[str, list[int]] = {}
    for mag in mags:
        if not mag.question:
            continue
        texts = [r.reasoning for r in mag.responses if r.reasoning]
        n = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else 0
        out.setdefault(normalize_question(mag.question), []).append(n)
    return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def efficiency(teachers: str | Path, tokenizer, records: list[dict], task: str | None = None) -> dict:
    """Teachers' tokens per question vs the student's generated tokens, for the evaluated records."""
    from magdi_dist.mag.readers import read_mags

    read = read_mags([teachers], task=task, strict=False)  # a bad record only drops that question
    mags = read.mags
    by_question = teacher_tokens(mags, tokenizer)
    pairs = []
    for r in records:
        costs = by_question.get(normalize_question(r["question"]))
        if costs:
            pairs.append((_mean(costs), r["generated_tokens"], len(r["sample_tokens"])))
    result = {
        "teachers_file": str(teachers),
        "teacher_mags": len(mags),
        "teacher_rejected": len(read.rejected),
        "matched": len(pairs),
    }
    if pairs:
        t = _mean([p[0] for p in pairs])
        s = _mean([p[1] for p in pairs])
        s_answer = _mean([p[1] / p[2] for p in pairs])
        result.update(
            teacher_tokens_per_question=t,
            student_tokens_per_question=s,
            student_tokens_per_answer=s_answer,
            # ratio of the averages: total teacher tokens over total student tokens on the same questions
            teacher_to_student_ratio=t / s if s else None,
            teacher_to_student_per_answer_ratio=t / s_answer if s_answer else None,
            note="averages over the matched questions",
        )
    else:
        t = _mean([c for costs in by_question.values() for c in costs])
        s = _mean([r["generated_tokens"] for r in records])
        result.update(
            teacher_tokens_per_question=t,
            student_tokens_per_question=s,
            teacher_to_student_ratio=None,  # a ratio over different questions would mislead
            note="no question matched: averages over different question sets (teachers' file vs evaluated data)",
        )
    return result
