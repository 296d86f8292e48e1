"""The stream service core, end to end without Kafka: raw messages in, messages out."""

from __future__ import annotations

import numpy as np
import orjson

from driftwarden.config import load_settings
from driftwarden.stream.service import RawMessage, StreamService

SETTINGS = load_settings(env={"DRIFTWARDEN_DETECTION__WARMUP": "2000",
                              "DRIFTWARDEN_DETECTION__SLICES": "3",
                              "DRIFTWARDEN_DETECTION__SLICE_SECONDS": "1",
                              "DRIFTWARDEN_DETECTION__ALLOWED_LATENESS": "0.2",
                              "DRIFTWARDEN_DETECTION__CALIBRATION_SIMS": "60"})


def messages(rng, t0, n, shift=0.0, offset0=0):
    out = []
    for i in range(n):
        rec = {"model": "fraud", "version": "3", "id": f"r{t0}-{i}", "ts": t0 + i / n,
               "features": {"amount": float(rng.normal(shift, 1)),
                            "country": str(rng.choice(["DE", "FR"]))},
               "prediction": float(rng.random())}
        out.append(RawMessage(orjson.dumps(rec), [], "driftwarden.predictions", 0,
                              offset0 + i, t0))
    return out


def test_drift_injected_at_a_known_time_gives_events_and_actions_and_dlq_keeps_bad_ones():
    rng = np.random.default_rng(0)
    svc = StreamService(SETTINGS)
    outs = []
    bad = [b"{nope", b"\xff\xfe", b'{"model": "fraud", "features": 3}', b"[]"]
    for t in range(20):
        batch = messages(rng, t, 500, shift=1.0 if t >= 12 else 0.0, offset0=t * 1000)
        if t == 5:
            batch += [RawMessage(b, [("trace", b"x")], "driftwarden.predictions", 1, 99 + k, 5.0)
                      for k, b in enumerate(bad)]
        outs += svc.handle_predictions(batch)
    dlq = [o for o in outs if o.topic == "driftwarden.dlq"]
    assert [dict(o.headers)["dw.reason"] for o in dlq] == [
        b"bad_json", b"bad_utf8", b"invalid_record", b"unknown_format"]
    assert [o.value for o in dlq] == bad
    assert svc.counts["fraud\x1f3\x1fprediction"] == 20 * 500  # the good ones around them
    drift = [orjson.loads(o.value) for o in outs if o.topic == "driftwarden.drift"]
    assert drift and drift[0]["kind"] == "data" and drift[0]["state"] == "onset"
    assert 12 <= drift[0]["ts"] <= 15 and drift[0]["features"] == ["amount"]
    actions = [orjson.loads(o.value) for o in outs if o.topic == "driftwarden.actions"]
    assert actions and actions[0]["incident_id"] == drift[0]["incident_id"]
    assert {a["action"] for a in actions} <= {"review", "retrain"}


def test_a_silenced_model_still_reports_drift_but_emits_no_action():
    rng = np.random.default_rng(0)
    svc = StreamService(SETTINGS)
    svc.silenced = frozenset({"fraud"})
    outs = []
    for t in range(20):  # the same stream as above, whose drift gives actions when not silenced
        outs += svc.handle_predictions(messages(rng, t, 500, shift=1.0 if t >= 12 else 0.0,
                                                offset0=t * 1000))
    assert any(o.topic == "driftwarden.drift" for o in outs)
    assert not any(o.topic == "driftwarden.actions" for o in outs)
    assert svc.suppressed["fraud"] >= 1
    # the warm-up baseline is handed to the store once
    [fitted] = svc.take_fresh_baselines()
    assert (fitted["model"], fitted["version"], fitted["rows"]) == ("fraud", "3", 2000)
    assert fitted["summary"]["n_rows"] == 2000 and svc.take_fresh_baselines() == []


def test_labels_join_and_late_labels():
    rng = np.random.default_rng(1)
    svc = StreamService(SETTINGS)
    for t in range(8):
        svc.handle_predictions(messages(rng, t, 300, offset0=t * 300))
    labels = [RawMessage(orjson.dumps({"model": "fraud", "id": f"r7-{i}", "label": 1}), [],
                         "driftwarden.labels", 0, i, 9.0) for i in range(100)]
    labels.append(RawMessage(b'{"model": "fraud", "id": "never", "label": 0}', [],
                             "driftwarden.labels", 0, 100, 9.0))
    labels.append(RawMessage(b'{"model": "fraud", "id": "x"}', [], "driftwarden.labels", 0,
                             101, 9.0))
    outs = svc.handle_labels(labels)
    assert svc.labels.joined == 100
    assert [o.topic for o in outs] == ["driftwarden.dlq"]  # "never" waits for its grace
    # outcomes reach the monitor when their slice of label time closes
    assert svc.monitors[("fraud", "3")].n_outcomes == 0
    assert [o.topic for o in svc.finish()] == []
    assert svc.monitors[("fraud", "3")].n_outcomes == 100
    # event time moves on by 92 s
    outs = svc.handle_predictions(messages(rng, 100, 10, offset0=10_000))
    late = [o for o in outs if o.topic == "driftwarden.late"]
    assert [orjson.loads(o.value)["id"] for o in late] == ["never"]


