"""The canonical generic MAG JSONL: one ``MAG.to_json_dict()`` per line.

Streamed line by line, so a bad line (even one with broken UTF-8) rejects only itself. A record keeps
its ``source`` when it has one (provenance survives re-sharding and read -> write -> read is the
identity). Labels in a record are re-graded like every other reader's output, so a stale label
(a regraded gold, a fixed grader) never survives a round through JSONL.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from magdi_dist.mag.errors import MAGInputError
from magdi_dist.mag.grading import infer_task
from magdi_dist.mag.readers._common import (
    ReadContext,
    Rejected,
    build_mag,
    decode_utf8,
    file_level,
)
from magdi_dist.mag.readers._json import check_record, parse_json
from magdi_dist.mag.schema import MAG


def record_to_mag(data: object, line_index: int, ctx: ReadContext) -> MAG:
    if not isinstance(data, dict):
        raise MAGInputError(f"expected a JSON object per line, got {type(data).__name__}")
    check_record(data, ctx.limits.max_depth)
    data = dict(data)
    if "task" not in data:
        if ctx.task is not None:
            data["task"] = ctx.task
        else:
            try:
                data["task"] = infer_task(str(data.get("gold_answer", "")), data.get("options"))
            except ValueError as err:
                raise MAGInputError(f"no 'task' and none can be inferred: {err}", field="task") from None
    if data.get("source") is None:
        data["source"] = {"file": ctx.file, "record": line_index, "format": ctx.format}
    return build_mag(data, ctx)


def iter_jsonl(path: Path, ctx: ReadContext) -> Iterator[MAG | Rejected]:
    try:
        fh = path.open("rb")
    except OSError as err:
        yield from file_level(MAGInputError(f"cannot open: {err}"), ctx)
        return
    with fh:
        for line_index, raw in enumerate(fh):
            if not raw.strip():
                continue  # blank lines are not records
            record: int | str = line_index
            try:
                if len(raw) > ctx.limits.max_file_bytes:
                    raise MAGInputError(f"line is {len(raw)} bytes, over ReadLimits.max_file_bytes")
                text = decode_utf8(raw, file=ctx.file, line_index=line_index)
                data = parse_json(text, file=ctx.file, line_index=line_index, max_depth=ctx.limits.max_depth)
                if isinstance(data, dict) and isinstance(data.get("id"), str):
                    record = data["id"]  # users search their file by id
                yield record_to_mag(data, line_index, ctx)
            except MAGInputError as err:
                yield Rejected(
                    err.located(file=ctx.file, record=record),
                    raw=raw.decode("utf-8", errors="replace"),
                    format=ctx.format,
                    index=line_index,
                )


def write_mags_jsonl(mags: Iterable[MAG], path: str | Path) -> int:
    """Write MAGs as canonical JSONL (UTF-8, one record per line); returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for mag in mags:
            fh.write(json.dumps(mag.to_json_dict(), ensure_ascii=False) + "\n")
            n += 1
    return n
