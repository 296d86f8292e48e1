"""Rollouts in the stream service (in process, loopback): declared in the config, judged on
stage 2's merged slices of both versions, their verdicts published as typed action events —
the same events whatever the batching of the input."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_events import check_events

from driftwarden.config import load_settings
from driftwarden.demo import ROLLOUTS
from driftwarden.errors import ConfigError
from driftwarden.stream.service import RawMessage, StreamService

CONFIG = ROLLOUTS  # the demo's: churn-v2 a canary, fraud-v2 a shadow
ENV = {"DRIFTWARDEN_DETECTION__SLICE_SECONDS": "1", "DRIFTWARDEN_DETECTION__SLICES": "3",
       "DRIFTWARDEN_DETECTION__ALLOWED_LATENESS": "0",
       "DRIFTWARDEN_DETECTION__CALIBRATION_SIMS": "30", "DRIFTWARDEN_DETECTION__WARMUP": "300"}
T0 = 1.7e9


def traffic(seconds=60, rate=200, seed=0):
    """(kind, record) in producer order: churn v1 with a 10 % canary of v2 that errs twice as
    often; fraud v1 serving and v2 in shadow on the same requests, v2 the better one; labels
    one second after each request."""
    rng = np.random.default_rng(seed)
    out, labels = [], []
    for i in range(seconds * rate):
        ts = T0 + i / rate
        while labels and labels[0][0] <= ts:
            out.append(("l", labels.pop(0)[1]))
        x = float(rng.normal())
        p = float(1 / (1 + np.exp(-2 * x)))
        truth = int(rng.random() < p)
        canary = rng.random() < 0.10
        p_churn = float(1 - p) if canary and rng.random() < 0.3 else p  # v2: 30 % inverted
        out.append(("p", {"model": "churn", "version": "2" if canary else "1", "id": f"c{i}",
                          "ts": ts, "features": {"x": x}, "prediction": round(p_churn, 4),
                          "latency_ms": round(float(rng.gamma(4.0, 5.0)), 3)}))
        noisy = float(np.clip(p + rng.normal(0, 0.35), 0, 1))
        for version, score in (("1", noisy), ("2", p)):
            out.append(("p", {"model": "fraud", "version": version, "id": f"f{i}", "ts": ts,
                              "features": {"x": x}, "prediction": round(score, 4),
                              # the shadow is slower: 30 ms against 20 ms on average
                              "latency_ms": round(float(rng.gamma(4.0, 5.0 if version == "1"
                                                                  else 7.5)), 3)}))
        labels.append((ts + 1.0, {"model": "churn", "id": f"c{i}", "label": truth,
                                  "ts": ts + 1.0}))
        labels.append((ts + 1.0, {"model": "fraud", "id": f"f{i}", "label": truth,
                                  "ts": ts + 1.0}))
    return out + [("l", lab) for _, lab in labels]


def run(tmp_path, batch: int):
    path = tmp_path / "rollouts.toml"
    path.write_text(CONFIG)
    svc = StreamService(load_settings(path, env=ENV))
    outs = []
    msgs = traffic()
    for i in range(0, len(msgs), batch):
        chunk = msgs[i:i + batch]
        for kind in ("p", "l"):
            raw = [RawMessage(orjson.dumps(r), [], kind, 0, i + j, r["ts"])
                   for j, (k, r) in enumerate(chunk) if k == kind]
            if raw:
                outs += (svc.handle_predictions if kind == "p" else svc.handle_labels)(raw)
    outs += svc.finish()
    return svc, outs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rollouts")
    return {b: run(tmp, b) for b in (1, 500)}


def test_the_canary_is_rolled_back_and_the_shadow_promoted_with_typed_evidence(runs):
    svc, outs = runs[500]
    actions = [orjson.loads(o.value) for o in outs if o.topic == "driftwarden.actions"]
    rollout = {a["model"]: a for a in actions if a.get("rollout")}
    churn, fraud = rollout["churn"], rollout["fraud"]
    assert (churn["action"], churn["version"], churn["target_version"]) == ("rollback", "2", "1")
    assert churn["rollout"]["signal"] == "performance" and churn["rollout"]["lower"] > 0.01
    assert (fraud["action"], fraud["version"], fraud["target_version"]) == ("promote", "2", "2")
    assert fraud["rollout"]["upper"] < fraud["rollout"]["margin"]
    # every version's outcomes joined, the shadow's too (same request ids as the serving one)
    sides = svc.merge.rollouts["fraud-v2"].sides
    assert sides["1"].loss.n == sides["2"].loss.n > 1000
    check_events([], [o.value for o in outs if o.topic == "driftwarden.actions"])
    status = {r["name"]: r for r in svc.rollouts()}
    assert status["churn-v2"]["verdicts"]["2"]["verdict"] == "rollback"
    assert status["fraud-v2"]["verdicts"]["2"]["verdict"] == "promote"


def test_rollout_verdicts_do_not_depend_on_the_batching(runs):
    def verdicts(outs):
        return sorted((a["event_id"], a["action"], a["rollout"]["samples"]["2"],
                       a["rollout"]["slice"])
                      for a in (orjson.loads(o.value) for o in outs
                                if o.topic == "driftwarden.actions") if a.get("rollout"))

    one = verdicts(runs[1][1])
    assert len(one) == 2 and one == verdicts(runs[500][1])


@pytest.mark.parametrize("batch", [1, 500])
def test_the_shadow_is_paired_with_its_baseline_request_by_request(runs, batch):
    """Live shadow pairing: every fraud request scored by both versions is paired once in the
    join (whatever the batching), and the disagreement the rollout holds is the one computed
    independently from the traffic."""
    from driftwarden.detectors.rollout import pair_disagreements

    svc, _ = runs[batch]
    by_id: dict[str, dict[str, float]] = {}
    for kind, r in traffic():
        if kind == "p" and r["model"] == "fraud":
            by_id.setdefault(r["id"], {})[r["version"]] = r["prediction"]
    base = [v["1"] for v in by_id.values()]
    cand = [v["2"] for v in by_id.values()]
    expected = pair_disagreements(base, cand)
    pc = svc.merge.rollouts["fraud-v2"].pairs["2"]
    assert (pc.n, pc.disagree) == (len(by_id), int(expected.sum()))
    assert pc.diff.mean == pytest.approx(float(np.mean(np.subtract(cand, base))), abs=1e-9)
    assert svc.join.pairs.pending == {} and svc.join.pairs.unpaired == 0
    assert svc.join.late_pairs == 0
    ev = svc.merge.rollouts["fraud-v2"].decisions["2"].evidence["pairs"]
    assert 0.5 < ev["agreement"] < 1.0  # a better model decides differently on some
    # the churn canary serves other requests: nothing of it is paired
    assert svc.merge.rollouts["churn-v2"].pairs["2"].n == 0


def test_request_latencies_reach_the_rollout_per_version_whatever_the_batching(runs):
    """latency_ms travels in the partial summaries: each version's latencies in the rollout
    are the same for single-record and batched input, and their means are the traffic's."""
    sides = {b: runs[b][0].merge.rollouts["fraud-v2"].sides for b in (1, 500)}
    for v in ("1", "2"):
        one, many = sides[1][v].latency.to_state(), sides[500][v].latency.to_state()
        # counts exact; moments to their last digits (merged in another grouping)
        assert (one["n"], one["hist"]) == (many["n"], many["hist"])
        assert one["mean"] == pytest.approx(many["mean"], rel=1e-12)
        assert one["m2"] == pytest.approx(many["m2"], rel=1e-12)
        assert sides[1][v].latency.n > 1000 and sides[1][v].latency.n_invalid == 0
    assert sides[500]["1"].latency.mean == pytest.approx(20.0, rel=0.05)
    assert sides[500]["2"].latency.mean == pytest.approx(30.0, rel=0.05)
    ev = runs[500][0].merge.rollouts["fraud-v2"].latest["2"].evidence["latency"]
    assert ev["candidate_p50"] > ev["baseline_p50"]


