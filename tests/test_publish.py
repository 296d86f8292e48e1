"""``driftwarden publish`` (driftwarden/publish.py): a batch job's file as partial summaries.

In process: the merge stage given a file's partials monitors every row once (records,
outcomes and correct predictions counted independently of the code under test), sees the
drifts the file holds, and does not depend on the rows' order in the file, on the file being
cut at a slice boundary into two jobs, or on the same file being published twice (the repeat
is recognised). Against the real broker: a worker's model shows a published file's records
and its drift, and a second publish of the same file changes nothing."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import time

import numpy as np
import orjson
import pytest
from conftest import get_json, wait_for

from driftwarden.batch import fit_baseline_file
from driftwarden.config import Detection, Limits, load_settings
from driftwarden.partials import Partial, SourceClock, Watermark, decode, encode
from driftwarden.publish import checked_rows, file_messages, source_name
from driftwarden.stream.merge import MergeStage
from driftwarden.stream.monitor import ModelMonitor

D = Detection(warmup=600, slices=4, slice_seconds=1.0, allowed_lateness=0.0,
              calibration_sims=60, concept_step=50)
SLICES, PER = 30, 150
T0 = 1_700_000_000.0


def file_rows(seed: int = 5):
    """A nightly file of two models: "a" drifts in ``x`` from slice 16 and its error rate
    rises from 5 % to 45 % from slice 14; "b" is stable. Labels on 80 % of the rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(SLICES):
        for i in range(PER):
            for model in ("a", "b"):
                x = float(rng.normal(1.5 if model == "a" and t >= 16 else 0.0, 1.0))
                p = float(rng.uniform(0, 1))
                truth = int(p >= 0.5)
                if rng.uniform() < (0.45 if model == "a" and t >= 14 else 0.05):
                    truth = 1 - truth
                row = {"model": model, "id": f"{model}-{t}-{i}", "ts": T0 + t + i / PER,
                       "x": x, "c": str(rng.choice(["DE", "FR", "US"])), "prediction": p}
                if rng.uniform() < 0.8:
                    row["label"] = truth
                rows.append(row)
    return rows


ROWS = file_rows()


def expected_counts(rows):
    """Records, outcomes and correct predictions per model, counted here."""
    out = {}
    for m in ("a", "b"):
        mine = [r for r in rows if r["model"] == m]
        labelled = [r for r in mine if "label" in r]
        correct = sum(int(r["prediction"] >= 0.5) == r["label"] for r in labelled)
        out[m] = (len(mine), len(labelled), correct)
    return out


def messages(rows, source="batch:n", baseline=None, seed=0):
    groups = checked_rows(rows, limits=Limits(), now=T0 + 3600)
    return file_messages(groups, source=source, slice_seconds=1.0, seed=seed,
                         baseline=lambda m, v: baseline)


def merge(*jobs, baseline=None, seed=0):
    """Each job (name, rows) through file_messages, the messages of all jobs through one
    merge stage in job order (through the codec); events and counts."""
    stage = MergeStage(lambda m, v, ts: ModelMonitor(m, v, D, baseline=baseline),
                       idle_seconds=1e9)
    events = []
    for name, rows in jobs:
        for _, msg in messages(rows, source_name(name), baseline, seed):
            events += stage.handle(encode(msg, binary=True), now=0.0)
    events += stage.idle(now=0.0, quiet_before=0.0)  # every source said it is done
    counts = {m: (s.monitor.n_records, s.monitor.n_outcomes, s.monitor.outcomes.n_correct)
              for (m, _), s in stage.stages.items()}
    dupes = sum(s.data.counts.duplicates + s.outcomes.counts.duplicates
                for s in stage.stages.values())
    return sorted((e["model"], e["event_id"], e["kind"], e["state"], tuple(e["features"]))
                  for e in events), counts, dupes


@pytest.fixture(scope="module")
def reference():
    return merge(("nightly", ROWS))


