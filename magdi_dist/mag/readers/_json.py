"""JSON parsing that turns hostile input into one rejected record instead of an exception.

Python's parser recurses once per nesting level, so a record nested some thousand levels deep raises
``RecursionError`` (not a ``JSONDecodeError``) and, inside a whole-document file, would cost every
record of the file. Here such a document is re-split into its top-level elements with a flat scan
(strings skipped, brackets counted, no recursion) and each element parsed on its own: the deep one
becomes an ``Unparsed`` that its reader rejects, the others read as usual. The scan runs only after
the fast parse failed, so well-formed files pay nothing for it.

Parsed records are then held to ``ReadLimits.max_depth`` and to finite numbers (JSON has no NaN or
Infinity; Python's parser accepts them, and a MAG written back would turn them into null) by
``check_record``, an iterative walk, so the check cannot itself overflow the stack it guards.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from magdi_dist.mag.errors import MAGInputError
from magdi_dist.mag.schema import json_problem, key_path

# A JSON string (escapes included) or one structural character; everything else is skipped.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},:]')
_KEY = re.compile(r'\s*("[^"\\]*(?:\\.[^"\\]*)*")\s*:')


@dataclass(frozen=True)
class Unparsed:
    """A top-level element of a document that did not parse on its own; its reader rejects it."""

    error: MAGInputError
    text: str


class TooDeepToParse(MAGInputError):
    """Python's parser ran out of recursion: the input nests far past any ``max_depth``."""

    def __init__(self, max_depth: int, file: str) -> None:
        super().__init__(f"nested more than {max_depth} levels deep (ReadLimits.max_depth): too deep for the "
                         "JSON parser", file=file)


def _decode_error(err: ValueError, text: str, what: str, line_index: int | None) -> str:
    if not isinstance(err, json.JSONDecodeError):  # e.g. an integer of more than 4300 digits
        return f"invalid JSON: {err}"
    hint = f" (the {what} looks truncated)" if err.pos >= len(text.rstrip()) else ""
    where = (
        f"line {err.lineno} column {err.colno} (char {err.pos})"
        if line_index is None
        else f"line {line_index + 1} column {err.colno}"
    )
    return f"invalid JSON at {where}: {err.msg}{hint}"


def parse_json(text: str, *, file: str, max_depth: int, line_index: int | None = None) -> Any:
    """Parsed JSON, or an error with the line and column (``line_index``: ``text`` is that line)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise TooDeepToParse(max_depth, file) from None
    except ValueError as err:
        what = "file" if line_index is None else "line"
        raise MAGInputError(_decode_error(err, text, what, line_index), file=file) from None


def _element_spans(text: str) -> tuple[str, list[tuple[int, int]]] | None:
    """The top-level container's opening bracket and each element's (start, end), or None when the
    text is not one complete container."""
    depth, opener, start, spans, end = 0, "", 0, [], None
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if tok[0] == '"' or tok == ":":
            continue
        if tok in "[{":
            depth += 1
            if depth == 1:
                opener, start = tok, m.end()
        elif tok in "]}":
            depth -= 1
            if depth == 0:
                spans.append((start, m.start()))
                end = m.end()
                break
        elif depth == 1:  # a comma between two top-level elements
            spans.append((start, m.start()))
            start = m.end()
    if end is None or text[end:].strip() or text[: text.find(opener)].strip(" \t\r\n\ufeff"):
        return None
    if len(spans) == 1 and not text[spans[0][0] : spans[0][1]].strip():
        spans = []  # an empty container
    return opener, spans


def _parse_element(text: str, start: int, end: int, file: str, max_depth: int) -> Any:
    piece = text[start:end]
    try:
        return json.loads(piece)
    except RecursionError:
        error = TooDeepToParse(max_depth, file)
    except ValueError as err:
        line = text.count("\n", 0, start) + 1
        error = MAGInputError(f"{_decode_error(err, piece, 'record', None)} of the record starting on line "
                              f"{line} of the file", file=file)
    return Unparsed(error, piece)


def parse_document(text: str, *, file: str, max_depth: int) -> Any:
    """A whole-document file; past the parser's nesting limit, its elements one by one."""
    try:
        return parse_json(text, file=file, max_depth=max_depth)
    except TooDeepToParse:
        layout = _element_spans(text)
        if layout is None:
            raise
    opener, spans = layout
    if opener == "[":
        return [_parse_element(text, s, e, file, max_depth) for s, e in spans]
    out: dict[str, Any] = {}
    for s, e in spans:
        m = _KEY.match(text, s, e)
        if m is None:  # not "key": value; the fast parse would have said so had it got this far
            raise MAGInputError(f"invalid JSON: expected a quoted key at char {s}", file=file)
        out[json.loads(m.group(1))] = _parse_element(text, m.end(), e, file, max_depth)
    return out


def check_record(raw: Any, max_depth: int, *, finite: bool = True) -> None:
    """Raise the first place where a parsed record nests deeper than ``max_depth`` or (``finite``)
    holds NaN or Infinity, naming the key path in the raw record."""
    if isinstance(raw, Unparsed):
        raise raw.error
    problem = json_problem(raw, max_depth=max_depth, finite=finite)
    if problem is not None:
        loc, reason = problem
        raise MAGInputError(reason, field=key_path(loc))