def test_the_label_free_estimate_per_version_is_the_traffics(runs):
    """CBPE per version: the accuracy each version's scores promise (mean of max(p, 1 - p))
    over the records after its warm-up, as computed from the traffic — evidence only: the
    noisy serving version's overconfident scores promise more than the better shadow's."""
    svc, _ = runs[500]
    warmup = svc.settings.detection.warmup
    scores: dict[str, list[tuple[float, float]]] = {"1": [], "2": []}
    for kind, r in traffic():
        if kind == "p" and r["model"] == "fraud":
            scores[r["version"]].append((r["ts"], r["prediction"]))
    r = svc.merge.rollouts["fraud-v2"]
    for version in ("1", "2"):
        p = np.array([x for _, x in sorted(scores[version])[warmup:]])
        assert r.sides[version].confidence.mean == pytest.approx(
            float(np.maximum(p, 1 - p).mean()), abs=1e-9)
    ev = r.latest["2"].evidence["estimated_performance"]  # at the promote
    assert ev["baseline_accuracy"] > ev["candidate_accuracy"]
    assert ev["lower"] <= ev["estimate"] <= ev["upper"]


def test_a_rollout_that_cannot_run_is_one_line_at_load(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(CONFIG.replace('candidates = ["2"]\nstrategy = "canary"',
                                   'candidates = ["1"]\nstrategy = "canary"'))
    with pytest.raises(ConfigError, match="rollouts.churn-v2: version '1' is both"):
        load_settings(path, env={})


def test_rollout_metrics_agree_with_the_action_events(runs):
    """What an Argo Rollouts AnalysisTemplate or a Flagger MetricTemplate reads: the verdict
    series, the decisive signal's bounds and the samples — equal to the action events'."""
    from prometheus_client import CollectorRegistry

    from driftwarden.metrics import Metrics

    svc, outs = runs[500]
    registry = CollectorRegistry()
    Metrics.create(registry, lambda: [svc])
    get = registry.get_sample_value
    for a in (orjson.loads(o.value) for o in outs if o.topic == "driftwarden.actions"):
        r = a.get("rollout")
        if not r:
            continue
        labels = {"rollout": r["rollout"], "model": a["model"], "candidate": r["candidate"]}
        assert get("driftwarden_rollout_verdict", {**labels, "verdict": r["verdict"]}) == 1.0
        assert get("driftwarden_rollout_verdict", {**labels, "verdict": "continue"}) == 0.0
        for bound in ("estimate", "lower", "upper", "margin"):
            assert get("driftwarden_rollout_difference", {
                "rollout": r["rollout"], "candidate": r["candidate"],
                "signal": r["signal"], "bound": bound}) == pytest.approx(r[bound])
        for version, n in r["samples"].items():
            assert get("driftwarden_rollout_samples", {
                "rollout": r["rollout"], "candidate": r["candidate"], "version": version}) == n
    pairs = svc.merge.rollouts["fraud-v2"].pairs["2"].n
    assert get("driftwarden_shadow_pairs_total", {"fate": "paired"}) == pairs > 1000
    assert get("driftwarden_shadow_pairs_total", {"fate": "unpaired"}) == 0


def test_a_rollout_started_then_aborted_or_promoted_by_hand_publishes_once():
    """Rollouts the admin API started (none in the config): judged from then on, the shadow
    version's labels joined; a person's abort or promote by hand is one action each, kept
    across a restore (the same call again publishes nothing)."""
    from driftwarden.config import RolloutSpec

    svc = StreamService(load_settings(env=ENV))
    svc.set_rollouts({
        "churn-v2": RolloutSpec(model="churn", baseline="1", candidates=["2"],
                                min_samples=10**6),
        "fraud-v2": RolloutSpec(model="fraud", baseline="1", candidates=["2"],
                                strategy="shadow", min_samples=10**6)})
    msgs = traffic(seconds=20)
    for i in range(0, len(msgs), 500):
        for kind in ("p", "l"):
            raw = [RawMessage(orjson.dumps(r), [], kind, 0, i + j, r["ts"])
                   for j, (k, r) in enumerate(msgs[i:i + 500]) if k == kind]
            if raw:
                (svc.handle_predictions if kind == "p" else svc.handle_labels)(raw)
    svc.finish()
    sides = svc.merge.rollouts["fraud-v2"].sides
    assert sides["1"].loss.n == sides["2"].loss.n > 1000  # judged, nothing decided yet
    assert not svc.merge.rollouts["fraud-v2"].decisions

    (abort,) = [orjson.loads(o.value) for o in svc.end_rollout(
        "churn-v2", "aborted through the admin API")]
    assert (abort["action"], abort["rollout"]["verdict"], abort["target_version"]) == (
        "review", "inconclusive", None)
    assert "aborted through the admin API" in abort["reason"]
    (promote,) = [orjson.loads(o.value) for o in svc.end_rollout(
        "fraud-v2", "promoted by hand through the admin API", promote="2")]
    assert (promote["action"], promote["rollout"]["signal"]) == ("promote", "by_hand")
    assert promote["rollout"]["samples"]["2"] > 1000  # the evidence gathered so far
    check_events([], [orjson.dumps(abort), orjson.dumps(promote)])
    assert svc.end_rollout("churn-v2", "again") == []
    again = StreamService(load_settings(env=ENV))
    again.set_rollouts(svc.merge.rollout_specs)
    again.restore(orjson.loads(orjson.dumps(svc.to_state())))
    assert again.end_rollout("fraud-v2", "again", promote="2") == []
    assert again.end_rollout("churn-v2", "again") == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.floats(0, 100), st.floats(-20, 20)),
                max_size=40), st.randoms(use_true_random=False))
