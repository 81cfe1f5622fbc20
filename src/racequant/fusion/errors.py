"""The errors of the fusion package; all descend from RacequantError."""

from __future__ import annotations

from racequant.errors import ConfigurationError, RacequantError


class FusionParameterError(ConfigurationError, ValueError):
    """A parameter of a fusion estimator has an invalid value (also a ValueError, as in scikit-learn)."""


class QualitativeValidationError(RacequantError, ValueError):
    """Qualitative records broke the schema; each problem names the horse and the field. Nothing was stored."""

    max_listed = 20

    def __init__(self, problems: list[str], source: str = "qualitative input") -> None:
        self.problems = list(problems)
        listed = "\n".join(f"  - {p}" for p in self.problems[: self.max_listed])
        more = len(self.problems) - self.max_listed
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"{source} rejected with {len(self.problems)} problem(s); nothing was stored.\n{listed}{tail}")


class FusionMismatchError(RacequantError, ValueError):
    """The quantitative and qualitative records of a race do not describe the same runners."""


class ProviderError(RacequantError):
    """A qualitative provider could not produce valid output (network, protocol or schema failure)."""