def test_every_row_counts_once_and_the_drifts_in_the_file_are_seen(reference):
    events, counts, dupes = reference
    assert counts == expected_counts(ROWS) and dupes == 0
    kinds = {(m, k, s) for m, _, k, s, _ in events}
    assert ("a", "data", "onset") in kinds and ("a", "concept", "onset") in kinds
    assert not any(m == "b" for m, *_ in events)
    assert all(f == ("x",) for m, _, k, _, f in events if k == "data")


def test_row_order_cuts_and_a_second_publish_change_nothing(reference):
    shuffled = ROWS[:]
    random.Random(3).shuffle(shuffled)
    assert merge(("nightly", shuffled))[:2] == reference[:2]
    # two jobs cut at a slice boundary: two sources, the same windows
    cut = T0 + 12
    first = [r for r in ROWS if r["ts"] < cut]
    assert merge(("part-1", first), ("part-2", [r for r in ROWS if r["ts"] >= cut]))[:2] \
        == reference[:2]
    events, counts, dupes = merge(("nightly", ROWS), ("nightly", shuffled))
    assert (events, counts) == reference[:2]
    # every partial of the repeat recognised
    assert dupes == len([1 for _, m in messages(ROWS) if isinstance(m, Partial)])


def test_with_the_baseline_known_partials_are_binned_and_small():
    from driftwarden.detectors.baseline import Baseline

    ref = [r for r in ROWS if r["model"] == "b"][:2000]  # "b" is stable: a fair reference
    fitted = Baseline.fit({"x": np.array([r["x"] for r in ref]),
                           "c": np.array([r["c"] for r in ref], dtype=object)}, bins=10)
    msgs = messages(ROWS, baseline=fitted)
    parts = [m for _, m in msgs if isinstance(m, Partial) and m.kind == "data"]
    assert parts and all(p.records is None and p.summary is not None for p in parts)
    assert sum(p.rows for p in parts) == len(ROWS)
    raw = sum(len(encode(m, binary=True)) for _, m in messages(ROWS)
              if isinstance(m, Partial) and m.kind == "data")
    assert sum(len(encode(p, binary=True)) for p in parts) < raw
    events, counts, _ = merge(("nightly", ROWS), baseline=fitted)
    assert counts == expected_counts(ROWS)
    assert ("a", "data", "onset") in {(m, k, s) for m, _, k, s, _ in events}


def test_the_last_messages_say_the_source_is_done():
    msgs = messages(ROWS)
    ends = [m for _, m in msgs if isinstance(m, Watermark)]
    assert {(m.kind, m.idle) for m in ends} == {("data", True), ("outcomes", True)}
    assert all(isinstance(m, Watermark) for _, m in msgs[-len(ends):])
    assert max(m.watermark for m in ends) >= T0 + SLICES  # past the last slice
    clock = SourceClock(1e9)
    for _, m in msgs:
        if isinstance(m, Watermark) and m.kind == "data":
            clock.see(m.source, 0.0, m.watermark, m.idle)
    assert clock.state("batch:n", 0.0) == "idle"


