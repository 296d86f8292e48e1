"""Mergeable summaries: binning against an independent computation, merge algebra, bad input."""

from __future__ import annotations

import math
import warnings

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftwarden.detectors.summary import (
    CategoricalSpec,
    CategoricalSummary,
    NumericSpec,
    NumericSummary,
    OutcomeSummary,
    Reservoir,
    Summary,
    TopK,
)

SPEC = NumericSpec.fit("x", np.random.default_rng(0).normal(size=1000))
CAT = CategoricalSpec.fit("c", ["a", "b", "c", "a", "a"])
values = st.lists(st.one_of(st.floats(-5, 5), st.just(float("nan")), st.just(float("inf")),
                            st.none()), max_size=60)
cats = st.lists(st.one_of(st.sampled_from(["a", "b", "c", "zz", "yy"]), st.none(),
                          st.integers(0, 3)), max_size=60)


def numeric(xs, seed=0):
    s = NumericSummary(SPEC, reservoir_size=16, seed=seed)
    s.update(np.asarray(xs, dtype=object))
    return s


def categorical(xs):
    s = CategoricalSummary(CAT, top_k=3)
    s.update(xs)
    return s


def same_numeric(a, b):
    assert a.counts.tolist() == b.counts.tolist()
    assert (a.n_missing, a.n_nan, a.n_inf, a.n_invalid) == (b.n_missing, b.n_nan, b.n_inf,
                                                            b.n_invalid)
    assert a.s1 == pytest.approx(b.s1, abs=1e-9) and a.s2 == pytest.approx(b.s2, abs=1e-9)


def test_histogram_equals_independent_binning():
    rng = np.random.default_rng(1)
    x = rng.normal(size=5000) * 1.3
    s = NumericSummary(SPEC)
    s.update(x)
    edges = np.asarray(SPEC.edges)
    inner, _ = np.histogram(x[(x >= edges[0]) & (x <= edges[-1])], bins=edges)  # last bin closed
    expected = [int((x < edges[0]).sum()), *inner.tolist(), int((x > edges[-1]).sum())]
    assert s.counts.tolist() == expected
    assert s.mean == pytest.approx(x.mean(), rel=1e-9)
    assert s.std == pytest.approx(x.std(ddof=1), rel=1e-9)
    assert (s.min, s.max) == (x.min(), x.max())


def test_edges_are_the_baseline_deciles():
    x = np.random.default_rng(2).gamma(2.0, size=10_000)
    spec = NumericSpec.fit("g", x, bins=10)
    assert np.allclose(spec.edges, np.quantile(x, np.linspace(0, 1, 11)))
    s = NumericSummary(spec)
    s.update(x)
    inner = s.counts[1:-1]
    assert s.counts[0] == s.counts[-1] == 0
    assert inner.min() >= 999 and inner.max() <= 1001  # deciles hold a tenth each


@given(values, values, values)
def test_numeric_merge_is_associative_and_commutative(a, b, c):
    sa, sb, sc = numeric(a, 1), numeric(b, 2), numeric(c, 3)
    same_numeric(sa.merge(sb).merge(sc), sa.merge(sb.merge(sc)))
    same_numeric(sa.merge(sb), sb.merge(sa))
    same_numeric(sa.merge(sb), numeric(a + b))  # merging two = one over both


@given(values, values)
def test_numeric_subtract_undoes_merge(a, b):
    sa, sb = numeric(a), numeric(b)
    same_numeric(sa.merge(sb).subtract(sb), sa)


@given(cats, cats, cats)
def test_categorical_merge_and_subtract(a, b, c):
    sa, sb, sc = categorical(a), categorical(b), categorical(c)
    m = sa.merge(sb).merge(sc)
    assert m.counts.tolist() == sa.merge(sb.merge(sc)).counts.tolist()
    assert m.counts.tolist() == sc.merge(sb).merge(sa).counts.tolist()
    assert sa.merge(sb).counts.tolist() == categorical(a + b).counts.tolist()
    assert sa.merge(sb).subtract(sb).counts.tolist() == sa.counts.tolist()
    assert m.n_missing == sum(v is None for v in a + b + c)


def test_unseen_categories_and_topk():
    s = CategoricalSummary(CAT, top_k=2)
    s.update(["a", "new1", "new1", "new1", "new2", "b", None, {"bad": 1}])
    assert s.n_unseen == 4 and s.n_missing == 1 and s.n_invalid == 1
    assert s.unseen_top.items()[0][0] == "new1"


