"""The exceptions racequant raises: one root, a child per kind of failure."""

from __future__ import annotations

from dataclasses import dataclass


class RacequantError(Exception):
    """Root of every error racequant raises on purpose."""


class ConfigurationError(RacequantError):
    """A setting or parameter has an invalid value."""


class WarehouseError(RacequantError):
    """The warehouse cannot be opened, migrated or written."""


@dataclass(frozen=True)
class Problem:
    """One problem found in an input file: where it is and what is wrong."""

    file: str
    row: int | None
    column: str | None
    message: str
    race_id: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f", row {self.row}"
        if self.column is not None:
            where += f", column '{self.column}'"
        return f"{where}: {self.message}"


class ImportValidationError(RacequantError):
    """An import found invalid input; nothing was written."""

    max_listed = 20

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        listed = "\n".join(f"  - {p}" for p in self.problems[: self.max_listed])
        more = len(self.problems) - self.max_listed
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(
            f"Import failed with {len(self.problems)} problem(s); the warehouse is unchanged.\n{listed}{tail}"
        )
