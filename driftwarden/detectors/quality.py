"""Data-quality measures read off summaries: missing, NaN / inf, out-of-range, unseen, schema.

Every ratio is over the rows the summary saw for that feature (``n_rows``) and is 0.0 on an
empty summary, never an exception.

>>> import numpy as np
>>> from driftwarden.detectors.summary import NumericSpec, NumericSummary
>>> s = NumericSummary(NumericSpec.fit("x", np.arange(10.0)))
>>> s.update([1.0, None, float("nan"), 99.0])
>>> q = feature_quality(s); (q.missing_ratio, q.nan_ratio, q.out_of_range_ratio)
(0.25, 0.25, 0.25)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from driftwarden.detectors.summary import (
    CategoricalSummary,
    FeatureSummary,
    NumericSummary,
    Summary,
)


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole > 0 else 0.0


@dataclass(frozen=True)
class FeatureQuality:
    """Quality ratios of one feature over the rows of a summary."""

    n_rows: int
    missing_ratio: float
    nan_ratio: float          # NaN or ±inf where a number was expected
    invalid_ratio: float      # a value of the wrong type (a string in a numeric column)
    out_of_range_ratio: float  # below the baseline's min or above its max (numeric)
    unseen_ratio: float        # a category the baseline never saw (categorical)


def feature_quality(s: FeatureSummary) -> FeatureQuality:
    rows = s.n_rows
    if isinstance(s, NumericSummary):
        return FeatureQuality(rows, _ratio(s.n_missing, rows), _ratio(s.n_nan + s.n_inf, rows),
                              _ratio(s.n_invalid, rows), _ratio(s.out_of_range, rows), 0.0)
    assert isinstance(s, CategoricalSummary)
    return FeatureQuality(rows, _ratio(s.n_missing, rows), 0.0, _ratio(s.n_invalid, rows), 0.0,
                          _ratio(s.n_unseen, rows))


@dataclass(frozen=True)
class SchemaChange:
    """Fields that appeared, disappeared or changed type, compared to the baseline."""

    new_fields: tuple[str, ...]
    missing_fields: tuple[str, ...]
    retyped_fields: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.new_fields or self.missing_fields or self.retyped_fields)


def schema_change(summary: Summary, min_ratio: float = 0.5) -> SchemaChange:
    """Compare the fields seen in ``summary`` with the baseline's.

    A field is *new* when rows carried a field the baseline does not know, *missing* when at
    least ``min_ratio`` of the rows lacked a baseline feature, *retyped* when at least
    ``min_ratio`` of its present values had the wrong type (e.g. strings in a numeric column).
    """
    missing, retyped = [], []
    for name, fs in summary.features.items():
        rows = fs.n_rows
        if rows == 0:
            continue
        if fs.n_missing / rows >= min_ratio:
            missing.append(name)
        present = rows - fs.n_missing
        if present > 0 and fs.n_invalid / present >= min_ratio:
            retyped.append(name)
    return SchemaChange(tuple(sorted(summary.new_fields)), tuple(missing), tuple(retyped))


def quality_report(summary: Summary) -> Mapping[str, FeatureQuality]:
    """:func:`feature_quality` for every feature of a summary."""
    return {name: feature_quality(fs) for name, fs in summary.features.items()}
