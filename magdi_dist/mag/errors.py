"""Errors for bad teacher input: every one names the file, the record and the field."""

from __future__ import annotations


class MAGInputError(ValueError):
    """A record that cannot become a MAG.

    ``record`` is the record's index in its file (or its id when it has one) and ``field`` the
    offending key path (``"responses[3].round"``), so a user can find the line to fix.
    """

    def __init__(
        self,
        reason: str,
        *,
        file: str | None = None,
        record: int | str | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = reason
        self.file = file
        self.record = record
        self.field = field
        super().__init__(self._message())

    def _message(self) -> str:
        where = []
        if self.file is not None:
            where.append(f"file {self.file}")
        if self.record is not None:
            where.append(f"record {self.record}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        return f"{', '.join(where)}: {self.reason}" if where else self.reason

    def located(
        self, *, file: str | None = None, record: int | str | None = None
    ) -> MAGInputError:
        """The same error with the file and record filled in where they were unknown."""
        return MAGInputError(
            self.reason,
            file=self.file if self.file is not None else file,
            record=self.record if self.record is not None else record,
            field=self.field,
        )

    def as_dict(self) -> dict:
        return {"file": self.file, "record": self.record, "field": self.field, "reason": self.reason}
