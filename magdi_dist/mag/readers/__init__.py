"""Teacher input -> graded MAGs. Four formats, detected from the content (the extension only breaks
ties), with the same error discipline: strict mode raises ``MAGInputError`` naming the file, record
and field; lenient mode rejects the record (to a JSONL file when given) and keeps going, so a bad
record never costs the good ones. ``records_in == len(mags) + len(rejected)`` always holds.

``iter_items`` / ``iter_mags`` stream one file (what the Ray pipeline uses); ``read_mags`` reads many.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from magdi_dist.mag.errors import MAGInputError
from magdi_dist.mag.readers._common import (
    ReadContext,
    ReadLimits,
    Rejected,
    file_level,
    task_from_filename,
)
from magdi_dist.mag.readers.debate import iter_debate
from magdi_dist.mag.readers.jsonl import iter_jsonl, write_mags_jsonl
from magdi_dist.mag.readers.magdi import QuestionSource, iter_magdi
from magdi_dist.mag.readers.reconcile_pickle import iter_pickle
from magdi_dist.mag.schema import MAG, TASK_FAMILIES

FORMATS = ("magdi", "debate", "reconcile_pickle", "jsonl")

__all__ = [
    "FORMATS",
    "ReadLimits",
    "ReadResult",
    "Rejected",
    "detect_format",
    "iter_items",
    "iter_mags",
    "read_mags",
    "write_mags_jsonl",
]


@dataclass
class ReadResult:
    mags: list[MAG] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)  # {file, record, field, reason, raw_excerpt,..}
    records_in: int = 0


# --- detection ---------------------------------------------------------------------------------

_HEAD_BYTES = 1 << 16
# A debate document opens with its first question and the start of that question's list.
_DEBATE_HEAD = re.compile(r'^\{\s*"(?:[^"\\]|\\.)*"\s*:\s*\[', re.S)
_BY_SUFFIX = {".pkl": "reconcile_pickle", ".pickle": "reconcile_pickle", ".jsonl": "jsonl", ".json": "magdi"}


def detect_format(path: str | Path) -> str:
    """The format of ``path`` from its first bytes; raises MAGInputError when nothing fits."""
    path = Path(path)
    with path.open("rb") as fh:
        head = fh.read(_HEAD_BYTES)
    if not head.strip():
        raise MAGInputError("file is empty", file=str(path))
    if head[:1] == b"\x80":  # PROTO opcode: every pickle of protocol 2 and up
        return "reconcile_pickle"
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if text.startswith("["):
        return "magdi"
    if text.startswith("{"):
        first = text.split("\n", 1)[0]
        try:
            obj = json.loads(first)
        except (ValueError, RecursionError):
            obj = None  # first line longer than the head, a pretty-printed document, or nested too deep
        if isinstance(obj, dict):
            debate = bool(obj) and "responses" not in obj and all(isinstance(v, list) for v in obj.values())
            return "debate" if debate else "jsonl"
        return "debate" if _DEBATE_HEAD.match(text) else "jsonl"
    if path.suffix.lower() in _BY_SUFFIX:  # old pickle protocols, or bytes too broken to sniff
        return _BY_SUFFIX[path.suffix.lower()]
    raise MAGInputError(
        f"cannot detect the format from the content; pass format= (one of {', '.join(FORMATS)})",
        file=str(path),
    )


# --- streaming ---------------------------------------------------------------------------------


def _check_choice(value: str | None, allowed: Sequence[str], what: str) -> None:
    if value is not None and value not in allowed:
        raise MAGInputError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}", field=what)


def iter_items(
    path: str | Path,
    *,
    format: str | None = None,
    task: str | None = None,
    questions: QuestionSource | None = None,
    limits: ReadLimits | None = None,
) -> Iterator[MAG | Rejected]:
    """Every record of one file, as a graded MAG or a ``Rejected`` (never raises for bad input)."""
    _check_choice(format, FORMATS, "format")
    _check_choice(task, TASK_FAMILIES, "task")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    ctx = ReadContext(file=str(path), format=format or "unknown", limits=limits or ReadLimits())
    if format is None:
        try:
            ctx.format = detect_format(path)
        except MAGInputError as err:
            yield from file_level(err, ctx)
            return
    # An explicit task wins; otherwise the file name (SQA_..., GSM8k_...) says it; otherwise each
    # reader falls back to its own default or to infer_task on the record's gold answer.
    ctx.task = task or (task_from_filename(path) if ctx.format in ("magdi", "reconcile_pickle") else None)
    if ctx.format == "magdi":
        yield from iter_magdi(path, ctx)
    elif ctx.format == "debate":
        yield from iter_debate(path, ctx)
    elif ctx.format == "reconcile_pickle":
        yield from iter_pickle(path, ctx, questions=questions)
    else:
        yield from iter_jsonl(path, ctx)


def iter_mags(
    path: str | Path,
    *,
    format: str | None = None,
    task: str | None = None,
    strict: bool = True,
    questions: QuestionSource | None = None,
    limits: ReadLimits | None = None,
    on_reject: Callable[[dict], None] | None = None,
) -> Iterator[MAG]:
    """The good MAGs of one file. Strict: the first bad record raises. Lenient: each reject goes to
    ``on_reject`` (as the rejects-file dict) and reading goes on."""
    for item in iter_items(path, format=format, task=task, questions=questions, limits=limits):
        if isinstance(item, Rejected):
            if strict:
                raise item.error
            if on_reject is not None:
                on_reject(item.as_dict())
        else:
            yield item


def _questions_for(questions: object, path: Path) -> QuestionSource | None:
    """``questions`` is either one index -> text source for every file, or a mapping from a file's
    path, name or stem to its own source."""
    if questions is None or not isinstance(questions, Mapping):
        return questions  # type: ignore[return-value]
    if questions and all(isinstance(k, str) for k in questions):
        for key in (str(path), path.name, path.stem):
            if key in questions:
                return questions[key]
        return None
    return questions  # type: ignore[return-value]


def read_mags(
    paths: Sequence[str | Path] | str | Path,
    *,
    format: str | None = None,
    task: str | None = None,
    strict: bool = True,
    rejects: Path | str | None = None,
    questions: QuestionSource | Mapping[str, QuestionSource] | None = None,
    limits: ReadLimits | None = None,
) -> ReadResult:
    """Read every file. In lenient mode each reject is appended to ``rejects`` (JSONL) as it happens,
    so a crash mid-way still leaves the record of what was dropped; appending (not truncating) lets
    per-file callers share one rejects file."""
    if isinstance(paths, str | Path):
        paths = [paths]
    _check_choice(format, FORMATS, "format")
    _check_choice(task, TASK_FAMILIES, "task")
    result = ReadResult()
    with contextlib.ExitStack() as stack:
        sink = None
        if rejects is not None and not strict:
            Path(rejects).parent.mkdir(parents=True, exist_ok=True)
            sink = stack.enter_context(Path(rejects).open("a", encoding="utf-8"))
        for p in paths:
            path = Path(p)
            for item in iter_items(
                path, format=format, task=task, questions=_questions_for(questions, path), limits=limits
            ):
                result.records_in += 1
                if isinstance(item, MAG):
                    result.mags.append(item)
                    continue
                if strict:
                    raise item.error
                entry = item.as_dict()
                result.rejected.append(entry)
                if sink is not None:
                    sink.write(json.dumps(entry, ensure_ascii=False) + "\n")
                    sink.flush()
    # Nothing may be dropped silently: every record read is either a MAG or a reject.
    assert result.records_in == len(result.mags) + len(result.rejected), "record accounting broken"
    return result
