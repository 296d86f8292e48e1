"""Stage 2 in process (driftwarden/stream/merge.py): the same records spread over any number of
sources, cut into any batches, with the baseline reaching the sources at any moment and the
partials interleaved in any order, give the same drift events — same event_ids, states,
features — and the same counts as one source holding everything."""

from __future__ import annotations

import random

import numpy as np
import pytest

from driftwarden.config import Detection
from driftwarden.partials import (
    EventTime,
    OutcomeBuilder,
    PartialBuilder,
    SourceClock,
    Watermark,
    decode,
    encode,
    outcome_errors,
)
from driftwarden.stream.merge import ModelStage
from driftwarden.stream.monitor import ModelMonitor

D = Detection(warmup=600, slices=4, slice_seconds=1.0, allowed_lateness=0.5,
              calibration_sims=60, concept_step=50)
SLICES = 40


def traffic(seed: int = 7):
    """Two models over 40 s of event time, slightly out of order: model "a" drifts in its
    features at 24 s and its error rate rises from 5 % to 40 % at 20 s (label time); "b" is
    stable. Rows: (model, ts, x, c, prediction, label, label_ts)."""
    rng = np.random.default_rng(seed)
    rows = []
    for model in ("a", "b"):
        n = 180 * SLICES
        ts = np.sort(rng.uniform(0, SLICES, n)) + rng.uniform(-0.3, 0.3, n)  # jitter < lateness
        x = rng.normal(0, 1, n) + np.where((model == "a") & (ts > 24), 1.5, 0.0)
        c = rng.choice(["DE", "FR", "US"], n, p=[0.5, 0.3, 0.2])
        p = rng.uniform(0, 1, n)
        truth = (p >= 0.5).astype(int)
        wrong = rng.uniform(0, 1, n) < np.where((model == "a") & (ts > 20), 0.4, 0.05)
        label = np.where(wrong, 1 - truth, truth)
        for i in range(n):
            rows.append((model, float(ts[i]), float(x[i]), str(c[i]), float(p[i]),
                         int(label[i]), float(ts[i]) + 0.2))
    rows.sort(key=lambda r: r[1] + rng.uniform(-0.2, 0.2))  # the producers' interleaving
    return rows


ROWS = traffic()


def run(n_sources: int, seed: int, *, codec: bool = False):
    """Spread ROWS over ``n_sources`` (each keeps the producers' order), cut each source's
    rows into random batches, interleave the sources' partials at random, and hand the stage
    its baseline at a random moment after it exists."""
    rnd = random.Random(seed)
    owner = [rnd.randrange(n_sources) for _ in ROWS]
    clocks = SourceClock(1e9), SourceClock(1e9)
    names = [f"predictions/{i}" for i in range(n_sources)]
    for name in names:
        clocks[0].expect(name, now=0.0)
        clocks[1].expect(name, now=0.0)
    late: dict[str, int] = {}
    stages = {m: ModelStage(ModelMonitor(m, "1", D), *clocks) for m in ("a", "b")}
    times = {s: (EventTime(D.allowed_lateness), EventTime(D.allowed_lateness)) for s in names}
    data = {(m, s): PartialBuilder(None, model=m, version="1", source=s, slice_seconds=1.0,
                                   time=times[s][0])
            for m in stages for s in names}
    outs = {(m, s): OutcomeBuilder(model=m, version="1", source=s, slice_seconds=1.0,
                                   time=times[s][1])
            for m in stages for s in names}
    queues: list[list] = [[] for _ in names]
    for i, name in enumerate(names):
        mine = [r for r, o in zip(ROWS, owner) if o == i]
        j = 0
        while j < len(mine):  # a stage-1 source: admit a batch's rows in order, add, publish
            cut = mine[j:j + rnd.choice([1, 3, 17, 64, 250])]
            j += len(cut)
            on_time = times[name][0].admit(np.array([r[1] for r in cut]))
            labelled = times[name][1].admit(np.array([r[6] for r in cut]))
            for m in stages:
                rs = [r for r, ok in zip(cut, on_time) if ok and r[0] == m]
                if rs:
                    data[m, name].add({"x": np.array([r[2] for r in rs]),
                                       "c": np.array([r[3] for r in rs], dtype=object),
                                       "__prediction__": np.array([r[4] for r in rs])},
                                      np.array([r[1] for r in rs]))
                ls = [r for r, ok in zip(cut, labelled) if ok and r[0] == m]
                if ls:
                    outs[m, name].add([r[4] for r in ls], [r[5] for r in ls],
                                      [r[6] for r in ls])
            for m in stages:
                queues[i] += data[m, name].publish() + outs[m, name].publish()
            # then the source's event time, for every model (after all its partials)
            queues[i] += [Watermark(kind="data", source=name, watermark=times[name][0].watermark),
                          Watermark(kind="outcomes", source=name,
                                    watermark=times[name][1].watermark)]
        for m in stages:
            queues[i] += data[m, name].flush() + outs[m, name].flush()
        late[name] = times[name][0].late_rows + sum(data[m, name].late_rows for m in stages)
    events = []
    while any(queues):
        q = rnd.choice([q for q in queues if q])
        p = q.pop(0)
        if codec:
            p = decode(encode(p, binary=rnd.random() < 0.5))
        if isinstance(p, Watermark):
            clocks[p.kind == "outcomes"].see(p.source, 0.0, p.watermark)
            for st in stages.values():
                events += st.close(now=0.0)
            continue
        events += stages[p.model].add(p, now=0.0)
        for m, st in stages.items():  # the baseline reaches the sources some time later
            if st.fresh_baseline and rnd.random() < 0.2:
                st.fresh_baseline = False
                for s in names:
                    data[m, s].set_baseline(st.monitor.baseline)
    for st in stages.values():
        events += st.close(now=1e18)
    counts = {m: (st.monitor.n_records, st.monitor.n_outcomes, st.data.counts.late,
                  st.data.counts.duplicates, st.monitor.outcomes.n_correct)
              for m, st in stages.items()}
    counts["late"] = sum(late.values())
    # per model, in the order raised (the order between models is not a contract)
    return sorted([(e["model"], e["event_id"], e["kind"], e["state"], tuple(e["features"]))
                   for e in events], key=lambda e: e[0]), counts


