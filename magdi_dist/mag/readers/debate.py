"""Du et al.'s multi-agent debate layout (``llm_multiagent_debate`` and its forks).

One JSON object ``{question_text: [agent_contexts, gold_solution]}``. ``agent_contexts[a]`` is agent
a's chat history; each assistant message is one round (round 0 = its first assistant turn), user
messages are prompts and what the agent read from the others. Forks differ in details we tolerate:
some end a history with a trailing user turn that was never answered, and a few histories hold two
assistant turns in a row (a retried generation): each is still one round, as the brief defines it.
The answer is the last ``\\boxed{...}`` of the message (None when absent: graded incorrect, the agent
did speak). The gold answer follows the last ``####`` of the GSM8K solution.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from magdi_dist.mag.errors import MAGInputError
from magdi_dist.mag.grading import extract_boxed
from magdi_dist.mag.readers._common import (
    ReadContext,
    Rejected,
    build_mag,
    file_level,
    load_json_document,
)
from magdi_dist.mag.readers._json import Unparsed, check_record
from magdi_dist.mag.schema import MAG

ROLES = {"user", "assistant", "system"}


def gold_from_solution(solution: str) -> str:
    """GSM8K gold: the text after the last ``####``, stripped, thousands separators removed."""
    if "####" not in solution:
        raise MAGInputError("no '####' marker before the final answer", field="gold_solution")
    gold = solution.rsplit("####", 1)[1].strip().replace(",", "")
    if not gold:
        raise MAGInputError("nothing after the last '####'", field="gold_solution")
    return gold


def _agent_responses(a: int, context: Any) -> tuple[list[dict], list[str]]:
    where = f"agent_contexts[{a}]"
    if not isinstance(context, list):
        raise MAGInputError(f"expected a list of messages, got {type(context).__name__}", field=where)
    responses: list[dict] = []
    fields: list[str] = []
    for m, msg in enumerate(context):
        at = f"{where}[{m}]"
        if not isinstance(msg, dict):
            raise MAGInputError(f"expected a message object, got {type(msg).__name__}", field=at)
        if "role" not in msg:
            raise MAGInputError("message has no 'role'", field=f"{at}.role")
        role = msg["role"]
        if role not in ROLES:
            raise MAGInputError(f"unknown role {role!r}; expected one of {sorted(ROLES)}", field=f"{at}.role")
        content = msg.get("content")
        if not isinstance(content, str):
            raise MAGInputError(f"expected string content, got {type(content).__name__}", field=f"{at}.content")
        if role != "assistant":
            continue  # prompts, and what the agent read; trailing unanswered user turns included
        if not content.strip():
            raise MAGInputError("assistant message is empty", field=f"{at}.content")
        responses.append(
            {"agent": f"agent{a}", "round": len(responses), "reasoning": content, "answer": extract_boxed(content)}
        )
        fields.append(at)
    if not responses:
        raise MAGInputError("agent never answered (no assistant message)", field=where)
    return responses, fields


def record_to_mag(question: Any, value: Any, index: int, ctx: ReadContext) -> MAG:
    check_record(value, ctx.limits.max_depth, finite=False)  # only strings are kept from here
    if not isinstance(value, list) or len(value) != 2:
        raise MAGInputError("expected [agent_contexts, gold_solution]")
    contexts, solution = value
    if not isinstance(question, str) or not question.strip():
        raise MAGInputError("question text (the object key) is empty", field="question")
    if not isinstance(contexts, list) or not contexts:
        raise MAGInputError("expected a non-empty list of agent histories", field="agent_contexts")
    if not isinstance(solution, str):
        raise MAGInputError(f"expected the gold solution text, got {type(solution).__name__}", field="gold_solution")
    responses: list[dict] = []
    fields: list[str] = []
    for a, context in enumerate(contexts):
        r, f = _agent_responses(a, context)
        responses += r
        fields += f

    def field_name(i: int, attr: str | None) -> str:
        return fields[i] + (".content" if attr in ("reasoning", "answer") else "")

    data = {
        "id": f"{ctx.stem}-{index}",
        "task": ctx.task or "numeric",
        "question": question,
        "gold_answer": gold_from_solution(solution),
        "responses": responses,
        "source": {"file": ctx.file, "record": index, "format": ctx.format},
    }
    return build_mag(data, ctx, field_name=field_name)


def iter_debate(path: Path, ctx: ReadContext) -> Iterator[MAG | Rejected]:
    try:
        doc = load_json_document(path, ctx)
    except MAGInputError as err:
        yield from file_level(err, ctx)
        return
    if not isinstance(doc, dict):
        yield from file_level(
            MAGInputError(
                f"expected an object {{question: [agent_contexts, gold_solution]}}, got {type(doc).__name__}"
            ),
            ctx,
            raw=doc,
        )
        return
    for index, (question, value) in enumerate(doc.items()):
        try:
            yield record_to_mag(question, value, index, ctx)
        except MAGInputError as err:
            yield Rejected(
                err.located(file=ctx.file, record=index),
                raw={question: value.text if isinstance(value, Unparsed) else value},
                format=ctx.format,
                index=index,
            )
