"""Shared reader machinery: limits, rejects, file loading with precise error positions, and the one
place where a reader's draft record becomes a validated, graded MAG.

Every reader turns raw input into a plain ``dict`` shaped like ``MAG`` plus a ``field_name`` function
that maps ``(response index, attribute)`` back to the key path *in the raw file* (``gpt3_output_1``,
``agent_contexts[2][3].content``, ``responses[3].round``). Errors therefore always point at what the
user has to edit, not at our internal model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from magdi_dist.mag.errors import MAGInputError
from magdi_dist.mag.grading import GoldAnswerError, grade_mag
from magdi_dist.mag.readers._json import Unparsed, parse_document
from magdi_dist.mag.schema import MAG, json_problem

FieldName = Callable[[int, "str | None"], str]

EXCERPT_CHARS = 400
# The one text limit: the readers refuse longer text, and the debate client refuses a reply whose
# message is longer, so every MAG the project writes is one it reads back.
MAX_TEXT_CHARS = 1_000_000
# Real records nest 5 levels (record > responses > response > meta > usage); the limit leaves room
# for richer meta and stops input that would exhaust the stack of anything walking it recursively.
MAX_DEPTH = 64


@dataclass(frozen=True)
class ReadLimits:
    """Size guards. Defaults are generous (real teacher chains are 1-4 KB, MAGs 3x3 to 5x5) and only
    stop input that would blow up tokenisation or memory downstream (a runaway generation)."""

    max_text_chars: int = MAX_TEXT_CHARS  # one question / reasoning / answer / gold answer
    max_responses: int = 4096  # nodes in one MAG (agents x rounds)
    max_file_bytes: int = 1 << 30  # whole-document formats (JSON, pickle) are loaded into memory
    max_depth: int = MAX_DEPTH  # nesting of arrays and objects in one record (the record is level 1)


@dataclass
class ReadContext:
    """What a reader knows about the file it reads."""

    file: str
    format: str
    task: str | None = None  # explicit task= or the family the file name implies
    limits: ReadLimits = field(default_factory=ReadLimits)

    @property
    def stem(self) -> str:
        return Path(self.file).stem


@dataclass
class Rejected:
    """One record (or a whole unreadable file, ``index`` None) that did not become a MAG."""

    error: MAGInputError
    raw: Any = None
    format: str = ""
    index: int | None = None

    def as_dict(self) -> dict:
        out = self.error.as_dict()
        out["format"] = self.format
        out["index"] = self.index
        out["raw_excerpt"] = excerpt(self.raw)
        return out


def excerpt(raw: Any, limit: int = EXCERPT_CHARS) -> str | None:
    """A short printable view of the offending input, for the rejects file."""
    if raw is None:
        return None
    if isinstance(raw, Unparsed):
        raw = raw.text
    if isinstance(raw, bytes):
        text = repr(raw)
    elif isinstance(raw, str):
        text = raw
    else:
        try:
            text = json.dumps(raw, ensure_ascii=False, default=repr)
        except (TypeError, ValueError, RecursionError):  # a cycle (plain pickles can build one), or deep
            try:
                text = repr(raw)
            except RecursionError:  # the parser took it, but no recursive printer does
                text = f"<{type(raw).__name__} nested too deeply to show>"
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more chars]"


# --- whole-file loading -------------------------------------------------------------------------


def read_bytes(path: Path, ctx: ReadContext) -> bytes:
    size = path.stat().st_size
    if size > ctx.limits.max_file_bytes:
        raise MAGInputError(
            f"file is {size} bytes, over the {ctx.limits.max_file_bytes}-byte limit for "
            f"{ctx.format} files (raise ReadLimits.max_file_bytes, or convert to JSONL)",
            file=ctx.file,
        )
    return path.read_bytes()


def decode_utf8(data: bytes, *, file: str, line_index: int | None = None) -> str:
    """UTF-8 text (a leading BOM is tolerated), or an error naming the first bad byte and its line.

    ``line_index`` says ``data`` is that one (0-based) line of a file rather than a whole file."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        bad = data[err.start : err.start + 1].hex()
        if line_index is None:
            line = data.count(b"\n", 0, err.start) + 1
            where = f"byte offset {err.start} (line {line})"
        else:
            where = f"line {line_index + 1}, byte {err.start} of the line"
        raise MAGInputError(f"not valid UTF-8: byte 0x{bad} at {where}: {err.reason}", file=file) from None


def load_json_document(path: Path, ctx: ReadContext) -> Any:
    """The parsed document; a record too deep to parse comes back as an ``Unparsed`` element."""
    return parse_document(decode_utf8(read_bytes(path, ctx), file=ctx.file), file=ctx.file,
                          max_depth=ctx.limits.max_depth)


def file_level(error: MAGInputError, ctx: ReadContext, raw: Any = None) -> Iterator[Rejected]:
    """A file that cannot be parsed at all counts as one rejected record (index None)."""
    yield Rejected(error.located(file=ctx.file), raw=raw, format=ctx.format, index=None)


# --- task families from file names --------------------------------------------------------------

