"""Topology independence against the real broker (issue 13): the same recorded traffic — two
models, one drifting in its inputs and the other in its error rate, labels included — through
(a) one partition keyed by model and one worker, (b) eight partitions with null keys and one
worker, (c) eight partitions with null keys and three workers, gives the same drift and action
events (event_ids, states, features) and the same final counts; and so does (d) three workers
on eight partitions while the group changes five times mid-stream — a worker killed with
SIGKILL, a new one joining, twice each, then one more killed."""

from __future__ import annotations

import signal
import threading
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


def produce(bootstrap, keyed: bool, seconds: float = 0.0) -> None:
    """The recorded traffic: all at once, predictions then labels (``seconds`` 0), or paced
    over ``seconds``, each slice's labels after its predictions, in small bursts (a partition
    never waits long enough for the worker to take it as idle)."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})

    def send(topic, model, value):
        p.produce(topic, key=model.encode() if keyed else None, value=value)
        p.poll(0)

    if not seconds:
        for model, rec, _ in TRAFFIC:
            send("driftwarden.predictions", model, rec)
        for model, _, lab in TRAFFIC:
            send("driftwarden.labels", model, lab)
    else:
        start, per_slice, burst = time.monotonic(), 2 * PER, 20
        for t in range(SLICES):
            chunk = TRAFFIC[t * per_slice:(t + 1) * per_slice]
            for j in range(0, per_slice, burst):
                for model, rec, _ in chunk[j:j + burst]:
                    send("driftwarden.predictions", model, rec)
                due = start + (t + j / per_slice / 2) * seconds / SLICES
                time.sleep(max(0.0, due - time.monotonic()))
            for j in range(0, per_slice, burst):
                for model, _, lab in chunk[j:j + burst]:
                    send("driftwarden.labels", model, lab)
                due = start + (t + 0.5 + j / per_slice / 2) * seconds / SLICES
                time.sleep(max(0.0, due - time.monotonic()))
    assert p.flush(30) == 0


class Membership:
    """Five changes of the consumer group while the traffic is produced: every ``every``
    seconds the oldest worker is killed with SIGKILL or a new one joins, in turn."""

    def __init__(self, spawn, bootstrap, env, procs, every: float) -> None:
        self.spawn, self.bootstrap, self.env, self.procs = spawn, bootstrap, env, procs
        self.every = every
        self.done: list[str] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            for i in range(5):
                time.sleep(self.every)
                if i % 2 == 0:
                    proc, port, _ = self.procs.pop(0)
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(10)
                    self.done.append(f"killed {port}")
                else:
                    self.procs.append(self.spawn(self.bootstrap, self.env, warmup=1000))
                    self.done.append(f"joined {self.procs[-1][1]}")
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def run(spawn_worker, tmp_path, partitions: int, workers: int, keyed: bool,
        changes: bool = False):
    with EmbeddedBroker() as broker:
        env = {**ENV, "DRIFTWARDEN_KAFKA__PARTITIONS": str(partitions)}
        if changes:  # a producer thread on a loaded machine pauses: not for an idle producer
            env["DRIFTWARDEN_DETECTION__IDLE_CLOSE_SECONDS"] = "10"
        settings = load_settings(env=env)
        ensure_topics(settings, bootstrap_servers=broker.bootstrap_servers)
        if not changes:  # everything recorded first, then the workers start
            produce(broker.bootstrap_servers, keyed)
        procs = [spawn_worker(broker.bootstrap_servers, env, warmup=1000)
                 for _ in range(workers)]
        if changes:  # the traffic comes while the group changes under it
            feed = threading.Thread(target=produce, args=(broker.bootstrap_servers, keyed,
                                                          60.0), daemon=True)
            group = Membership(spawn_worker, broker.bootstrap_servers, env, procs, every=10.0)
            feed.start()
            group.thread.start()
            group.thread.join(120)
            feed.join(120)
            assert group.error is None and len(group.done) == 5, (group.error, group.done)
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
            # five failovers restore every shard several times: give them time to settle
            deadline = time.monotonic() + (240 if changes else 150)
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
        for _, _, log in procs:  # (the survivors)
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


def test_five_group_changes_mid_stream_change_nothing(single, spawn_worker_module,
                                                     tmp_path_factory):
    """Every record counted once, one worker deciding per model at the end (``counts``), no
    action with a second event_id and the verdicts of the uninterrupted run."""
    got = run(spawn_worker_module, tmp_path_factory.mktemp("d"), 8, 3, keyed=False,
              changes=True)
    assert got == single
