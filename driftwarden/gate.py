"""``driftwarden gate``: may a candidate model version ship? A pre-deployment check for CI/CD.

The input is one table (CSV or Parquet) with a row per evaluation example holding both
versions' predictions and, where known, the label. The comparison is the one a live rollout
makes (:mod:`driftwarden.detectors.sequential`): paired per-example differences of loss,
candidate − baseline, with an anytime-valid confidence sequence — so rerunning the gate as
the evaluation set grows does not inflate its false verdicts.

* **with labels** the decisive signal is performance: a classifier's error (scores in [0, 1]
  thresholded at 0.5 against 0/1 labels, otherwise exact match), a regressor's absolute
  error. ``margin``: how much worse the candidate may be, in loss units — by default 1 point of
  accuracy (0.01) for a classifier, 1 % of the baseline's mean absolute error for a regressor;
* **without labels** the decisive signal is disagreement: the share of examples where the two
  versions decide differently (a classifier's decisions; a regressor's predictions more than
  ``tolerance`` apart, by default a tenth of the baseline predictions' standard deviation),
  against ``max_disagreement`` (5 %).

The prediction distributions' difference (two-sample KS) and the disagreement are reported
as evidence either way. Verdicts: ``promote`` (the bound says no worse than allowed),
``rollback`` (worse than allowed), ``inconclusive`` (not enough examples to tell).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> y = (rng.random(5000) < 0.3).astype(float)
>>> base = np.where(rng.random(5000) < 0.9, y, 1 - y)          # right 90 %
>>> cand = np.where(rng.random(5000) < 0.95, base, 1 - base)   # flips 5 % of base's
>>> r = gate({"base": base, "cand": cand, "y": y}, baseline="base", candidate="cand",
...          label="y")
>>> r["verdict"], r["signal"], round(r["performance"]["estimate"], 2)
('rollback', 'performance', 0.04)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from driftwarden.detectors.rollout import as_numbers as _numeric
from driftwarden.detectors.rollout import decisions as _decisions
from driftwarden.detectors.sequential import paired
from driftwarden.errors import InputError

DEFAULT_ALPHA = 0.05
DEFAULT_CLASSIFICATION_MARGIN = 0.01
DEFAULT_MAX_DISAGREEMENT = 0.05


def infer_task(*columns: np.ndarray | None) -> str:
    """``classification`` when every value is a score in [0, 1] or a class label, else
    ``regression``."""
    for col in columns:
        if col is None:
            return "classification"  # non-numeric: class names
        finite = col[np.isfinite(col)]
        if len(finite) and (finite.min() < 0.0 or finite.max() > 1.0) and not np.all(
                finite == np.round(finite)):
            return "regression"
    return "classification"


def gate(columns: Mapping[str, Any], *, baseline: str, candidate: str, label: str | None = None,
         task: str | None = None, margin: float | None = None, alpha: float = DEFAULT_ALPHA,
         max_disagreement: float = DEFAULT_MAX_DISAGREEMENT,
         tolerance: float | None = None,
         missing: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """The verdict on ``candidate`` against ``baseline`` (column names) and its evidence; see
    the module docstring. Raises :class:`~driftwarden.errors.InputError` for what cannot be
    judged (a missing column, predictions of different kinds, no labelled row)."""
    for name in (baseline, candidate) + ((label,) if label else ()):
        if name not in columns:
            raise InputError(f"no column {name!r} (columns: {', '.join(sorted(columns))})")
    if not 0.0 < alpha < 1.0:
        raise InputError(f"--alpha must be in (0, 1), got {alpha}")
    n_rows = len(columns[baseline])
    if n_rows == 0:
        raise InputError("no rows")
    gone = np.zeros(n_rows, dtype=bool)
    for name in (baseline, candidate):
        if missing is not None and name in missing:
            gone |= np.asarray(missing[name], dtype=bool)
    raw_b, raw_c = np.asarray(columns[baseline]), np.asarray(columns[candidate])
    num_b, num_c = _numeric(raw_b), _numeric(raw_c)
    if (num_b is None) != (num_c is None):
        raise InputError(f"{baseline!r} and {candidate!r} hold predictions of different kinds "
                         "(numbers in one, other values in the other)")
    if num_b is not None and num_c is not None:
        gone |= ~np.isfinite(num_b) | ~np.isfinite(num_c)
    task = task or infer_task(num_b, num_c)
    if task not in ("classification", "regression"):
        raise InputError(f"--task must be classification or regression, got {task!r}")
    if task == "regression" and num_b is None:
        raise InputError("a regression gate needs numeric predictions")
    keep = ~gone
    out: dict[str, Any] = {"task": task, "rows": int(n_rows), "compared": int(keep.sum()),
                           "alpha": alpha}
    if not keep.any():
        raise InputError(f"no row has both {baseline!r} and {candidate!r}")

    # disagreement (evidence always; the decision without labels)
    if task == "classification":
        db, dc = _decisions(raw_b, num_b)[keep], _decisions(raw_c, num_c)[keep]
        differ = (db != dc).astype(np.float64)
    else:
        assert num_b is not None and num_c is not None
        tol = tolerance if tolerance is not None else 0.1 * float(np.std(num_b[keep]))
        differ = (np.abs(num_c[keep] - num_b[keep]) > tol).astype(np.float64)
        out["tolerance"] = tol
    agreement = paired(differ, margin=max_disagreement, alpha=alpha, final=True)
    out["disagreement"] = agreement.to_dict()
    if num_b is not None and num_c is not None:
        from scipy.stats import ks_2samp

        # the exact distribution beyond a thousand values is slow and may fail: asymptotic
        ks = ks_2samp(num_b[keep], num_c[keep],
                      method="auto" if keep.sum() <= 1000 else "asymp")
        out["prediction_shift"] = {"ks": float(ks.statistic), "p_value": float(ks.pvalue)}

    if label is None:
        out["signal"] = "disagreement"
        out["verdict"] = agreement.verdict
        return out
    losses = _losses(columns[label], missing.get(label) if missing else None, raw_b, raw_c,
                     num_b, num_c, keep, task)
    if losses is None:
        raise InputError(f"no row with both predictions has a label in {label!r}")
    loss_b, loss_c = losses
    if margin is None:
        margin = (DEFAULT_CLASSIFICATION_MARGIN if task == "classification"
                  else 0.01 * float(loss_b.mean()))
    perf = paired(loss_c - loss_b, margin=margin, alpha=alpha, final=True)
    out["signal"] = "performance"
    out["labelled"] = int(len(loss_b))
    out["performance"] = {**perf.to_dict(), "baseline_loss": float(loss_b.mean()),
                          "candidate_loss": float(loss_c.mean()),
                          "loss": "error rate" if task == "classification"
                          else "mean absolute error"}
    out["verdict"] = perf.verdict
    return out


def _losses(labels: Any, label_missing: np.ndarray | None, raw_b: np.ndarray,
            raw_c: np.ndarray, num_b: np.ndarray | None, num_c: np.ndarray | None,
            keep: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Per labelled example: the baseline's and the candidate's loss (None: no label)."""
    y_raw = np.asarray(labels)
    have = keep.copy()
    if label_missing is not None:
        have &= ~np.asarray(label_missing, dtype=bool)
    y_num = _numeric(y_raw)
    if y_num is not None:
        have &= np.isfinite(y_num)
    elif y_raw.dtype.kind in "OUS":
        have &= np.asarray([v is not None and str(v) != "" for v in y_raw.tolist()])
    if not have.any():
        return None
    if task == "regression":
        if y_num is None:
            raise InputError("a regression gate needs numeric labels")
        assert num_b is not None and num_c is not None
        return np.abs(num_b[have] - y_num[have]), np.abs(num_c[have] - y_num[have])
    if y_num is not None and num_b is not None and num_c is not None:
        y, b, c = y_num[have], num_b[have], num_c[have]
        if np.all(np.isin(y, (0.0, 1.0))) and np.all((b >= 0) & (b <= 1) & (c >= 0) & (c <= 1)):
            return ((b >= 0.5) != (y == 1.0)).astype(np.float64), (
                (c >= 0.5) != (y == 1.0)).astype(np.float64)
        return (b != y).astype(np.float64), (c != y).astype(np.float64)  # class ids
    y = y_raw[have].astype(str)
    return ((raw_b[have].astype(str) != y).astype(np.float64),
            (raw_c[have].astype(str) != y).astype(np.float64))


def exit_code(verdict: str, allow_inconclusive: bool = False) -> int:
    """0: may ship; 1: must not (``rollback``; ``inconclusive`` unless allowed).

    >>> exit_code("promote"), exit_code("rollback"), exit_code("inconclusive", True)
    (0, 1, 0)
    """
    if verdict == "promote" or (verdict == "inconclusive" and allow_inconclusive):
        return 0
    return 1


__all__ = ["exit_code", "gate", "infer_task"]
