"""Importers: parse and validate result files into the canonical rows (see ``schema``)."""

from __future__ import annotations

from pathlib import Path

from racequant.errors import ConfigurationError
from racequant.ingest.schema import ParsedResults

FORMATS = ("hkjc-kaggle", "racequant")


def parse(path: Path | str, fmt: str, *, source: str | None = None, skip_invalid: bool = False) -> ParsedResults:
    """Parse the result files at ``path`` in format ``fmt`` into canonical rows.

    ``source`` labels the data set in the warehouse (default: the folder's name). With
    ``skip_invalid`` the invalid races are left out and listed in ``rejected_rows``; without it
    every problem is returned in ``problems`` and the warehouse loader refuses the import.
    """
    path = Path(path)
    if fmt == "hkjc-kaggle":
        from racequant.ingest.hkjc_kaggle import parse_hkjc_kaggle

        return parse_hkjc_kaggle(path, source=source, skip_invalid=skip_invalid)
    if fmt == "racequant":
        from racequant.ingest.results_format import parse_results_format

        return parse_results_format(path, source=source, skip_invalid=skip_invalid)
    raise ConfigurationError(
        f"The 'format' parameter of ingest must be one of {', '.join(FORMATS)}. Got {fmt!r} instead."
    )