def test_shadow_pairing_does_not_depend_on_the_arrival_order(requests, rnd):
    """ShadowPairs against an independent rule: a request is paired iff both versions scored
    it within the window, at the baseline's time — whatever order the predictions came in;
    every other prediction is counted unpaired or apart, none is lost."""
    from driftwarden.stream.joins import ShadowPairs

    window = 5.0
    roles = {"m": (window, {"2": "1"})}
    preds = []
    for i, (has_base, has_cand, t, dt) in enumerate(requests):
        if has_base:
            preds.append((f"r{i}", "1", i, t))
        if has_cand:
            preds.append((f"r{i}", "2", -i, t + dt))
    rnd.shuffle(preds)
    sp = ShadowPairs(max_pending=1000)
    got = []
    for rid, version, p, t in preds:
        got += sp.add(roles, "m", rid, version, p, t)
    sp.expire(float("inf"), window)
    def near(t, dt):  # as the pairer sees it: the two event times' difference
        return abs((t + dt) - t) <= window

    expected = [("m", "2", i, -i, t) for i, (b, c, t, dt) in enumerate(requests)
                if b and c and near(t, dt)]
    assert sorted(got) == sorted(expected)
    apart = sum(1 for b, c, t, dt in requests if b and c and not near(t, dt))
    assert sp.apart == apart and sp.paired == len(expected)
    assert sp.unpaired == sum(1 for b, c, _, _ in requests if b != c)
    assert sp.pending == {} and sp.hold(window) == float("inf")


def test_a_rollout_checkpointed_before_a_spec_field_existed_goes_on_after_an_upgrade(runs):
    """A checkpoint whose rollout spec lacks fields added since (their defaults) restores the
    rollout with its evidence instead of starting it afresh."""
    svc, _ = runs[500]
    state = orjson.loads(orjson.dumps(svc.to_state()))
    saved = state["merge"]["rollouts"]["fraud-v2"]["spec"]
    for field in ("pair_seconds", "pair_tolerance", "latency_margin", "quality_margin"):
        saved.pop(field)
    again = StreamService(svc.settings)
    again.set_rollouts(svc.merge.rollout_specs)
    again.restore(state)
    assert again.merge.rollouts["fraud-v2"].decisions["2"].verdict == "promote"
