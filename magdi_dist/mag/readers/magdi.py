"""The MAGDi release layout (also the record layout of ReConcile's result pickles).

A JSON list of records::

    {"question": ..., "gold_answer": ..., "options": [...],            # options: MC tasks only
     "claude_output_0": {"reasoning": ..., "answer": ..., ...}, ...}    # <agent>_output_<round>

Agents and rounds come from the keys, so any number of either works; an agent name may itself contain
underscores, hence the regex anchored on the trailing ``_output_<round>``. ReConcile's bookkeeping
keys (votes, explanations, debate prompts) are derived data and ignored; any other key is an error so a
renamed or misspelt field never silently drops a response.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from magdi_dist.mag.errors import MAGInputError
from magdi_dist.mag.grading import infer_task
from magdi_dist.mag.readers._common import (
    ReadContext,
    Rejected,
    build_mag,
    file_level,
    load_json_document,
)
from magdi_dist.mag.readers._json import check_record
from magdi_dist.mag.schema import MAG

OUTPUT_KEY = re.compile(r"^(?P<agent>.+)_output_(?P<round>[^_]+)$")
BOOKKEEPING_KEY = re.compile(
    r"^(?:.+_(?:pred|exp)|vote|exps|weighted_vote|weighted_max|debate_prompt|majority_ans)_\d+$"
)
BASE_KEYS = {"question", "gold_answer", "options"}

# ``questions=`` for pickles: question text by record index.
QuestionSource = Sequence[str | None] | Mapping[int, str]


def _scalar_text(value: Any, where: str, *, yes_no: bool = False) -> str:
    """Answers are strings; JSON numbers (GSM8K golds) and booleans (StrategyQA golds) are accepted
    because real exports use them, and converted to the text a model would have written."""
    if isinstance(value, bool):
        if yes_no:
            return "yes" if value else "no"
        raise MAGInputError(f"expected a string, got a boolean ({value})", field=where)
    if isinstance(value, float) and not math.isfinite(value):
        raise MAGInputError(f"{value!r} is not a finite number (JSON has no NaN or Infinity)", field=where)
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return value
    raise MAGInputError(f"expected a string, got {type(value).__name__}", field=where)


def _response(key: str, agent: str, rnd: int, value: Any) -> dict:
    if not isinstance(value, dict):
        raise MAGInputError(f"expected an object {{reasoning, answer}}, got {type(value).__name__}", field=key)
    if "reasoning" not in value:
        raise MAGInputError("missing 'reasoning'", field=f"{key}.reasoning")
    reasoning = value["reasoning"]
    if not isinstance(reasoning, str):
        raise MAGInputError(f"expected a string, got {type(reasoning).__name__}", field=f"{key}.reasoning")
    if not reasoning.strip():
        # Absent nodes are absent keys in this layout; an empty chain is a broken export.
        raise MAGInputError(
            "reasoning is empty (leave the key out for an agent that did not answer)",
            field=f"{key}.reasoning",
        )
    answer = value.get("answer")
    if answer is not None:
        answer = _scalar_text(answer, f"{key}.answer")
    return {"agent": agent, "round": rnd, "reasoning": reasoning, "answer": answer}


def record_to_mag(
    rec: Any,
    index: int,
    ctx: ReadContext,
    *,
    require_question: bool = True,
    question: str | None = None,
    rounds: int | None = None,
) -> MAG:
    """One magdi-layout record -> graded MAG (id ``<file stem>-<index>``)."""
    # Depth only: NaN in ignored bookkeeping keys harms nothing; kept values are checked as they are read.
    check_record(rec, ctx.limits.max_depth, finite=False)
    if not isinstance(rec, dict):
        raise MAGInputError(f"expected an object per record, got {type(rec).__name__}")
    outputs: list[tuple[int, int, str, str, Any]] = []  # (round, key order, agent, key, value)
    for order, (key, value) in enumerate(rec.items()):
        if not isinstance(key, str):
            raise MAGInputError(f"non-string key {key!r}", field=repr(key))
        if key in BASE_KEYS or BOOKKEEPING_KEY.match(key):
            continue
        m = OUTPUT_KEY.match(key)
        if m is None:
            raise MAGInputError(
                "unknown key (expected question, gold_answer, options, <agent>_output_<round> "
                "or a ReConcile bookkeeping key)",
                field=key,
            )
        if not m.group("round").isdigit():
            raise MAGInputError(f"round {m.group('round')!r} is not a non-negative integer", field=key)
        outputs.append((int(m.group("round")), order, m.group("agent"), key, value))
    if not outputs:
        raise MAGInputError("no responses: the record has no <agent>_output_<round> key")

    q = rec.get("question")
    if q is None:
        q = question  # pickles: text re-joined by the caller
    if q is None and require_question:
        raise MAGInputError("missing 'question'", field="question")
    if q is not None and not isinstance(q, str):
        raise MAGInputError(f"expected a string, got {type(q).__name__}", field="question")
    if "gold_answer" not in rec or rec["gold_answer"] is None:
        raise MAGInputError("missing 'gold_answer'", field="gold_answer")
    options = rec.get("options")
    if options is not None:
        if not isinstance(options, list):
            raise MAGInputError(f"expected a list, got {type(options).__name__}", field="options")
        options = [_scalar_text(o, f"options[{k}]") for k, o in enumerate(options)]
    gold = _scalar_text(rec["gold_answer"], "gold_answer", yes_no=ctx.task in (None, "yes_no"))
    if not gold.strip():
        raise MAGInputError("gold answer is empty", field="gold_answer")
    task = ctx.task
    if task is None:
        try:
            task = infer_task(gold, options)
        except ValueError as err:
            raise MAGInputError(
                f"cannot infer the task family from gold answer {gold!r}: {err}; pass task=",
                field="gold_answer",
            ) from None

    # Round first, then the order of the keys: agent order (hence node order) follows round 0.
    outputs.sort(key=lambda o: (o[0], o[1]))
    keys = [o[3] for o in outputs]
    responses = [_response(key, agent, rnd, value) for rnd, _, agent, key, value in outputs]

    def field_name(i: int, attr: str | None) -> str:
        # agent and round live in the key itself; reasoning/answer inside its object
        return keys[i] if attr in (None, "agent", "round") else f"{keys[i]}.{attr}"

    data = {
        "id": f"{ctx.stem}-{index}",
        "task": task,
        "question": q,
        "gold_answer": gold,
        "options": options,
        "responses": responses,
        "rounds": rounds,
        "source": {"file": ctx.file, "record": index, "format": ctx.format},
    }
    return build_mag(data, ctx, field_name=field_name)


def question_for(questions: QuestionSource | None, index: int) -> str | None:
    if questions is None:
        return None
    if isinstance(questions, Mapping):
        return questions.get(index)
    return questions[index] if index < len(questions) else None


def file_rounds(records: list) -> int | None:
    """The deepest round any record of the file reached.

    ReConcile stops a discussion at consensus, so a record without ``<agent>_output_1`` did not
    have fewer rounds: its agents were silent. Every record gets the file's grid, and the silent
    (agent, round) pairs become ``missing`` nodes, the class the node objective must learn (the
    reference's graphs are a fixed agents x rounds grid for the same reason).
    """
    deepest = [
        int(m.group("round"))
        for rec in records
        if isinstance(rec, dict)
        for key in rec
        if isinstance(key, str) and (m := OUTPUT_KEY.match(key)) and m.group("round").isdigit()
    ]
    return max(deepest) + 1 if deepest else None


def iter_records(
    records: Any,
    ctx: ReadContext,
    *,
    require_question: bool = True,
    questions: QuestionSource | None = None,
) -> Iterator[MAG | Rejected]:
    """Records of an already-loaded document (shared with the pickle reader)."""
    if not isinstance(records, list):
        yield from file_level(
            MAGInputError(f"expected a list of records at the top level, got {type(records).__name__}"),
            ctx,
            raw=records,
        )
        return
    rounds = file_rounds(records)
    for index, rec in enumerate(records):
        try:
            yield record_to_mag(
                rec,
                index,
                ctx,
                require_question=require_question,
                question=question_for(questions, index),
                rounds=rounds,
            )
        except MAGInputError as err:
            yield Rejected(err.located(file=ctx.file, record=index), raw=rec, format=ctx.format, index=index)


def iter_magdi(path: Path, ctx: ReadContext) -> Iterator[MAG | Rejected]:
    try:
        records = load_json_document(path, ctx)
    except MAGInputError as err:
        yield from file_level(err, ctx)
        return
    yield from iter_records(records, ctx)
