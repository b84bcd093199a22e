"""The one error type for bad evaluation input (data file, options, model reference), so the CLI can
report it in one line with exit code 2 while a genuine bug still shows its traceback."""

from __future__ import annotations


class EvalInputError(ValueError):
    """Input the user has to fix; the message names the file, record or option."""


class EvalIncomplete(RuntimeError):
    """A remote evaluation some of whose samples no endpoint answered: its log keeps every answer it
    got, and running it again asks only the rest (the CLI exits 1)."""