# Tokens are delimited by non-letters so ``ECQA`` is not read as ``SQA`` and ``GSM8k`` matches.
_TASK_TOKENS = [
    (re.compile(r"(?i)(?<![a-z])(?:sqa|strategyqa)(?![a-z])"), "yes_no"),
    (re.compile(r"(?i)(?<![a-z])(?:ecqa|csqa|aqua|commonsenseqa)(?![a-z])"), "multiple_choice"),
    (re.compile(r"(?i)(?<![a-z])gsm(?:8k)?(?![a-z])"), "numeric"),
    (re.compile(r"(?i)(?<![a-z])math(?![a-z])"), "math"),
]


def task_from_filename(path: str | Path) -> str | None:
    stem = Path(path).stem
    for pattern, family in _TASK_TOKENS:
        if pattern.search(stem):
            return family
    return None


# --- draft -> MAG ------------------------------------------------------------------------------


def default_field_name(i: int, attr: str | None) -> str:
    return f"responses[{i}]" + (f".{attr}" if attr else "")


def _loc_to_path(loc: tuple, field_name: FieldName) -> str | None:
    if not loc:
        return None
    if loc[0] == "responses" and len(loc) >= 2 and isinstance(loc[1], int):
        attr = ".".join(str(p) for p in loc[2:]) or None
        return field_name(loc[1], attr)
    out = str(loc[0])
    for part in loc[1:]:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


_INDEXED_MSG = re.compile(r"(responses|edges)\[(\d+)\]")


def translate_validation_error(
    err: ValidationError, data: dict, field_name: FieldName = default_field_name
) -> MAGInputError:
    """A pydantic error as a MAGInputError whose ``field`` is the raw key path (first error wins;
    the message counts the rest so the user knows there is more to fix)."""
    errors = err.errors()
    first = errors[0]
    msg = str(first["msg"]).removeprefix("Value error, ")
    path = _loc_to_path(tuple(first["loc"]), field_name)
    if path is None:  # a model-level check: recover the field from the schema's own message
        m = _INDEXED_MSG.match(msg)  # the schema starts such messages with the index
        if m and m.group(1) == "responses":
            path = field_name(int(m.group(2)), None)
            msg = msg[m.end() :].lstrip(": ")  # our index means nothing in the raw file
        elif m:
            path = f"edges[{m.group(2)}]"
        elif "without gaps" in msg:
            path = _first_after_gap(data, field_name)
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    value = first.get("input")
    if isinstance(value, str):
        shown = f" (got {excerpt(value, 80)!r})"
    elif isinstance(value, int | float | bool):
        shown = f" (got {value!r})"
    else:
        shown = ""  # containers: the field path says enough
    return MAGInputError(f"{msg}{shown}{more}", field=path)


def _first_after_gap(data: dict, field_name: FieldName) -> str | None:
    rounds = [r.get("round") if isinstance(r, dict) else None for r in data.get("responses", [])]
    present = {r for r in rounds if isinstance(r, int)}
    gap = next(r for r in range(len(present) + 1) if r not in present)
    for i, r in enumerate(rounds):
        if isinstance(r, int) and r > gap:
            return field_name(i, "round")
    return None


def _check_limits(data: dict, limits: ReadLimits, field_name: FieldName) -> None:
    responses = data.get("responses")
    if isinstance(responses, list) and len(responses) > limits.max_responses:
        raise MAGInputError(
            f"{len(responses)} responses, over the limit of {limits.max_responses} (ReadLimits.max_responses)",
            field="responses",
        )

    def check(text: Any, where: str) -> None:
        if isinstance(text, str) and len(text) > limits.max_text_chars:
            raise MAGInputError(
                f"{len(text)} characters, over the limit of {limits.max_text_chars} (ReadLimits.max_text_chars)",
                field=where,
            )

    check(data.get("question"), "question")
    check(data.get("gold_answer"), "gold_answer")
    for i, resp in enumerate(responses if isinstance(responses, list) else []):
        if isinstance(resp, dict):
            check(resp.get("reasoning"), field_name(i, "reasoning"))
            check(resp.get("answer"), field_name(i, "answer"))


def build_mag(data: dict, ctx: ReadContext, *, field_name: FieldName = default_field_name) -> MAG:
    """Validate a draft record and return the graded MAG on its full grid.

    Labels in the input are re-graded (``grade_mag``'s contract: stale labels never survive).
    """
    _check_limits(data, ctx.limits, field_name)
    problem = json_problem(data, max_depth=ctx.limits.max_depth)
    if problem is not None:  # NaN/Infinity or deep nesting in what the MAG keeps (meta, generation)
        raise MAGInputError(problem[1], field=_loc_to_path(problem[0], field_name))
    try:
        mag = MAG.model_validate(data)
    except ValidationError as err:
        raise translate_validation_error(err, data, field_name) from None
    try:
        return grade_mag(mag)
    except MAGInputError:
        raise
    except GoldAnswerError as err:
        raise MAGInputError(
            f"gold answer {mag.gold_answer!r} cannot be parsed for task family {mag.task!r}",
            field="gold_answer",
        ) from err
    except ValueError as err:  # contradictory input, e.g. a node labelled missing with reasoning
        m = _INDEXED_MSG.search(str(err))
        where = field_name(int(m.group(2)), "label") if m and m.group(1) == "responses" else None
        raise MAGInputError(str(err), field=where) from None
