"""Sliding and tumbling windows: sliding equals recomputing, event time, lateness."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftwarden.detectors.summary import CategoricalSpec, NumericSpec, Summary
from driftwarden.detectors.window import SlidingWindow, tumbling_window
from driftwarden.errors import ValidationError

SPECS = {"x": NumericSpec.fit("x", np.arange(100.0)),
         "c": CategoricalSpec.fit("c", ["a", "b"])}


def factory():
    return Summary.empty(SPECS, reservoir_size=32)


def batch(rng, n, t0, span):
    ts = np.sort(t0 + rng.random(n) * span)
    return {"x": rng.normal(50, 30, n), "c": rng.choice(["a", "b", "z"], n)}, ts


def assert_same(a: Summary, b: Summary):
    assert a.n_rows == b.n_rows
    for name in SPECS:
        assert a.features[name].counts.tolist() == b.features[name].counts.tolist()
    x, y = a.features["x"], b.features["x"]
    assert x.s1 == pytest.approx(y.s1, abs=1e-6) and x.s2 == pytest.approx(y.s2, abs=1e-6)
    assert (x.min, x.max) == (y.min, y.max)
    assert x.reservoir.n_seen == y.reservoir.n_seen


@given(st.lists(st.integers(0, 40), min_size=1, max_size=40), st.integers(1, 6),
       st.integers(0, 2**31))
def test_sliding_equals_recomputing(sizes, slices, seed):
    rng = np.random.default_rng(seed)
    w = SlidingWindow(factory, slices=slices, slice_seconds=2.0)
    t = 0.0
    all_rows = []
    for n in sizes:
        cols, ts = batch(rng, n, t, 1.5)
        all_rows.append((cols, ts))
        w.add(cols, ts=ts)
        t += 1.5
    assert_same(w.summary(), w.recompute())
    # and equal to one summary over exactly the rows of the live slices
    if w.last_closed is not None:
        lo = (w.last_closed - slices + 1) * 2.0
        hi = (w.last_closed + 1) * 2.0
        direct = factory()
        for cols, ts in all_rows:
            keep = (ts >= lo) & (ts < hi)
            direct.update_columns({k: v[keep] for k, v in cols.items()}, n_rows=int(keep.sum()))
        s = w.summary()
        assert s.n_rows == direct.n_rows
        assert s.features["x"].counts.tolist() == direct.features["x"].counts.tolist()


def test_event_time_closes_slices_and_counts_late_events():
    w = SlidingWindow(factory, slices=3, slice_seconds=10.0, allowed_lateness=5.0)
    r = w.add({"x": np.array([1.0, 2.0]), "c": np.array(["a", "a"])}, ts=np.array([1.0, 12.0]))
    assert r.closed == [] and r.accepted == 2  # watermark 7: nothing closed yet
    r = w.add({"x": np.array([3.0]), "c": np.array(["b"])}, ts=np.array([8.0]))
    assert r.late == 0  # 8 >= watermark 7: placed in slice 0, within the allowed lateness
    r = w.add({"x": np.array([4.0]), "c": np.array(["b"])}, ts=np.array([16.0]))
    assert r.closed == [0]  # watermark 11 passed the end of slice 0
    assert w.summary().n_rows == 2
    r = w.add({"x": np.array([5.0, 6.0]), "c": np.array(["a", "a"])}, ts=np.array([9.0, 17.0]))
    assert (r.late, r.accepted) == (1, 1) and w.late_rows == 1  # slice 0 had closed
    assert w.summary().n_rows == 2  # the late row was not merged


def test_out_of_order_batches_give_the_same_window_as_sorted_ones():
    rng = np.random.default_rng(7)
    cols, ts = batch(rng, 500, 0.0, 100.0)
    sorted_w = SlidingWindow(factory, slices=4, slice_seconds=10.0, allowed_lateness=5.0)
    shuffled_w = SlidingWindow(factory, slices=4, slice_seconds=10.0, allowed_lateness=5.0)
    for i in range(0, 500, 50):
        sorted_w.add({k: v[i:i + 50] for k, v in cols.items()}, ts=ts[i:i + 50])
    # out of order by less than the allowed lateness: order by ts + jitter in [0, 4.9)
    order = np.argsort(ts + rng.random(500) * 4.9)
    assert (np.maximum.accumulate(ts[order]) - ts[order]).max() > 3  # really out of order
    for i in range(0, 500, 50):
        perm = order[i:i + 50]
        shuffled_w.add({k: v[perm] for k, v in cols.items()}, ts=ts[perm])
    assert shuffled_w.late_rows == 0
    assert_same(sorted_w.summary(), shuffled_w.summary())


def _closes(w, cols, ts, cuts):
    """Feed the rows in pieces cut at ``cuts``; what the window held at each close."""
    seen = []
    def on_close(sid):
        s = w.summary()
        seen.append((sid, s.n_rows, s.features["x"].counts.tolist(), s.features["x"].s1))
    bounds = [0, *sorted(set(cuts)), len(ts)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        w.add({k: v[a:b] for k, v in cols.items()}, ts=ts[a:b], on_close=on_close)
    return seen, w.late_rows


@given(st.integers(1, 300), st.lists(st.integers(0, 300), max_size=8),
       st.integers(1, 5), st.floats(0.0, 12.0), st.integers(0, 2**31))
def test_a_batch_behaves_like_its_rows_one_at_a_time(n, cuts, slices, lateness, seed):
    # the window a slice closes on, and which rows are late, do not depend on how the stream
    # was cut into batches (a consumer catching up reads many slices in one batch)
    rng = np.random.default_rng(seed)
    cols, ts = batch(rng, n, 0.0, 100.0)
    ts = ts + rng.random(n) * 8 - 4  # disorder: some rows late, some within the lateness
    ts[rng.random(n) < 0.03] = np.nan
    make = lambda: SlidingWindow(factory, slices=slices, slice_seconds=5.0,  # noqa: E731
                                 allowed_lateness=lateness)
    one_by_one = _closes(make(), cols, ts, range(1, n))
    in_batches = _closes(make(), cols, ts, [c for c in cuts if 0 < c < n])
    assert in_batches[1] == one_by_one[1]  # the same rows late
    assert len(in_batches[0]) == len(one_by_one[0])
    for got, want in zip(in_batches[0], one_by_one[0]):
        assert got[:3] == want[:3] and got[3] == pytest.approx(want[3], abs=1e-6)
    assert [c[0] for c in one_by_one[0]] == sorted(c[0] for c in one_by_one[0])


def test_count_window_and_tumbling_window():
    w = SlidingWindow(factory, slices=2, slice_rows=10)
    closed = []
    for _ in range(7):
        closed += w.add({"x": np.ones(4), "c": np.array(["a"] * 4)}).closed
    assert closed == [0, 1]  # 28 rows: slices 0 and 1 full, slice 2 open
    assert w.summary().n_rows == 20 and w.fill_ratio == 1.0
    t = tumbling_window(factory, size_rows=5)
    out = [t.add({"x": np.ones(5), "c": np.array(["a"] * 5)}).closed for _ in range(3)]
    assert out == [[0], [1], [2]] and t.summary().n_rows == 5


def test_window_state_round_trips():
    rng = np.random.default_rng(8)
    w = SlidingWindow(factory, slices=3, slice_seconds=5.0, allowed_lateness=2.0)
    for k in range(10):
        cols, ts = batch(rng, 30, k * 3.0, 3.0)
        w.add(cols, ts=ts)
    state = orjson.loads(orjson.dumps(w.to_state()))
    back = SlidingWindow.from_state(factory, state, lambda s: Summary.from_state(SPECS, s))
    assert_same(back.summary(), w.summary())
    cols, ts = batch(rng, 30, 40.0, 3.0)
    assert back.add(cols, ts=ts) == w.add(cols, ts=ts)
    assert_same(back.summary(), w.summary())


def test_bad_window_parameters_raise_at_construction():
    with pytest.raises(ValidationError, match="exactly one"):
        SlidingWindow(factory, slices=3)
    with pytest.raises(ValidationError, match="slices"):
        SlidingWindow(factory, slices=0, slice_rows=3)
    w = SlidingWindow(factory, slice_seconds=1.0)
    with pytest.raises(ValidationError, match="ts"):
        w.add({"x": np.ones(2)})