def test_topk_keeps_heavy_hitters_after_merge():
    rng = np.random.default_rng(3)
    parts = []
    for _ in range(5):
        t = TopK(5)
        keys = rng.choice([f"k{i}" for i in range(40)], 500).tolist() + ["heavy"] * 200
        t.update({k: keys.count(k) for k in set(keys)})
        parts.append(t)
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    assert merged.items()[0][0] == "heavy"
    assert len(merged.counts) <= 5


def test_bad_values_are_counted_never_raised():
    s = NumericSummary(SPEC)
    s.update([1.0, None, float("nan"), float("inf"), -float("inf"), "abc", {"x": 1}, True, 2])
    assert (s.n, s.n_missing, s.n_nan, s.n_inf, s.n_invalid) == (2, 1, 1, 2, 3)
    assert s.n_rows == 9


def test_constant_baseline_still_works():
    spec = NumericSpec.fit("const", [7.0] * 100)
    s = NumericSummary(spec)
    s.update(np.array([7.0, 7.0, 8.0, 6.0]))
    assert s.counts.tolist() == [1, 2, 1]  # under, the constant's bin, over
    assert s.std == pytest.approx(np.std([7, 7, 8, 6], ddof=1))


@pytest.mark.parametrize("scale", [1e150, 1e-300, 1e300])
def test_huge_and_tiny_values_do_not_overflow(scale):
    rng = np.random.default_rng(4)
    x = (rng.normal(size=1000) + 5) * scale
    spec = NumericSpec.fit("x", x)
    s = NumericSummary(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.update(x)
        m, sd = s.mean, s.std
    assert math.isfinite(m) and math.isfinite(sd)
    assert m == pytest.approx(x.mean(), rel=1e-9)
    assert sd == pytest.approx(np.std(x / scale, ddof=1) * scale, rel=1e-6)


def test_reservoir_is_uniform_and_seeded():
    hits = np.zeros(100)
    for seed in range(400):
        r = Reservoir(10, seed)
        for chunk in np.array_split(np.arange(100.0), 7):
            r.update(chunk)
        hits[r.values.astype(int)] += 1
    # each of 100 values is kept with probability 10/100: 40 expected per value
    from scipy.stats import chisquare

    assert chisquare(hits).pvalue > 1e-3
    a, b = Reservoir(10, 5), Reservoir(10, 5)
    a.update(np.arange(1000.0))
    b.update(np.arange(1000.0))
    assert a.values.tolist() == b.values.tolist()


def test_reservoir_merge_is_a_sample_of_the_union():
    a, b = Reservoir(50, 1), Reservoir(50, 2)
    a.update(np.arange(0.0, 1000.0))
    b.update(np.arange(1000.0, 1100.0))
    m = a.merge(b)
    assert len(m.values) == 50 and m.n_seen == 1100
    assert set(m.values.tolist()) <= set(a.values.tolist()) | set(b.values.tolist())
    counts_b = [int((a.merge(bb).values >= 1000).sum()) for bb in [b]]
    assert counts_b[0] < 20  # b is 1/11 of the union


def test_summary_state_round_trips_through_json():
    specs = {"x": SPEC, "c": CAT}
    s = Summary.empty(specs, reservoir_size=8)
    s.update_records([{"x": 0.5, "c": "a"}, {"x": None, "c": "q", "extra": 1}, {"c": None}])
    state = orjson.loads(orjson.dumps(s.to_state()))
    back = Summary.from_state(specs, state)
    assert back.to_state() == s.to_state()
    assert back.n_rows == 3 and back.new_fields == {"extra": 1}
    assert back.features["x"].n_missing == 2


def test_outcome_summary_matches_sklearn_style_definitions():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 3000)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    o = OutcomeSummary()
    o.update(p[:1500], y[:1500])
    o2 = OutcomeSummary()
    o2.update(p[1500:], y[1500:])
    merged = o.merge(o2)
    from scipy.stats import mannwhitneyu

    exact_auc = mannwhitneyu(p[y == 1], p[y == 0]).statistic / ((y == 1).sum() * (y == 0).sum())
    assert merged.auc() == pytest.approx(exact_auc, abs=0.01)  # binned to 100 score bins
    assert merged.accuracy() == pytest.approx(((p >= 0.5) == y).mean())
    reg = OutcomeSummary("regression")
    reg.update(np.array([1.0, 2.0, 4.0]), np.array([1.0, 3.0, 2.0]))
    assert (reg.mae(), reg.rmse()) == (pytest.approx(1.0), pytest.approx(math.sqrt(5 / 3)))
