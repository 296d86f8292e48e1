"""The decision layer: multiple testing, calibration, hysteresis — and the false-alarm budget
on 25 correlated features."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from conftest import correlated_table
from hypothesis import given
from hypothesis import strategies as st

from driftwarden.detectors.baseline import Baseline
from driftwarden.detectors.compare import compare
from driftwarden.detectors.decide import (
    Calibration,
    Decider,
    DecisionPolicy,
    Evaluation,
    NullModel,
    benjamini_hochberg,
    calibrate,
    evaluate,
    holm,
)
from driftwarden.errors import ValidationError

pvals = st.lists(st.floats(0, 1), min_size=1, max_size=40)


@given(pvals)
def test_holm_matches_the_step_down_procedure(p):
    """Holm rejects at level a exactly the hypotheses the textbook step-down loop rejects."""
    m = len(p)
    adj = holm(p)
    for a in (0.01, 0.05, 0.2):
        rejected = set()
        for k, i in enumerate(sorted(range(m), key=lambda i: p[i])):
            if p[i] > a / (m - k):
                break
            rejected.add(i)
        assert {i for i in range(m) if adj[i] <= a} == rejected


@given(pvals)
def test_bh_matches_the_step_up_procedure(p):
    m = len(p)
    adj = benjamini_hochberg(p)
    for a in (0.01, 0.05, 0.2):
        order = sorted(range(m), key=lambda i: p[i])
        k_max = max((k + 1 for k, i in enumerate(order) if p[i] <= a * (k + 1) / m), default=0)
        assert {i for i in range(m) if adj[i] <= a + 1e-12} == set(order[:k_max])


def test_null_model_recovers_a_scaled_chi_square():
    rng = np.random.default_rng(0)
    sample = rng.chisquare(11, 5000) * 0.002
    m = NullModel.fit(sample)
    from scipy.stats import chi2

    for q in (1e-2, 1e-4):
        exact = chi2.isf(q, 11) * 0.002
        assert m.threshold(q) == pytest.approx(exact, rel=0.06)
        assert m.pvalue(m.threshold(q)) == pytest.approx(q, rel=1e-6)


def ev(drift: bool, severity: str = "warning") -> Evaluation:
    return Evaluation(drift, severity if drift else "none", ("f",) if drift else (), (), 1)


def test_hysteresis_escalation_recovery_and_cooldown():
    d = Decider(DecisionPolicy(hysteresis=2, recovery=2, cooldown=2))
    states = [d.update(e).state for e in [
        ev(True), ev(False), ev(True), ev(True),          # a lone blip is ignored; 2 in a row open
        ev(True, "critical"), ev(True, "critical"),       # escalation once
        ev(False), ev(False),                             # 2 clear evaluations: recovery
        ev(True), ev(True),                               # cooldown holds back a new onset
        ev(True)]]
    assert states == [None, None, None, "onset", "escalation", None, None, "recovery",
                      None, None, "onset"]
    back = Decider.from_state(orjson.loads(orjson.dumps(d.to_state())), d.policy)
    assert back.to_state() == d.to_state()


def test_policy_validates_when_built():
    for bad in ({"budget": 0}, {"correction": "bonferroni"}, {"numeric_tests": ("chi2",)},
                {"hysteresis": 0}, {"thresholds": {"nope": 1.0}}):
        with pytest.raises(ValidationError):
            DecisionPolicy(**bad)


def test_fixed_threshold_replaces_a_p_value():
    rng = np.random.default_rng(1)
    base = Baseline.fit({"x": rng.normal(size=3000)})
    w = base.new_summary()
    w.update_columns({"x": rng.normal(0.3, 1, 400)})
    comps = compare(base, w)
    psi = comps["x"].tests["psi"].statistic
    policy = DecisionPolicy(numeric_tests=("psi",), thresholds={"psi": psi * 0.9}, min_psi=0)
    assert evaluate(comps, policy).drift
    policy = DecisionPolicy(numeric_tests=("psi",), thresholds={"psi": psi * 1.1}, min_psi=0)
    assert not evaluate(comps, policy).drift


# --- the budget on 25 correlated features -----------------------------------------------------

WINDOW = 1000
N_NULL = 300


@pytest.fixture(scope="module")
def setting():
    rng = np.random.default_rng(2026)
    base = Baseline.fit(correlated_table(rng, 20_000))
    assert list(base.types.values()).count("numeric") == 20
    cal = calibrate(base, WINDOW, n_sim=200, seed=7)
    nulls = []
    for k in range(N_NULL):
        w = base.new_summary(seed=k)
        w.update_columns(correlated_table(rng, WINDOW))
        nulls.append(compare(base, w))
    return base, cal, nulls, rng


def test_calibrated_psi_p_values_are_valid_on_fresh_no_drift_windows(setting):
    base, cal, nulls, _ = setting
    p = np.array([cal.pvalue(name, "psi", c[name].tests["psi"].statistic)
                  for c in nulls for name in c])
    # valid p-values: P(p <= a) <= a (up to sampling noise of 7,500 correlated draws)
    for a in (0.01, 0.05, 0.2):
        assert (p <= a).mean() <= a * 1.5 + 0.005
    assert (p <= 0.5).mean() > 0.2  # and not absurdly conservative


def test_calibration_rescales_to_windows_of_other_sizes(setting):
    """A window still filling up (300 rows) against the 1,000-row calibration: p-values
    stay valid instead of flagging the small window's larger sampling noise."""
    base, cal, _, rng = setting
    p, unscaled = [], []
    for k in range(120):
        w = base.new_summary(seed=5000 + k)
        w.update_columns(correlated_table(rng, 300))
        for name, c in compare(base, w).items():
            psi = c.tests["psi"]
            p.append(cal.pvalue(name, "psi", psi.statistic, psi.n_current))
            unscaled.append(cal.pvalue(name, "psi", psi.statistic))
    p, unscaled = np.array(p), np.array(unscaled)
    for a in (0.01, 0.05):
        assert (p <= a).mean() <= a * 1.5 + 0.005
    assert (unscaled <= 0.01).mean() > 0.05  # without rescaling: a flood of false alarms


