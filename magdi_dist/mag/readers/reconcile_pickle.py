"""ReConcile result pickles, loaded without ever executing code from the file.

``pickle.load`` on an untrusted file runs whatever callable the file names (``os.system`` included).
ReConcile's pickles only hold lists, dicts, strings and numbers, which the pickle machine builds with
its own opcodes; only classes and functions go through ``find_class``. Refusing every ``find_class``
therefore loads all legitimate files and stops every code-bearing one before anything runs.

Records are the magdi layout without ``question``; ``questions=`` re-joins the text by record index.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from magdi_dist.mag.errors import MAGInputError
from magdi_dist.mag.readers._common import ReadContext, Rejected, file_level, read_bytes
from magdi_dist.mag.readers.magdi import QuestionSource, iter_records
from magdi_dist.mag.schema import MAG


class RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str) -> None:
        self.global_name = f"{module}.{name}"
        super().__init__(self.global_name)


class RestrictedUnpickler(pickle.Unpickler):
    """Plain containers and scalars only: every global (class, function) is refused."""

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        raise RefusedGlobal(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"persistent id {pid!r} is not supported")


def safe_load(data: bytes, *, file: str) -> Any:
    """Unpickle plain data, or raise MAGInputError naming the file and the refused global."""
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except RefusedGlobal as err:
        raise MAGInputError(
            f"refused to load global {err.global_name!r}: ReConcile pickles may only contain plain "
            "data (lists, dicts, strings, numbers); nothing from this file was executed",
            file=file,
        ) from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        AttributeError,
        MemoryError,
        RecursionError,
    ) as err:
        # Truncated or corrupt streams surface as any of these, depending on where the bytes stop.
        raise MAGInputError(f"not a readable pickle ({type(err).__name__}: {err})", file=file) from None


def iter_pickle(path: Path, ctx: ReadContext, *, questions: QuestionSource | None = None) -> Iterator[MAG | Rejected]:
    try:
        records = safe_load(read_bytes(path, ctx), file=ctx.file)
    except MAGInputError as err:
        yield from file_level(err, ctx)
        return
    yield from iter_records(records, ctx, require_question=False, questions=questions)
