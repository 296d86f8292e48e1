"""Event time that ends: idle sources close their slices, and a window is evaluated at every
slice boundary while it holds rows (hopping-window semantics)."""

from __future__ import annotations

from importlib import resources

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftwarden.config import Detection, Settings, load_settings
from driftwarden.detectors.summary import NumericSpec, Summary
from driftwarden.detectors.window import SlidingWindow
from driftwarden.produce import to_record
from driftwarden.stream.service import RawMessage, StreamService
from driftwarden.tables import read_rows


def _window(slices=3, width=1.0, lateness=0.0):
    spec = {"x": NumericSpec.fit("x", np.arange(10.0))}
    return SlidingWindow(lambda: Summary.empty(spec), slices=slices, slice_seconds=width,
                         allowed_lateness=lateness)


def test_a_window_is_evaluated_at_every_boundary_while_it_holds_rows():
    w = _window(slices=3)
    w.add({"x": np.array([1.0])}, ts=np.array([0.5]))
    seen = []
    r = w.add({"x": np.array([2.0])}, ts=np.array([10.2]),
              on_close=lambda sid: seen.append((sid, w.summary().n_rows)))
    # slice 0 holds the row at 0.5 s; it stays in a 3-slice ring through slice 2, then the
    # ring is empty and nothing is left to evaluate until slice 10 closes
    assert r.closed == [0, 1, 2] and seen == [(0, 1), (1, 1), (2, 1)]
    assert w.fill_ratio == 0.0 and w.has_rows  # slice 10 is open
    assert w.advance(11.0) == [10]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 60, allow_nan=False), min_size=1, max_size=40),
       st.integers(1, 7), st.floats(0, 3))
def test_evaluation_points_do_not_depend_on_how_rows_are_batched(times, cut, lateness):
    """The slices evaluated (and what the window held each time) are the same whether the
    rows come one by one or in batches of any size: verdicts depend on the rows alone."""
    ts = np.sort(np.array(times))

    def run(size):
        w = _window(slices=4, width=2.0, lateness=lateness)
        seen = []
        for i in range(0, len(ts), size):
            part = ts[i:i + size]
            w.add({"x": part % 10}, ts=part,
                  on_close=lambda sid, w=w: seen.append((sid, w.summary().n_rows)))
        w.advance(1e6,
                  on_close=lambda sid, w=w: seen.append((sid, w.summary().n_rows)))
        return seen

    one = run(1)
    assert run(cut) == one == run(len(ts))
    # every evaluation point is a boundary where the ring held rows, each slice once
    ids = [sid for sid, _ in one]
    assert ids == sorted(set(ids)) and all(n > 0 for _, n in one)


def _messages(path, model, t0, topic="driftwarden.predictions", start=0):
    """The records `driftwarden produce` would send for a file without `ts` (send time)."""
    rows = read_rows(str(path))
    out = []
    for i, row in enumerate(rows):
        rec, _ = to_record(row, start + i, model=model, version="1", now=t0 + i / 5000)
        out.append(RawMessage(orjson.dumps(rec), [], topic, 0, start + i, rec["ts"]))
    return out


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _service(detection: Detection | None = None) -> tuple[StreamService, FakeClock]:
    settings: Settings = load_settings(env={})
    if detection is not None:
        import msgspec

        settings = msgspec.structs.replace(settings, detection=detection)
    svc = StreamService(settings)
    clock = FakeClock()
    svc.monotonic = clock
    return svc, clock


def test_a_replay_without_timestamps_ends_in_a_verdict_once_the_producer_is_quiet():
    """The README walkthrough's traffic: the bundled reference file, then the drifted one, each
    stamped with its send time (~5,000 records/s), then nothing."""
    examples = resources.files("driftwarden") / "examples"
    svc, clock = _service()
    t0 = 1.7e9
    ref = _messages(examples / "reference.csv", "walk", t0)
    cur = _messages(examples / "current.csv", "walk", t0 + 30, start=len(ref))
    out = svc.handle_predictions(ref) + svc.handle_predictions(cur)
    assert not [o for o in out if o.topic == "driftwarden.drift"]
    (monitor,) = svc.monitors.values()
    assert monitor.ready and monitor.window.fill_ratio == 0.0  # nothing closed: no verdict

    clock.now += 5.0  # quiet, but not for idle_close_seconds yet
    assert svc.handle_idle() == [] and svc.verdicts() == []
    events = {}
    for tick in range(6, 30):  # the worker's one-second timer
        clock.now += 1.0
        for o in svc.handle_idle():
            if o.topic == "driftwarden.drift":
                e = orjson.loads(o.value)
                events[e["kind"], e["state"]] = (tick, e["features"])
    # at the first tick 10 s after the last record: the slice of the drifted records and the
    # next boundary are two evaluations, as hysteresis asks
    tick, features = events["data", "onset"]
    assert tick == 10 and {"amount", "country"} <= set(features)
    assert {k for k, _ in events} == {"data", "prediction", "quality"}
    assert all(state == "onset" for _, state in events)
    data = next(v for v in svc.verdicts() if v["kind"] == "data")
    assert data["drift"] and data["state"] == "drifting" and data["features"]