@pytest.mark.parametrize("budget", [1e-2, 1e-4])
def test_false_alarms_stay_within_budget_on_correlated_no_drift_data(setting, budget):
    base, cal, nulls, _ = setting
    policy = DecisionPolicy(budget=budget, hysteresis=1)  # raw per-evaluation rate
    alarms = sum(evaluate(c, policy, cal).drift for c in nulls)
    # expected at most budget * N_NULL (3 at 1e-2, 0.03 at 1e-4); binomial upper tail < 0.2 %
    limit = {1e-2: 8, 1e-4: 1}[budget]
    assert alarms <= limit
    decider = Decider(DecisionPolicy(budget=budget))  # default hysteresis: 2 in a row
    onsets = sum(decider.update(evaluate(c, decider.policy, cal)).state == "onset"
                 for c in nulls)
    assert onsets <= alarms


@pytest.mark.parametrize("feature", [3, 11, 17])
def test_half_sigma_shift_in_one_feature_is_found_within_two_windows(setting, feature):
    base, cal, nulls, rng = setting
    decider = Decider(DecisionPolicy())  # budget 1e-4, Holm, hysteresis 2
    for c in nulls[:5]:
        assert decider.update(evaluate(c, decider.policy, cal)).state is None
    verdicts = []
    for k in range(2):
        w = base.new_summary(seed=1000 + k)
        w.update_columns(correlated_table(rng, WINDOW, shift={feature: 0.5}))
        verdicts.append(decider.update(evaluate(compare(base, w), decider.policy, cal)))
    assert verdicts[0].evaluation.drift and verdicts[0].state is None  # flagged, held back once
    assert verdicts[-1].state == "onset" and verdicts[-1].drift
    assert f"n{feature}" in verdicts[-1].features
    evidence = [e for e in verdicts[-1].evaluation.evidence
                if e.feature == f"n{feature}" and e.rejected]
    assert evidence and all(e.adjusted_pvalue <= 1e-4 for e in evidence)
    ks = next(e for e in verdicts[-1].evaluation.evidence
              if e.feature == f"n{feature}" and e.test == "ks")
    assert ks.statistic >= ks.threshold  # the evidence explains the verdict
    assert math.isfinite(ks.threshold) and ks.n_current == WINDOW


def test_calibration_state_round_trips(setting):
    _, cal, nulls, _ = setting
    back = Calibration.from_state(orjson.loads(orjson.dumps(cal.to_state())))
    c = nulls[0]
    for name in c:
        s = c[name].tests["psi"].statistic
        assert back.pvalue(name, "psi", s) == cal.pvalue(name, "psi", s)
