"""Baselines: the reference a model's live traffic is compared with.

A baseline is fitted from a table (columns, or a list of records): column types are inferred
(numeric; categorical when non-numeric or with few distinct values) or given, each feature's
spec is fixed (bin edges at the baseline's quantiles, known categories), the reference
:class:`~driftwarden.detectors.summary.Summary` is built with a large reservoir (the KS
reference sample), and a bounded, seeded sample of whole rows is kept for calibration
(:func:`driftwarden.detectors.decide.calibrate`). State is JSON-safe, so a baseline can be
stored in SQL or Kafka.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> b = Baseline.fit({"amount": rng.gamma(2, 10, 5000), "country": rng.choice(["DE", "FR"], 5000)})
>>> b.types, b.n_rows
({'amount': 'numeric', 'country': 'categorical'}, 5000)
>>> Baseline.from_state(b.to_state()).specs == b.specs
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from driftwarden.detectors.summary import (
    PREDICTION,
    CategoricalSpec,
    NumericSpec,
    Spec,
    Summary,
    category_key,
    records_to_columns,
    spec_from_state,
    to_float_array,
)
from driftwarden.errors import ValidationError

TYPES = ("numeric", "categorical")


def infer_type(values: Any, max_distinct: int = 10) -> str:
    """``"numeric"`` when every present value is a number (bools excluded) and there are
    more than ``max_distinct`` distinct values, else ``"categorical"``.

    >>> infer_type([1.5, 2.5, 3.5], max_distinct=2), infer_type([0, 1, 1, 0]), infer_type(["a"])
    ('numeric', 'categorical', 'categorical')
    """
    arr = values if isinstance(values, np.ndarray) else None
    if arr is not None and arr.dtype.kind in "fiu":
        x = arr.astype(np.float64, copy=False)
    elif arr is not None and arr.dtype.kind in "bUS":
        return "categorical"
    else:
        x, _, n_invalid = to_float_array(values)
        if n_invalid:
            return "categorical"
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return "categorical"
    return "numeric" if len(np.unique(x)) > max_distinct else "categorical"


class Baseline:
    """Feature specs, the reference summary and a row sample; see the module docstring."""

    def __init__(self, specs: dict[str, Spec], reference: Summary, sample: dict[str, list[Any]],
                 n_rows: int, prediction: Spec | None = None, *, bins: int = 10,
                 seed: int = 0) -> None:
        self.specs = specs
        self.reference = reference
        self.sample = sample
        self.n_rows = n_rows
        self.prediction = prediction
        self.bins = bins
        self.seed = seed
        self._sorted: dict[str, np.ndarray] = {}
        self._matrices: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}

    @property
    def types(self) -> dict[str, str]:
        return {name: spec.kind for name, spec in self.specs.items()}

    @property
    def n_sample(self) -> int:
        return len(next(iter(self.sample.values()))) if self.sample else 0

    def reference_proportions(self, name: str) -> np.ndarray:
        """The reference histogram of a feature as proportions (cached)."""
        key = "p:" + name
        out = self._sorted.get(key)
        if out is None:
            fs = self.reference.prediction if name == PREDICTION else self.reference.features[name]
            out = fs.counts / max(int(fs.counts.sum()), 1)  # type: ignore[union-attr]
            self._sorted[key] = out
        return out

    def reference_matrix(self, names: tuple[str, ...]) -> np.ndarray:
        """Reference proportions of several features as rows of one zero-padded matrix."""
        key = ("matrix", names)
        out = self._matrices.get(key)
        if out is None:
            rows = [self.reference_proportions(n) for n in names]
            out = np.zeros((len(rows), max(len(r) for r in rows)))
            for i, r in enumerate(rows):
                out[i, :len(r)] = r
            self._matrices[key] = out
        return out

    def sorted_reference(self, name: str) -> np.ndarray:
        """The reference reservoir of a numeric feature, sorted once and cached (for KS)."""
        out = self._sorted.get(name)
        if out is None:
            fs = self.reference.prediction if name == PREDICTION else self.reference.features[name]
            out = np.sort(fs.sample())  # type: ignore[union-attr]
            self._sorted[name] = out
        return out

    def new_summary(self, *, reservoir_size: int = 1024, seed: int = 0, top_k: int = 20,
                    task: str = "classification") -> Summary:
        """An empty summary over this baseline's specs (a window slice, a partition's batch)."""
        return Summary.empty(self.specs, self.prediction, reservoir_size=reservoir_size,
                             seed=seed, top_k=top_k, task=task)

    @classmethod
    def fit(cls, data: Mapping[str, Any] | Sequence[Mapping[str, Any]], *,
            types: Mapping[str, str] | None = None, bins: int = 10, max_categories: int = 200,
            categorical_max_distinct: int = 10, sample_rows: int = 10_000,
            reference_sample: int = 4096,
            prediction: str | None = None, seed: int = 0,
            missing: Mapping[str, np.ndarray] | None = None) -> Baseline:
        """Fit a baseline from columns (``{name: values}``) or records (``[{name: value}]``).

        ``sample_rows`` whole rows are kept for calibration; each numeric feature's reference
        reservoir (the KS / Wasserstein reference of streaming windows) keeps
        ``reference_sample`` values. ``types`` forces a column's type (``"numeric"`` /
        ``"categorical"``); a column named in ``types`` but absent from the data is an error.
        ``prediction`` names the column holding the model's output, summarised apart from
        the features.
        """
        columns = dict(records_to_columns(data) if isinstance(data, Sequence) else data)
        if not columns:
            raise ValidationError("a baseline needs at least one column")
        lengths = {len(v) for v in columns.values()}
        if len(lengths) != 1:
            raise ValidationError("all columns of a baseline must have the same length")
        n_rows = lengths.pop()
        if n_rows == 0:
            raise ValidationError("a baseline needs at least one row")
        types = dict(types or {})
        for name, t in types.items():
            if t not in TYPES:
                raise ValidationError(f"type of {name!r} must be one of {TYPES}, got {t!r}")
            if name not in columns:
                raise ValidationError(f"type given for {name!r}, which is not a column")
        if sample_rows < 1 or reference_sample < 1:
            raise ValidationError("sample_rows and reference_sample must be >= 1")

        def spec_for(name: str, values: Any) -> Spec:
            values = _present(values, None if missing is None else missing.get(name))
            kind = types.get(name) or infer_type(values, categorical_max_distinct)
            if kind == "numeric":
                return NumericSpec.fit(name, values, bins)
            return CategoricalSpec.fit(name, values, max_categories)

        pred_spec = spec_for(prediction, columns[prediction]) if prediction in columns else None
        specs = {name: spec_for(name, col) for name, col in columns.items() if name != prediction}
        reference = Summary.empty(specs, pred_spec, reservoir_size=reference_sample, seed=seed)
        cols = dict(columns)
        if prediction in cols:
            cols[PREDICTION] = cols.pop(prediction)  # type: ignore[arg-type]
        reference.update_columns(cols, n_rows=n_rows, missing=_renamed(missing, prediction))
        rng = np.random.default_rng(seed)
        take = np.sort(rng.choice(n_rows, size=min(sample_rows, n_rows), replace=False))
        masks = _renamed(missing, prediction) or {}
        sample = {name: _json_column(cols[name], take, masks.get(name)) for name in cols}
        return cls(specs, reference, sample, n_rows, pred_spec, bins=bins, seed=seed)

    def sample_columns(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The row sample as typed arrays and null masks (numeric: float64; categorical:
        strings), ready for fast vectorised summary updates."""
        cols: dict[str, np.ndarray] = {}
        masks: dict[str, np.ndarray] = {}
        for name, values in self.sample.items():
            spec = self.prediction if name == PREDICTION else self.specs[name]
            masks[name] = np.array([v is None for v in values], dtype=bool)
            if isinstance(spec, NumericSpec):
                cols[name] = np.array([np.nan if v is None else v for v in values], dtype=float)
            else:
                cols[name] = np.array(["" if v is None else str(v) for v in values], dtype=str)
        return cols, masks

    def to_state(self) -> dict[str, Any]:
        return {
            "version": 1,
            "specs": [s.to_state() for s in self.specs.values()],
            "prediction": None if self.prediction is None else self.prediction.to_state(),
            "reference": self.reference.to_state(),
            "sample": self.sample,
            "n_rows": self.n_rows,
            "bins": self.bins,
            "seed": self.seed,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Baseline:
        if state.get("version") != 1:
            raise ValidationError(f"unsupported baseline state version {state.get('version')!r}")
        specs = {s["name"]: spec_from_state(s) for s in state["specs"]}
        pred = None if state["prediction"] is None else spec_from_state(state["prediction"])
        reference = Summary.from_state(specs, state["reference"], pred)
        return cls(specs, reference, {k: list(v) for k, v in state["sample"].items()},
                   state["n_rows"], pred, bins=state["bins"], seed=state["seed"])


def _present(values: Any, missing: np.ndarray | None) -> Any:
    if missing is None or not missing.any():
        return values
    return np.asarray(values, dtype=object)[~missing] if not isinstance(values, np.ndarray) \
        else values[~missing]


def _renamed(missing: Mapping[str, np.ndarray] | None, prediction: str | None
             ) -> dict[str, np.ndarray] | None:
    if missing is None:
        return None
    out = dict(missing)
    if prediction in out:
        out[PREDICTION] = out.pop(prediction)  # type: ignore[arg-type]
    return out


def _json_column(values: Any, take: np.ndarray, missing: np.ndarray | None = None) -> list[Any]:
    """Sampled values, JSON-safe: floats stay floats (NaN/inf become None), others canonical."""
    arr = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object)
    picked = arr[take].tolist()
    gone = missing[take].tolist() if missing is not None else [False] * len(picked)
    out: list[Any] = []
    for v, absent in zip(picked, gone):
        if absent:
            out.append(None)
        elif isinstance(v, float):
            out.append(v if np.isfinite(v) else None)
        elif isinstance(v, (int, str)) and not isinstance(v, bool):
            out.append(v)
        else:
            try:
                out.append(category_key(v))
            except TypeError:
                out.append(None)
    return out