def test_idle_close_is_off_at_zero_and_ends_a_short_warmup():
    svc, clock = _service(Detection(idle_close_seconds=0.0))
    examples = resources.files("driftwarden") / "examples"
    svc.handle_predictions(_messages(examples / "current.csv", "m", 1.7e9))
    clock.now += 3600
    assert svc.handle_idle() == []
    assert not svc.monitors  # nothing closed: no slice has reached the merge stage

    svc, clock = _service(Detection(min_warmup=1000))
    svc.handle_predictions(_messages(examples / "current.csv", "m", 1.7e9))
    clock.now += 11
    assert svc.handle_idle() == []
    (monitor,) = svc.monitors.values()
    assert monitor.ready and monitor.baseline.n_rows == 2000
    assert [b["rows"] for b in svc.take_fresh_baselines()] == [2000]

    svc, clock = _service(Detection(min_warmup=3000))
    svc.handle_predictions(_messages(examples / "current.csv", "m", 1.7e9))
    clock.now += 11
    svc.handle_idle()
    assert not next(iter(svc.monitors.values())).ready  # fewer than min_warmup: waits


def test_records_after_an_idle_close_start_a_new_stretch_and_late_ones_are_counted():
    examples = resources.files("driftwarden") / "examples"
    svc, clock = _service()
    ref = _messages(examples / "reference.csv", "m", 1.7e9)
    svc.handle_predictions(ref)
    cur = _messages(examples / "reference.csv", "m", 1.7e9 + 100, start=len(ref))
    svc.handle_predictions(cur[:1000])
    clock.now += 30
    svc.handle_idle()
    (monitor,) = svc.monitors.values()
    closed = monitor.window.last_closed
    assert closed is not None and closed * 5.0 > cur[999 - 1].timestamp - 5.0
    # a straggler from the closed stretch is late, not merged into a closed slice
    rec = orjson.loads(cur[500].value)
    rec["id"] = "straggler"
    svc.handle_predictions([cur[500]._replace(value=orjson.dumps(rec), offset=10_000)])
    # late at its source: its slice was flushed when the source went idle
    assert (svc.data.late_rows(), monitor.n_records) == (1, 6000)
    assert key_quiet(svc, clock) == 0.0  # its records reset the idle clock
    assert not svc.data.idle_sources  # and the source is busy again


def key_quiet(svc, clock):
    (last,) = svc.data.last_records.values()
    return clock.now - last


def test_verdicts_name_their_state_and_the_features_behind_it():
    """pending (candidates), drifting (drifting now), recovering (the open incident's), ok."""
    from driftwarden.schema import PredictionRecord
    from driftwarden.stream.monitor import ModelMonitor

    rng = np.random.default_rng(3)
    m = ModelMonitor("m", "1", Detection(warmup=2000, slices=2, slice_seconds=1.0,
                                         allowed_lateness=0.0, calibration_sims=50,
                                         hysteresis=2, recovery=2))

    def second(t, shift):
        return [PredictionRecord("m", "1", None, t + i / 1000,
                                 {"x": float(rng.normal(shift, 1)),
                                  "y": float(rng.normal(0, 1))}) for i in range(1000)]

    states = []
    for t, shift in enumerate([0, 0, 0, 0, 0, 3, 3, 3, 0, 0, 0, 0, 0]):
        m.add(second(float(t), shift))
        v = m.last_verdicts.get("data")
        if v is not None:
            states.append((v["state"], v["drift"], tuple(v["features"])))
    seen = [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]]
    assert [s for s, _, _ in seen] == ["ok", "pending", "drifting", "recovering", "ok"]
    for state, drift, features in seen:
        assert drift == (state in ("drifting", "recovering"))
        assert (features == ("x",)) == (state != "ok")  # never drift with no features


@pytest.mark.parametrize("carried", [True, False])
def test_a_quiet_label_partition_waits_while_predictions_of_its_number_still_come(carried):
    """Labels come in bursts: a label partition that has carried labels, read to its end and
    quiet for idle_close_seconds while its partition number's predictions still arrive, is
    not taken for idle (its open label slices stay open, the join keeps waiting for it) —
    only once the data inputs of its number are idle too. A label partition that never
    carried a label, like a data input, goes idle on its own (producers keyed by model leave
    most label partitions empty)."""
    from driftwarden.config import load_settings

    settings = load_settings(env={"DRIFTWARDEN_KAFKA__PARTITIONS": "1"})
    now = [0.0]
    svc = StreamService(settings, loopback=False, partition=0)
    svc.monotonic = lambda: now[0]
    pred, feat, lab = (f"{t}/0" for t in (settings.topics.predictions, settings.topics.features,
                                          settings.topics.labels))
    offset = iter(range(10**6))

    def predictions(t):
        svc.handle_predictions([RawMessage(orjson.dumps(
            {"model": "m", "version": "1", "id": f"r{t}", "ts": 1.7e9 + t, "prediction": 0.5,
             "features": {"x": 1.0}}), [], settings.topics.predictions, 0, next(offset),
            1.7e9 + t)])

    if carried:
        svc.handle_labels([RawMessage(orjson.dumps({"model": "m", "id": "r0", "label": 1,
                                                    "ts": 1.7e9}), [], settings.topics.labels,
                                      0, next(offset), 1.7e9)])
    for t in range(0, 40, 2):  # predictions every 2 s; no label for 38 s
        now[0] = float(t)
        predictions(t)
        svc.handle_idle([pred, feat, lab])
    assert svc.messages == {"used": 20 + carried}
    assert svc.data.idle_sources == {feat}  # unused: idle on its own
    # quiet, but its predictions still come (or: never carried a label, idle on its own)
    assert svc.label_times.idle_sources == (set() if carried else {lab})
    now[0] += settings.detection.idle_close_seconds
    svc.handle_idle([pred, feat, lab])
    assert svc.data.idle_sources == {pred, feat} and svc.label_times.idle_sources == {lab}