@pytest.fixture(scope="module")
def reference():
    return run(1, 0)


def test_the_reference_run_sees_the_drifts_it_should(reference):
    events, counts = reference
    kinds = {(m, k, s) for m, _, k, s, _ in events}
    assert ("a", "data", "onset") in kinds and ("a", "concept", "onset") in kinds
    assert not [e for e in events if e[0] == "b"], "model b is stable"
    onset = next(e for e in events if (e[0], e[2], e[3]) == ("a", "data", "onset"))
    assert "x" in onset[4] and "c" not in onset[4]
    assert counts["a"][0] == counts["b"][0] == 180 * SLICES  # every record counted once
    assert counts["a"][2:4] == (0, 0)


@pytest.mark.parametrize("n_sources,seed", [(1, 1), (3, 2), (8, 3), (8, 4)])
def test_events_and_counts_do_not_depend_on_sources_cuts_or_order(reference, n_sources, seed):
    assert run(n_sources, seed, codec=seed == 4) == reference


def test_the_error_stream_replayed_from_counts():
    assert outcome_errors([0.9, 0.1], [0, 0], "classification") == [1.0, 0.0]


def test_a_baseline_fitted_by_stage_two_reaches_stage_one_with_the_same_bins():
    """The worker's path without loopback: stage 2 fits the warm-up baseline and publishes it
    on the baselines topic; what a worker's BaselineFeed decodes has the fingerprint of stage
    2's bins (else stage 1's binned partials would be refused as mismatched)."""
    import time

    import msgspec
    import orjson

    from driftwarden.config import load_settings
    from driftwarden.detectors.baseline import Baseline
    from driftwarden.partials import fingerprint
    from driftwarden.stream.service import RawMessage, StreamService

    settings = load_settings(env={"DRIFTWARDEN_KAFKA__PARTITIONS": "1",
                                  "DRIFTWARDEN_DETECTION__WARMUP": "300",
                                  "DRIFTWARDEN_DETECTION__SLICE_SECONDS": "1",
                                  "DRIFTWARDEN_DETECTION__ALLOWED_LATENESS": "0",
                                  "DRIFTWARDEN_DETECTION__CALIBRATION_SIMS": "20"})
    svc = StreamService(settings, loopback=False, partition=0)
    rng = np.random.default_rng(0)
    recs = [RawMessage(orjson.dumps({"model": "m", "version": "1", "ts": 100 + i / 100,
                                     "features": {"x": float(rng.normal())}}), [],
                       "driftwarden.predictions", 0, i, time.time()) for i in range(800)]
    outs = svc.handle_predictions(recs) + svc.handle_idle(["driftwarden.predictions/0",
                                                           "driftwarden.features/0",
                                                           "driftwarden.labels/0"])
    svc.monotonic = lambda: time.monotonic() + 3600  # every source idle (the worker's timer)
    outs += svc.handle_idle(["driftwarden.predictions/0", "driftwarden.features/0",
                             "driftwarden.labels/0"])
    summaries = [RawMessage(o.value, [], o.topic, 0, i, time.time())
                 for i, o in enumerate(outs) if o.topic == "driftwarden.summaries"]
    published = [o for o in svc.handle_summaries(summaries)
                 if o.topic == "driftwarden.baselines"]
    (monitor,) = svc.monitors.values()
    assert monitor.ready and len(published) == 1
    body = msgspec.msgpack.decode(published[0].value)
    assert fingerprint(Baseline.from_state(body["baseline"])) == fingerprint(monitor.baseline)


