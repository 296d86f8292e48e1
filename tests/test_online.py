"""One contract suite for every online detector (river's checks/ pattern), plus golden cases
and the statistics of the statistics: run length without drift, delay after a shift."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest

from driftwarden.detectors.online import METHODS, DriftResult, OnlineDetector
from driftwarden.errors import ValidationError

ALL = sorted(METHODS)


def error_stream(seed: int, n_before: int, n_after: int, p0: float = 0.1, p1: float = 0.5):
    rng = random.Random(seed)
    return ([float(rng.random() < p0) for _ in range(n_before)]
            + [float(rng.random() < p1) for _ in range(n_after)])


@pytest.mark.parametrize("method", ALL)
def test_default_construction_and_repr(method):
    d = OnlineDetector(method)
    assert repr(d).startswith(f"OnlineDetector({method!r}")
    r = d.result()
    assert isinstance(r, DriftResult) and r.n_seen == 0 and not r.drift


@pytest.mark.parametrize("method", ALL)
def test_state_round_trips_through_json_mid_stream(method):
    xs = error_stream(1, 700, 700)
    a = OnlineDetector(method, seed=3)
    for x in xs[:600]:
        a.update(x)
    b = OnlineDetector.from_state(orjson.loads(orjson.dumps(a.to_state())))
    assert [a.update(x) for x in xs[600:]] == [b.update(x) for x in xs[600:]]
    assert a.n_detections == b.n_detections


@pytest.mark.parametrize("method", ALL)
def test_same_seed_same_result(method):
    xs = error_stream(2, 1000, 1000)
    runs = []
    for _ in range(2):
        d = OnlineDetector(method, seed=11)
        runs.append([d.update(x).drift for x in xs])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("method", ALL)
def test_constant_stream_never_drifts(method):
    d = OnlineDetector(method, seed=1)
    assert not any(d.update(0.0).drift for _ in range(3000))


@pytest.mark.parametrize("method", ["adwin", "hddm_a", "hddm_w", "page_hinkley"])
@pytest.mark.parametrize("seed", range(5))
def test_detects_an_error_rate_jump_within_a_bound(method, seed):
    """Golden case: error rate 10 % → 50 % at t = 3000; no alarm before, detected within
    300 values. (DDM and EDDM raise false alarms early in such streams at their defaults, and
    KSWIN misses some: they are offered, not recommended.)"""
    d = OnlineDetector(method)
    xs = error_stream(seed, 3000, 1000)
    hits = [i for i, x in enumerate(xs) if d.update(x).drift]
    assert hits, "no drift detected"
    assert 3000 <= hits[0] < 3300


def test_adwin_run_length_without_drift_and_delay_after_a_shift():
    """ADWIN on N(0,1): no false alarm in 50k values; a 0.5σ mean shift found within 500."""
    rng = np.random.default_rng(0)
    d = OnlineDetector("adwin")
    x = rng.normal(size=50_000)
    assert not d.update_many(x.tolist()).drift
    shifted = rng.normal(0.5, 1.0, 2000)
    delay = next(i for i, v in enumerate(shifted) if d.update(float(v)).drift)
    assert delay < 500


def test_update_many_reports_a_drift_anywhere_in_the_batch():
    d = OnlineDetector("adwin")
    r = d.update_many(error_stream(6, 2000, 2000))
    assert r.drift and r.n_seen == 4000


def test_non_finite_values_are_ignored():
    d = OnlineDetector("adwin")
    d.update(float("nan"))
    d.update(float("inf"))
    assert d.n_seen == 0


def test_bad_parameters_raise_validation_errors():
    with pytest.raises(ValidationError, match="method"):
        OnlineDetector("nope")
    with pytest.raises(ValidationError, match="adwin"):
        OnlineDetector("adwin", not_a_parameter=1)


def test_state_refuses_non_river_classes():
    state = OnlineDetector("page_hinkley").to_state()
    state["river"]["_x_mean"] = {"__object__": "os:system", "attrs": {}}
    with pytest.raises(ValidationError, match="non-river"):
        OnlineDetector.from_state(state)
