"""Baselines, type inference, data quality and schema change."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from driftwarden.detectors.baseline import Baseline, infer_type
from driftwarden.detectors.compare import compare, pooled_counts
from driftwarden.detectors.quality import feature_quality, schema_change
from driftwarden.detectors.summary import PREDICTION
from driftwarden.errors import ValidationError


def test_types_are_inferred_or_given():
    rng = np.random.default_rng(0)
    cols = {"amount": rng.normal(size=500), "flag": rng.integers(0, 2, 500),
            "country": rng.choice(["DE", "FR"], 500), "ints": rng.integers(0, 1000, 500)}
    b = Baseline.fit(cols)
    assert b.types == {"amount": "numeric", "flag": "categorical", "country": "categorical",
                       "ints": "numeric"}
    b = Baseline.fit(cols, types={"ints": "categorical", "flag": "numeric"})
    assert b.types["ints"] == "categorical" and b.types["flag"] == "numeric"
    assert infer_type([1, "x", 2.5]) == "categorical"
    with pytest.raises(ValidationError, match="not a column"):
        Baseline.fit(cols, types={"nope": "numeric"})
    with pytest.raises(ValidationError, match="must be one of"):
        Baseline.fit(cols, types={"amount": "text"})


def test_records_and_columns_give_the_same_baseline():
    rng = np.random.default_rng(1)
    x = rng.normal(size=300).tolist()
    c = rng.choice(["a", "b", "c"], 300).tolist()
    from_cols = Baseline.fit({"x": x, "c": c}, seed=3)
    from_rows = Baseline.fit([{"x": a, "c": b} for a, b in zip(x, c)], seed=3)
    assert from_cols.to_state() == from_rows.to_state()


def test_baseline_state_round_trips_and_keeps_a_bounded_seeded_sample():
    rng = np.random.default_rng(2)
    data = {"x": rng.normal(size=20_000), "c": rng.choice(["a", "b"], 20_000),
            "score": rng.random(20_000)}
    b = Baseline.fit(data, sample_rows=500, prediction="score", seed=9)
    assert b.n_sample == 500 and b.prediction is not None and PREDICTION in b.sample
    state = orjson.loads(orjson.dumps(b.to_state()))
    back = Baseline.from_state(state)
    assert back.to_state() == b.to_state()
    assert Baseline.fit(data, sample_rows=500, prediction="score", seed=9).sample == b.sample
    w = back.new_summary()
    w.update_columns({"x": data["x"][:1000], "c": data["c"][:1000],
                      PREDICTION: data["score"][:1000]})
    assert PREDICTION in compare(back, w)


def test_one_distinct_value_and_all_missing_columns_still_work():
    b = Baseline.fit({"const": [4.0] * 100, "empty": [None] * 100, "x": list(range(100))},
                     types={"const": "numeric"})
    w = b.new_summary()
    w.update_columns({"const": np.array([4.0, 4.0, 5.0]), "empty": [None, "a", None],
                      "x": np.array([1.0, 2.0, 3.0])})
    comps = compare(b, w)
    assert comps["const"].tests["psi"].statistic > 0  # 5.0 is out of the baseline's range
    assert np.isfinite(comps["const"].tests["ks"].pvalue)
    assert comps["empty"].quality.unseen_ratio == pytest.approx(1 / 3)


def test_quality_ratios_and_schema_change():
    b = Baseline.fit({"x": np.arange(100.0), "c": ["a", "b"] * 50, "gone": np.arange(100.0)})
    w = b.new_summary()
    w.update_records([{"x": 1.0, "c": "a", "new": 1}, {"x": "oops", "c": "zz"},
                      {"x": 500.0, "c": None}, {"x": float("nan"), "c": "b"}])
    q = feature_quality(w.features["x"])
    assert (q.missing_ratio, q.nan_ratio, q.invalid_ratio, q.out_of_range_ratio) == (
        0.0, 0.25, 0.25, 0.25)
    qc = feature_quality(w.features["c"])
    assert (qc.missing_ratio, qc.unseen_ratio) == (0.25, 0.25)
    sc = schema_change(w)
    assert sc.new_fields == ("new",) and sc.missing_fields == ("gone",) and sc.changed
    w2 = b.new_summary()
    w2.update_records([{"x": "a", "c": "a", "gone": 1.0}, {"x": "b", "c": "a", "gone": 2.0}])
    assert schema_change(w2).retyped_fields == ("x",)


def test_chi2_pools_sparse_cells():
    r, c = pooled_counts(np.array([1000, 900, 3, 2, 0]), np.array([100, 90, 1, 0, 4]))
    assert r.tolist() == [1000, 900, 5] and c.tolist() == [100, 90, 5]
