"""Topology independence against the real broker (issue 13): the same recorded traffic — two
models, one drifting in its inputs and the other in its error rate, labels included — through
(a) one partition keyed by model and one worker, (b) eight partitions with null keys and one
worker, (c) eight partitions with null keys and three workers, gives the same drift and action
events (event_ids, states, features) and the same final counts."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest
from confluent_kafka import Consumer, Producer
from conftest import get_json

from driftwarden.config import load_settings
from driftwarden.embedded import EmbeddedBroker
from driftwarden.kafka import ensure_topics

SLICES, PER = 40, 150  # one-second slices, records per model and slice
T0 = float(int(time.time()) - 1800)  # event time of the recorded traffic (the same in each run)
ENV = {"DRIFTWARDEN_DETECTION__SLICES": "4", "DRIFTWARDEN_DETECTION__SLICE_SECONDS": "1",
       "DRIFTWARDEN_DETECTION__ALLOWED_LATENESS": "0.5",
       "DRIFTWARDEN_DETECTION__CALIBRATION_SIMS": "60",
       "DRIFTWARDEN_DETECTION__CONCEPT_STEP": "50",
       "DRIFTWARDEN_DETECTION__IDLE_CLOSE_SECONDS": "2",
       "DRIFTWARDEN_DETECTION__SOURCE_IDLE_SECONDS": "40",
       "DRIFTWARDEN_KAFKA__STALL_SECONDS": "8", "DRIFTWARDEN_KAFKA__CHECKPOINT_SECONDS": "1"}


def traffic():
    """(model, record, label) in the producers' order — event time, the two models
    interleaved as requests are: "fraud" drifts in ``amount`` from 24 s, "churn"'s error
    rate rises from ~15 % to ~50 % from 20 s (label time)."""
    rng = np.random.default_rng(11)
    out = []
    for t in range(SLICES):
        for i in range(PER):
            for model in ("fraud", "churn"):
                ts = T0 + t + i / PER
                x = float(rng.normal(1.5 if model == "fraud" and t >= 24 else 0.0, 1.0))
                p = float(1 / (1 + np.exp(-3 * x)))
                truth = int(rng.random() < p)
                if model == "churn" and t >= 20 and rng.random() < 0.5:
                    truth = 1 - truth
                rid = f"{model}-{t}-{i}"
                rec = {"model": model, "version": "1", "id": rid, "ts": round(ts, 6),
                       "features": {"amount": round(x, 6),
                                    "country": str(rng.choice(["DE", "FR", "US"]))},
                       "prediction": round(p, 6)}
                lab = {"model": model, "id": rid, "label": truth, "ts": round(ts + 0.5, 6)}
                out.append((model, orjson.dumps(rec), orjson.dumps(lab)))
    return out


TRAFFIC = traffic()


def _read_all(bootstrap, topics, quiet=3.0):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{time.monotonic_ns()}",
                  "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
    c.subscribe(topics)
    got, last = [], time.monotonic() + 30  # joining the group takes seconds: wait for one
    while time.monotonic() - last < quiet:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got.append((m.topic(), orjson.loads(m.value())))
            last = time.monotonic()
    c.close()
    return got


def _late(port):
    """The worker's counters of what was not merged (for a failure's message)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return [ln for ln in r.read().decode().splitlines() if not ln.startswith("#") and (
            "late" in ln or "sources{" in ln or "mismatched" in ln or "duplicate" in ln)
            and not ln.endswith(" 0.0")]


def run(spawn_worker, tmp_path, partitions: int, workers: int, keyed: bool):
    with EmbeddedBroker() as broker:
        env = {**ENV, "DRIFTWARDEN_KAFKA__PARTITIONS": str(partitions)}
        settings = load_settings(env=env)
        ensure_topics(settings, bootstrap_servers=broker.bootstrap_servers)
        p = Producer({"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 20})
        for model, rec, _ in TRAFFIC:  # everything recorded first, then the workers start
            p.produce("driftwarden.predictions", key=model.encode() if keyed else None,
                      value=rec)
            p.poll(0)
        for model, _, lab in TRAFFIC:
            p.produce("driftwarden.labels", key=model.encode() if keyed else None, value=lab)
            p.poll(0)
        assert p.flush(30) == 0
        procs = [spawn_worker(broker.bootstrap_servers, env, warmup=1000)
                 for _ in range(workers)]
        ports = [port for _, port, _ in procs]

        seen: list = []

        def counts():
            status = [(port, m) for port in ports for m in get_json(port, "/models") or []]
            out = {m["model"]: (m["records"], m["outcomes"], m["late"]) for _, m in status}
            # which worker shows which model: one place decides per model
            seen[:] = [out, [(port, m["model"], m["records"]) for port, m in status]]
            return out if len(status) == 2 and all(
                v[:2] == (SLICES * PER, SLICES * PER) for v in out.values()) else None

        try:
            deadline = time.monotonic() + 150
            while not (final := counts()):
                assert time.monotonic() < deadline, (seen, [_late(port) for port in ports])
                time.sleep(0.5)
            got = _read_all(broker.bootstrap_servers,
                            ["driftwarden.drift", "driftwarden.actions"])
        finally:  # while their broker is there: stopping flushes what they hold
            for proc, _, _ in procs:
                proc.terminate()
            for proc, _, _ in procs:
                proc.wait(30)
        for _, _, log in procs:
            assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    events = {(e["event_id"], e["model"], e["kind"], e["state"], tuple(e["features"]))
              for t, e in got if t == "driftwarden.drift"}
    actions = {(a["event_id"], a["model"], a["action"]) for t, a in got
               if t == "driftwarden.actions"}
    return events, actions, final


@pytest.fixture(scope="module")
def single(spawn_worker_module, tmp_path_factory):
    return run(spawn_worker_module, tmp_path_factory.mktemp("a"), 1, 1, keyed=True)


def test_one_partition_keyed_by_model_sees_both_drifts(single):
    events, actions, final = single
    kinds = {(m, k, s) for _, m, k, s, _ in events}
    assert ("fraud", "data", "onset") in kinds and ("churn", "concept", "onset") in kinds
    assert not any(m == "churn" and k == "data" for _, m, k, _, _ in events)
    assert actions and final == {"fraud": (SLICES * PER, SLICES * PER, 0),
                                 "churn": (SLICES * PER, SLICES * PER, 0)}


@pytest.mark.parametrize("workers", [1, 3])
def test_eight_partitions_null_keys_give_the_same_events(single, spawn_worker_module,
                                                         tmp_path_factory, workers):
    got = run(spawn_worker_module, tmp_path_factory.mktemp("b"), 8, workers, keyed=False)
    assert got == single
