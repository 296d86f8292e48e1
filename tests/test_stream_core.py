"""Plain-Python cores of the stream: label join, response policy, dead-letter records."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from driftwarden.events import ActionEvent
from driftwarden.schema import Rejection, decode_predictions
from driftwarden.stream.dlq import dead_letter
from driftwarden.stream.labels import LabelJoiner
from driftwarden.stream.policy import ModelPolicy, ResponsePolicy


def test_label_join_ttl_bounds_grace_and_state():
    j = LabelJoiner(ttl=100.0, max_pending=3, grace=10.0)
    for i in range(4):
        j.add_prediction("m", f"r{i}", "1", float(i % 2), ts=float(i))
    assert len(j) == 3 and j.expired == 1            # r0 pushed out by the bound
    assert j.add_label("m", "r0", 1, ts=5.0, raw=b"r0") is None  # waits for its grace
    out = j.add_label("m", "r2", 0, ts=50.0)
    assert (out.version, out.prediction, out.label, out.delay) == ("1", 0.0, 0, 48.0)
    assert [lab.raw for lab in j.take_late()] == [b"r0"] and j.take_late() == []
    back = LabelJoiner.from_state(orjson.loads(orjson.dumps(j.to_state())))
    assert back.to_state() == j.to_state()
    assert j.add_label("m", "r3", 1, ts=200.0) is None  # r3 (ts 3) expired at 200
    assert j.expired == 3 and j.joined == 1
    assert back.add_label("m", "r3", 1, ts=60.0).delay == 57.0
    # a label before its prediction: joined when the prediction comes within the grace
    k = LabelJoiner(grace=30.0)
    assert k.add_label("m", "early", 1, ts=10.0) is None
    hit = k.add_prediction("m", "early", "2", 0.8, ts=9.0)
    assert (hit.version, hit.label, hit.prediction) == ("2", 1, 0.8) and k.take_late() == []
    k.add_label("m", "orphan", 0, ts=11.0)
    k.add_prediction("m", "other", "2", 0.1, ts=45.0)
    assert [lab.id for lab in k.take_late()] == ["orphan"]
    assert k.join_ratio() == pytest.approx(0.5)


def drift_event(**kw):
    e = {"event_id": "e", "incident_id": "inc-1", "model": "fraud", "version": "8",
         "kind": "data", "state": "onset", "severity": "warning", "features": ["amount"],
         "evidence": [{"feature": "amount", "test": "ks"}], "ts": 1000.0}
    e.update(kw)
    return e


def test_rollback_on_critical_concept_drift_of_a_fresh_version():
    p = ResponsePolicy()
    p.register_version("fraud", "8", deployed_at=900.0, previous="7")
    acts = p.decide(drift_event(kind="concept", severity="critical"))
    assert [(a["action"], a["target_version"]) for a in acts] == [("rollback", "7")]
    a = acts[0]
    assert set(a) == {"schema_version", "event_id", "action", "model", "version",
                      "target_version", "incident_id", "reason", "evidence", "runbook_url", "ts",
                      "rollout"}
    assert set(a) == set(ActionEvent.__struct_fields__)  # the public contract, all of it
    # an old version is not rolled back: a human reviews
    p2 = ResponsePolicy()
    p2.register_version("fraud", "8", deployed_at=0.0, previous="7")
    p2.default = ModelPolicy(rollback_window=100.0)
    assert [a["action"] for a in p2.decide(drift_event(kind="concept", severity="critical"))
            ] == ["review"]
    # a candidate of a rollout: the rollout decides its rollback, the drift asks for a review
    p3 = ResponsePolicy(rollouts={("fraud", "8"): "fraud-v8"})
    p3.register_version("fraud", "8", deployed_at=900.0, previous="7")
    (a3,) = p3.decide(drift_event(kind="concept", severity="critical"))
    assert a3["action"] == "review" and "rollout fraud-v8" in a3["reason"]


def test_retrain_when_data_drift_persists_and_ids_are_stable():
    p = ResponsePolicy(default=ModelPolicy(retrain_after=600.0, cooldown=0.0))
    assert [a["action"] for a in p.decide(drift_event())] == ["review"]
    assert p.decide(drift_event(state="escalation", severity="warning", ts=1300.0)) == []
    retrain = p.decide(drift_event(state="escalation", severity="warning", ts=1700.0))
    assert [a["action"] for a in retrain] == ["retrain"]
    again = ResponsePolicy(default=ModelPolicy(retrain_after=600.0, cooldown=0.0))
    again.decide(drift_event())
    assert again.decide(drift_event(state="escalation", ts=1700.0))[0]["event_id"] == \
        retrain[0]["event_id"]  # same incident and action: same id, on any worker
    assert p.decide(drift_event(state="recovery", severity="none", ts=1800.0)) == []


def test_cooldown_per_model_and_action():
    p = ResponsePolicy(default=ModelPolicy(cooldown=500.0))
    assert len(p.decide(drift_event(incident_id="a", ts=0.0))) == 1
    assert p.decide(drift_event(incident_id="b", ts=100.0)) == []
    assert len(p.decide(drift_event(incident_id="c", ts=600.0))) == 1


def test_dead_letters_keep_bytes_reason_source_and_headers():
    body = orjson.dumps({"model": "m", "records": [{"features": {"x": 1}},
                                                   {"features": 5}]})
    decoded = decode_predictions(body, now=1.0)
    rej = decoded.rejections[0]
    value, headers = dead_letter(body, [("Trace-Id", b"abc")], rej, "driftwarden.predictions",
                                 3, 77, record={"features": 5})
    h = dict(headers)
    assert orjson.loads(value) == {"features": 5}
    assert h["dw.reason"] == b"invalid_record" and h["dw.source.index"] == b"1"
    assert h["dw.source.partition"] == b"3" and h["original.trace-id"] == b"abc"
    value, headers = dead_letter(b"\xff", None, Rejection("bad_utf8", "x" * 2000), "t", 0, 1)
    assert value == b"\xff" and len(dict(headers)["dw.detail"]) == 500


def test_bulk_predictions_join_like_one_by_one():
    """add_predictions gives the pending table, the joins and the cap of add_prediction."""
    one, bulk = LabelJoiner(max_pending=50), LabelJoiner(max_pending=50)
    for j in (one, bulk):
        j.add_label("m", "w3", 1, ts=0.5)  # a label that waits for its prediction
    ids = [f"w{i}" for i in range(40)] + [None, "w7"]
    preds = [i / 40 for i in range(40)] + [0.5, None]
    ts = [1.0 + i for i in range(42)]
    joined_one = [o for i, p, t in zip(ids, preds, ts) if i is not None and p is not None
                  for o in [one.add_prediction("m", i, "1", p, t)] if o is not None]
    joined_bulk = bulk.add_predictions("m", "1", ids, preds, ts)
    assert joined_bulk == joined_one and [o.id for o in joined_bulk] == ["w3"]
    assert list(bulk._pending.items()) == list(one._pending.items())
    more = [f"v{i}" for i in range(30)]
    one_more = [one.add_prediction("m", i, "1", 0.1, 50.0) for i in more]
    assert bulk.add_predictions("m", "1", more, [0.1] * 30, [50.0] * 30) == [] == [
        o for o in one_more if o is not None]
    assert list(bulk._pending.items()) == list(one._pending.items()) and len(bulk) == 50
    assert bulk.expired == one.expired == 19 and bulk.watermark == one.watermark


def test_faust_credentials_follow_the_librdkafka_settings():
    import ssl

    from driftwarden.errors import ConfigError
    from driftwarden.stream.app import faust_credentials

    c = faust_credentials({"security.protocol": "sasl_ssl", "sasl.mechanisms": "SCRAM-SHA-512",
                           "sasl.username": "svc", "sasl.password": "s3cret",
                           "enable.ssl.certificate.verification": "false"})
    assert c.mechanism.value == "SCRAM-SHA-512" and c.password == "s3cret"
    assert c.ssl_context.verify_mode == ssl.CERT_NONE
    tls = faust_credentials({"security.protocol": "SSL"})
    assert type(tls).__name__ == "SSLCredentials"
    with pytest.raises(ConfigError, match="security.protocol"):
        faust_credentials({"security.protocol": "KERBEROS"})


@pytest.mark.parametrize("seed", range(5))
def test_label_table_deltas_replay_exactly_at_the_cap(seed):
    """A table at its cap, with joins between additions in one delta (bulk and single
    records, repeated ids): base + deltas rebuild it entry for entry, order included.
    Replaying a delta's additions before its joins kept entries the live table had dropped."""
    rng = np.random.default_rng(seed)
    live = LabelJoiner(max_pending=300)
    live.journal = True
    rebuilt = LabelJoiner(max_pending=300)
    for step in range(20):
        base = list(live._pending.items()) if step == 0 else None
        for part in range(3):
            n = int(rng.integers(1, 150))
            ids = [f"r{int(i)}" for i in rng.integers(0, 2_000, n)]  # some ids come again
            ts = [step + part / 3] * n
            if rng.random() < 0.5:
                live.add_predictions("m", "1", ids, rng.random(n).tolist(), ts)
            else:
                for i, t in zip(ids, ts):
                    live.add_prediction("m", i, "1", float(rng.random()), t)
            for i in rng.choice(ids, size=n // 3):  # labels of some of them come back
                live.add_label("m", str(i), 1, ts=step + 0.1)
        if base is not None:
            rebuilt.load_pending(base)
        rebuilt.apply_delta(orjson.loads(orjson.dumps(live.take_delta())))  # as saved
        assert list(rebuilt._pending.items()) == list(live._pending.items())
    assert live.expired > 0 and live.joined > 0  # the cap and joins both happened


def test_label_table_delta_of_an_earlier_version_still_applies():
    j = LabelJoiner()
    j.apply_delta({"added": [["m", "1", ["a", "b"], [0.2, 0.4], [1.0, 2.0]]],
                   "removed": [["m", "a"]]})
    assert list(j._pending.items()) == [(("m", "b"), ("1", 0.4, 2.0))]
