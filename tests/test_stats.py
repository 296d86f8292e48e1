"""Every statistic against an independent computation (scipy on raw data, or the formula by
hand) and against its properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats as sst
from scipy.spatial.distance import jensenshannon as scipy_js

from driftwarden.detectors import stats

counts = st.lists(st.integers(0, 10_000), min_size=2, max_size=30)


def pair_of_counts():
    return st.integers(2, 30).flatmap(
        lambda k: st.tuples(st.lists(st.integers(0, 5000), min_size=k, max_size=k),
                            st.lists(st.integers(0, 5000), min_size=k, max_size=k)))


def nonempty(c):
    return sum(c) > 0


# -- PSI -------------------------------------------------------------------------------------

def test_psi_by_hand():
    # r = (.1, .2, .7), c = (.2, .2, .6): PSI = .1 ln 2 + 0 + (-.1) ln(6/7)
    expected = 0.1 * math.log(2) - 0.1 * math.log(6 / 7)
    assert stats.psi([10, 20, 70], [20, 20, 60]) == pytest.approx(expected, rel=1e-12)


def test_psi_floors_empty_cells_at_1e_4():
    # an empty reference cell counts as 1e-4: (0.5 - 1e-4) ln(0.5 / 1e-4) + (0.5 - 1) ln(0.5)
    expected = (0.5 - 1e-4) * math.log(0.5 / 1e-4) + (0.5 - 1.0) * math.log(0.5 / 1.0)
    assert stats.psi([0, 10], [5, 5]) == pytest.approx(expected, rel=1e-12)


@given(pair_of_counts())
def test_psi_properties(pair):
    r, c = pair
    if not (nonempty(r) and nonempty(c)):
        assert stats.psi(r, c) == 0.0
        return
    value = stats.psi(r, c)
    assert value >= -1e-12
    assert value == pytest.approx(stats.psi(c, r), rel=1e-9, abs=1e-12)  # PSI is symmetric
    assert stats.psi(r, r) == pytest.approx(0.0, abs=1e-12)


# -- Jensen-Shannon, Hellinger ----------------------------------------------------------------

@given(pair_of_counts())
def test_jensen_shannon_matches_scipy_base_2(pair):
    r, c = pair
    if not (nonempty(r) and nonempty(c)):
        return
    expected = float(scipy_js(np.asarray(r, float), np.asarray(c, float), base=2))
    got = stats.jensen_shannon(r, c)
    assert got == pytest.approx(expected, abs=1e-9)
    assert 0.0 <= got <= 1.0
    assert got == pytest.approx(stats.jensen_shannon(c, r), abs=1e-12)
    assert stats.jensen_shannon(r, r) == pytest.approx(0.0, abs=1e-7)


@given(pair_of_counts())
def test_hellinger_matches_the_other_textbook_form(pair):
    r, c = pair
    if not (nonempty(r) and nonempty(c)):
        return
    p = np.asarray(r, float) / sum(r)
    q = np.asarray(c, float) / sum(c)
    expected = math.sqrt(0.5 * float(np.sum((np.sqrt(p) - np.sqrt(q)) ** 2)))
    got = stats.hellinger(r, c)
    assert got == pytest.approx(expected, abs=1e-7)
    assert 0.0 <= got <= 1.0
    assert stats.hellinger(r, r) == pytest.approx(0.0, abs=1e-7)


# -- chi-square --------------------------------------------------------------------------------

@given(pair_of_counts())
def test_chi2_matches_scipy_contingency(pair):
    r, c = pair
    table = np.array([r, c], dtype=float)
    table = table[:, table.sum(axis=0) > 0]
    got = stats.chi2(r, c)
    assert 0.0 <= got.pvalue <= 1.0
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        assert (got.statistic, got.pvalue) == (0.0, 1.0)
        return
    res = sst.chi2_contingency(table, correction=False)
    assert got.statistic == pytest.approx(res.statistic, rel=1e-9, abs=1e-9)
    assert got.pvalue == pytest.approx(res.pvalue, rel=1e-6, abs=1e-12)


# -- KS ----------------------------------------------------------------------------------------

samples = st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=200)
tied = st.lists(st.integers(-5, 5).map(float), min_size=1, max_size=200)


@given(st.one_of(samples, tied), st.one_of(samples, tied))
def test_ks_statistic_equals_scipy_exactly(a, b):
    ref = np.sort(np.asarray(a))
    with np.errstate(divide="ignore"):  # scipy's asymptotic p-value for n = m = 1
        expected = sst.ks_2samp(a, b, method="asymp").statistic
    assert stats.ks_statistic_sorted(ref, np.asarray(b)) == pytest.approx(expected, abs=1e-12)


def test_ks_pvalue_agrees_with_scipy_asymptotic():
    rng = np.random.default_rng(0)
    for n, m, shift in [(50, 50, 0.3), (1000, 4096, 0.05), (200, 30, 0.8), (1000, 1000, 0.0)]:
        a, b = rng.normal(size=n), rng.normal(shift, 1, size=m)
        got = stats.ks(a, b)
        ref = sst.ks_2samp(a, b, method="asymp")
        assert got.statistic == pytest.approx(ref.statistic, abs=1e-12)
        assert abs(got.pvalue - ref.pvalue) <= 0.02 + 0.1 * ref.pvalue


def test_ks_critical_inverts_pvalue():
    for level in (1e-2, 1e-4, 1e-8):
        d = stats.ks_critical(level, 1024, 4096)
        assert stats.ks_pvalue(d, 1024, 4096) == pytest.approx(level, rel=1e-6)


@given(st.one_of(samples, tied), st.one_of(samples, tied))
def test_ks_pvalue_in_unit_interval_and_identical_samples_give_zero(a, b):
    r = stats.ks(np.asarray(a), np.asarray(b))
    assert 0.0 <= r.pvalue <= 1.0
    assert stats.ks(np.asarray(a), np.asarray(a)).statistic == 0.0


# -- Wasserstein -------------------------------------------------------------------------------

@given(st.one_of(samples, tied), st.one_of(samples, tied))
def test_wasserstein_matches_scipy(a, b):
    expected = sst.wasserstein_distance(a, b)
    raw, _ = stats.wasserstein(np.asarray(a), np.asarray(b))
    fast = stats.wasserstein_sorted(np.sort(np.asarray(a)), np.asarray(b))
    assert raw == pytest.approx(expected, rel=1e-9, abs=1e-6)
    assert fast == pytest.approx(expected, rel=1e-9, abs=1e-6)
    assert stats.wasserstein_sorted(np.sort(np.asarray(a)), np.asarray(a)) == pytest.approx(
        0.0, abs=1e-9)


def test_wasserstein_normalised_by_the_baseline_std():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 10, 5000)
    raw, norm = stats.wasserstein(a, a + 5.0, scale=10.0)
    assert raw == pytest.approx(5.0, rel=1e-9)
    assert norm == pytest.approx(0.5, rel=1e-9)