@pytest.mark.parametrize("bad, says", [
    ({"x": {"deep": [1]}}, "row 1: feature 'x' is an object"),
    ({"x": 1.0, "ts": "5000-01-01T00:00:00Z"}, "row 1: timestamp"),
    ({"x": "é" * 5000}, "row 1: feature 'x': a string of 5000 characters"),
])
def test_a_bad_row_stops_the_publish_with_one_line_before_anything_is_sent(
        tmp_path, bad, says):
    f = tmp_path / "scores.jsonl"
    f.write_text("\n".join(orjson.dumps(r).decode() for r in [
        {"x": 0.5, "ts": T0}, {**bad}]) + "\n")
    r = subprocess.run([sys.executable, "-m", "driftwarden.cli", "publish", str(f),
                        "--model", "m", "--bootstrap-servers", "127.0.0.1:1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], r.stderr


def test_a_published_file_shows_in_the_workers_windows_once(spawn_worker, tmp_path):
    from driftwarden.embedded import EmbeddedBroker
    from driftwarden.kafka import ensure_topics

    rng = np.random.default_rng(9)
    ref = tmp_path / "reference.csv"
    ref.write_text("x,c\n" + "".join(f"{rng.normal():.6f},{rng.choice(['DE', 'FR', 'US'])}\n"
                                     for _ in range(3000)))
    now = math.floor(time.time())
    night = tmp_path / "scores-2026-11-28.jsonl"  # 30 slices of "a" (drifting), none late
    t0 = now - 600
    night.write_text("".join(orjson.dumps({**r, "ts": r["ts"] - T0 + t0}).decode() + "\n"
                             for r in ROWS if r["model"] == "a"))
    n = sum(1 for r in ROWS if r["model"] == "a")
    env = {"DRIFTWARDEN_DETECTION__SLICES": "4", "DRIFTWARDEN_DETECTION__SLICE_SECONDS": "1",
           "DRIFTWARDEN_DETECTION__CALIBRATION_SIMS": "60",
           "DRIFTWARDEN_DETECTION__CONCEPT_STEP": "50",
           "DRIFTWARDEN_DETECTION__IDLE_CLOSE_SECONDS": "2",
           # the stream's joins partitions never carry an outcome here: the merge stage waits
           # for them this long before it closes the file's outcome slices
           "DRIFTWARDEN_DETECTION__SOURCE_IDLE_SECONDS": "5",
           "DRIFTWARDEN_KAFKA__STALL_SECONDS": "8",
           "DRIFTWARDEN_MODELS__A__BASELINE": str(ref)}
    settings = load_settings(env=env)
    assert fit_baseline_file(str(ref), settings.detection) is not None
    with EmbeddedBroker() as broker:
        ensure_topics(settings, bootstrap_servers=broker.bootstrap_servers)
        proc, port, log = spawn_worker(broker.bootstrap_servers, env)
        try:
            wait_for("the worker", lambda: get_json(port, "/models") is not None, timeout=60)

            def publish():
                r = subprocess.run([sys.executable, "-m", "driftwarden.cli", "publish",
                                    str(night), "--bootstrap-servers",
                                    broker.bootstrap_servers],
                                   capture_output=True, text=True, timeout=120,
                                   env={**__import__("os").environ, **env})
                assert r.returncode == 0, r.stderr
                return r.stdout

            out = publish()
            assert f"published {n} records" in out and "batch:scores-2026-11-28" in out
            assert "as records" not in out  # binned over the configured baseline
            labelled = sum(1 for r in ROWS if r["model"] == "a" and "label" in r)
            status = wait_for("the file's records and outcomes merged", lambda: (
                (s := get_json(port, "/models")) and s[0]["records"] == n
                and s[0]["outcomes"] == labelled and s),
                timeout=90, show=lambda: get_json(port, "/models"))
            assert status[0]["model"] == "a" and status[0]["late"] == 0
            drift = wait_for("a drift verdict on the published file", lambda: [
                v for v in get_json(port, "/verdicts") or [] if v.get("drift")], timeout=60,
                show=lambda: get_json(port, "/verdicts"))
            assert drift[0]["model"] == "a"
            publish()  # the same file again: recognised, nothing counted twice
            time.sleep(3)
            assert [s["records"] for s in get_json(port, "/models")] == [n]
            # a quiet summaries partition that gets a burst is not "stalled" (it was, at once)
            assert get_json(port, "/health")["status"] == "ok"
        finally:
            proc.terminate()
            proc.wait(30)
    assert "Traceback" not in log.read_text()


def test_decoded_partials_keep_their_identity():
    msgs = messages(ROWS[:500])
    assert all(decode(encode(m, binary=True)) == m for _, m in msgs)