def test_unknown_models_are_dead_lettered_when_discovery_is_off():
    svc = StreamService(SETTINGS, discovery=False, models={"known": {}})
    outs = svc.handle_predictions(messages(np.random.default_rng(2), 0, 3))
    assert [dict(o.headers)["dw.reason"] for o in outs] == [b"unknown_model"] * 3
    assert svc.invalid["unknown_model"] == 3 and not svc.monitors


def test_restored_state_and_a_replay_give_what_an_uninterrupted_run_gives():
    """A worker that dies after saving its state and replays from an older offset must end
    where one that never stopped ends: every record counted once, the same events."""
    rng = np.random.default_rng(3)
    batches = [messages(rng, t, 400, shift=1.0 if t >= 10 else 0.0, offset0=t * 400)
               for t in range(16)]
    labels = [RawMessage(orjson.dumps({"model": "fraud", "id": f"r{t}-{i}", "label": 1}), [],
                         "driftwarden.labels", 0, t * 400 + i, t + 1.0)
              for t in range(16) for i in range(0, 400, 4)]
    whole = StreamService(SETTINGS)
    expected = []
    for t, batch in enumerate(batches):
        expected += whole.handle_predictions(batch)
        expected += whole.handle_labels(labels[t * 100:(t + 1) * 100])

    first = StreamService(SETTINGS)
    got = []
    for t in range(7):
        got += first.handle_predictions(batches[t])
        got += first.handle_labels(labels[t * 100:(t + 1) * 100])
    saved = orjson.loads(orjson.dumps(first.to_state()))
    got += first.handle_predictions(batches[7])  # processed, then lost with the process

    second = StreamService(SETTINGS)
    second.restore(saved)
    for t in range(5, 16):  # the consumer resumes from an older committed offset
        got += second.handle_predictions(batches[t])
        got += second.handle_labels(labels[t * 100:(t + 1) * 100])
    assert second.replayed == 2 * 400 + 2 * 100  # batches 5 and 6 and their labels
    assert second.counts == whole.counts and second.counts["fraud\x1f3\x1fprediction"] == 6400
    assert second.labels.joined == whole.labels.joined == 1600
    events = {(o.topic, o.value) for o in expected}
    assert {(o.topic, o.value) for o in got} == events  # re-sent ones repeat, same ids
    actions = [orjson.loads(v) for t, v in events if t == "driftwarden.actions"]
    assert actions and len({a["event_id"] for a in actions}) == len(actions)
    assert second.to_state()["merge"] == whole.to_state()["merge"]


def test_a_baseline_from_a_file_replaces_the_warm_up(tmp_path):
    from driftwarden.batch import fit_baseline_file

    rng = np.random.default_rng(5)
    ref = tmp_path / "reference.csv"
    ref.write_text("id,amount,country,prediction\n" + "".join(
        f"x{i},{rng.normal()},{rng.choice(['DE', 'FR'])},{rng.random()}\n"
        for i in range(3000)))
    base = fit_baseline_file(str(ref), SETTINGS.detection)
    assert set(base.specs) == {"amount", "country"} and base.prediction is not None
    svc = StreamService(SETTINGS, models={"fraud": {"baseline": base}})
    outs = []
    for t in range(8):  # drifted from the start: no warm-up would ever see it as normal
        outs += svc.handle_predictions(messages(rng, t, 400, shift=1.0, offset0=t * 400))
    monitor = svc.monitors[("fraud", "3")]
    assert monitor.ready and monitor.baseline is base
    onsets = [orjson.loads(o.value) for o in outs if o.topic == "driftwarden.drift"]
    assert onsets and onsets[0]["features"] == ["amount"] and onsets[0]["ts"] <= 3


def test_worker_refuses_a_bad_baseline_file_in_one_line(tmp_path, capsys):
    from driftwarden.cli import main

    cfg = tmp_path / "dw.toml"
    cfg.write_text(f'[models.fraud]\nbaseline = "{tmp_path / "nope.csv"}"\n')
    assert main(["worker", "--config", str(cfg), "--bootstrap-servers", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.csv" in err[0]