def _partials(baseline, source, t0, t1, seed, time=None):
    """The partials of one source for slices t0 … t1 - 1 (100 rows a slice), closed."""
    rng = np.random.default_rng(seed)
    b = PartialBuilder(baseline, model="m", version="1", source=source, slice_seconds=1.0,
                       time=time or EventTime(0.0))
    ts = np.arange(t0 * 100, t1 * 100) / 100.0
    on_time = b.time.admit(ts) if time is None else np.ones(len(ts), bool)
    n = int(on_time.sum())
    b.add({"x": rng.normal(0, 1, n), "c": rng.choice(["DE", "FR"], n).astype(object),
           "__prediction__": rng.uniform(0, 1, n)}, ts[on_time])
    return b.publish() + b.flush()


def test_a_silent_source_stops_holding_and_its_late_partial_counts_once():
    """Slices wait for an expected source until it is silent for idle_seconds (the stage is
    closed at the wall clock, nothing arriving); its partial for a slice closed meanwhile is
    late: counted in the model's records and late ones, merged nowhere."""
    d = Detection(warmup=300, slices=3, slice_seconds=1.0, allowed_lateness=0.0,
                  calibration_sims=30)
    clocks = SourceClock(5.0), SourceClock(5.0)
    for name in ("p/0", "p/1"):
        clocks[0].expect(name, now=0.0)
    stage = ModelStage(ModelMonitor("m", "1", d), *clocks)
    for p in _partials(None, "p/0", 0, 10, 1):
        stage.add(p, now=1.0)
    clocks[0].see("p/0", 1.0, 10.0, idle=True)
    assert stage.close(now=2.0) == [] and stage.monitor.n_records == 0  # p/1 waited for
    stage.close(now=6.0)  # p/1 silent for 5 s: the ten slices close
    assert stage.monitor.n_records == 1000 and stage.monitor.ready
    late = _partials(None, "p/1", 3, 4, 2)
    for p in late:
        stage.add(p, now=7.0)
    assert stage.data.counts.late == len(late)
    assert (stage.monitor.n_records, stage.monitor.n_late) == (1100, 100)


def test_a_stage_that_lost_its_state_adopts_the_published_baseline():
    """Stage 1 bins with the baseline stage 2 published; a stage 2 that starts afresh (its
    state lost with a broker's data) takes that baseline instead of waiting for warm-up
    records that binned partials do not carry."""
    d = Detection(warmup=300, slices=3, slice_seconds=1.0, allowed_lateness=0.0,
                  calibration_sims=30)
    first = ModelStage(ModelMonitor("m", "1", d), SourceClock(60.0), SourceClock(60.0))
    first.data.clock.expect("p/0", 0.0)
    for p in _partials(None, "p/0", 0, 5, 1):
        first.add(p, now=0.0)
    first.data.clock.see("p/0", 0.0, 5.0)
    first.close(now=0.0)
    base = first.monitor.baseline
    assert base is not None
    binned = _partials(base, "p/0", 5, 10, 2)
    assert all(p.summary is not None for p in binned)
    for known in (None, lambda m, v: base):
        again = ModelStage(ModelMonitor("m", "1", d), SourceClock(60.0), SourceClock(60.0))
        again.known = known
        again.data.clock.expect("p/0", 0.0)
        for p in binned:
            again.add(p, now=0.0)
        again.data.clock.see("p/0", 0.0, 10.0)
        again.close(now=0.0)
        if known is None:  # waits for records that never come
            assert not again.monitor.ready and again.monitor.n_records == 0
        else:
            assert again.monitor.baseline is base and again.monitor.n_records == 500
