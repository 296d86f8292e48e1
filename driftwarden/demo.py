"""``driftwarden demo``: the whole service on one machine, with no configuration.

Starts an embedded Tansu broker on a free loopback port, creates the topics, starts a worker
(``driftwarden worker`` in a child process) and a traffic generator for two models:

* ``fraud`` v1 — inputs ``amount``, ``country``, ``hour``; from 40 % of the duration on, the
  amount grows by 1.2 standard deviations and a new country appears (**data drift** → a drift
  event, then ``review`` / ``retrain`` actions). Its v2 runs in **shadow** on the same requests
  (same ids; labels two seconds later): a better model, **promoted** by the ``fraud-v2``
  rollout once the evidence says it is no worse than v1;
* ``churn`` v1 — from 30 % of the duration on, v2 is rolled out as a **10 % canary**
  (``churn-v2``); labels
  follow each prediction two seconds later. From 60 % of the duration on the world changes:
  half of the customers no longer behave as the models expect (**concept drift**), and
  customers on a monthly plan, about whom v2 learnt the opposite of v1, now churn — v2
  gets worse than v1 on the same traffic, the rollout ends in **rollback** with its evidence,
  and the canary stops (v2 would have taken all traffic only on a ``promote``).

A live view (rich) shows the verdicts and action events as the worker publishes them.
``--duration`` ends the traffic; the demo then waits until the worker has consumed everything
produced and every event has been read (however busy the machine), prints every event, and
exits non-zero when an injected drift was not reported. Ctrl-C ends it cleanly. Nothing is
left running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from driftwarden.embedded import EmbeddedBroker, free_port

CHURN_V2_AT = 6.0
CANARY_SHARE = 0.10
ROLLOUTS = """
[rollouts.churn-v2]
model = "churn"
baseline = "1"
candidates = ["2"]
strategy = "canary"
min_samples = 300

[rollouts.fraud-v2]
model = "fraud"
baseline = "1"
candidates = ["2"]
strategy = "shadow"
min_samples = 300
min_seconds = 10
"""
DRAIN_SECONDS = 180.0  # the longest the demo waits for a busy worker to catch up
OUTCOMES_STEADY_SECONDS = 15.0  # outcomes not growing for this long: the labels are in
QUIET = {"log.connection.close": False}  # the broker stopping at the end is not news
SETTINGS_ENV = {
    "DRIFTWARDEN_DETECTION__SLICES": "5",
    "DRIFTWARDEN_DETECTION__SLICE_SECONDS": "2",
    "DRIFTWARDEN_DETECTION__ALLOWED_LATENESS": "1",
    "DRIFTWARDEN_DETECTION__CALIBRATION_SIMS": "100",
    "DRIFTWARDEN_DETECTION__LABEL_GRACE": "10",
}


class Generator(threading.Thread):
    """Produces the two models' traffic in event time that follows the wall clock."""

    def __init__(self, bootstrap: str, rate: int, t0: float, data_drift_at: float,
                 concept_drift_at: float, seed: int = 7, canary_at: float = CHURN_V2_AT
                 ) -> None:
        super().__init__(daemon=True, name="traffic")
        from confluent_kafka import Producer

        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, **QUIET})
        self.data_drift_at = data_drift_at
        self.canary_at = canary_at  # churn v2's canary starts (seconds after t0)
        self.concept_drift_at = concept_drift_at
        self.rate = rate
        self.t0 = t0
        self.rng = np.random.default_rng(seed)
        self.stop_event = threading.Event()
        self.sent = {"fraud": 0, "churn": 0, "labels": 0}
        self.requests = {"fraud": 0, "churn": 0}
        self.outcomes_expected = 0
        self.canary = {"1": 0, "2": 0}  # churn records per version
        # the rollout's verdict on churn v2, once the event reader has seen it: "rollback"
        # ends the canary, "promote" gives v2 all traffic
        self.churn_verdict: str | None = None
        self._labels: list[tuple[float, str, bytes]] = []

    def run(self) -> None:
        step = 0.1
        n = max(1, int(self.rate * step))
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            now = time.time()
            elapsed = now - self.t0
            for i in range(n):
                ts = now + i * step / n
                self._fraud(ts, elapsed)
                self._churn(ts, elapsed)
            due = [(m, v) for at, m, v in self._labels if at <= now]
            self._labels = [x for x in self._labels if x[0] > now]
            for model, v in due:
                self.producer.produce("driftwarden.labels", key=model.encode(), value=v)
                self.sent["labels"] += 1
                # each label joins one outcome per version that scored its request
                self.outcomes_expected += 2 if model == "fraud" else 1
            self.producer.poll(0)
            next_at += step
            self.stop_event.wait(max(0.0, next_at - time.monotonic()))
        self.producer.flush(10)
        self.producer = None  # type: ignore[assignment]  # destroyed now, not at broker stop

    def _send(self, model: str, rec: dict[str, Any]) -> None:
        self.producer.produce("driftwarden.predictions", key=model.encode(),
                              value=orjson.dumps(rec))
        self.sent[model] += 1

    def _label(self, model: str, rid: str, label: int, ts: float) -> None:
        self._labels.append((ts + 2.0, model, orjson.dumps(
            {"model": model, "id": rid, "label": label, "ts": ts + 2.0})))

    def _fraud(self, ts: float, elapsed: float) -> None:
        drift = elapsed >= self.data_drift_at
        amount = float(self.rng.lognormal(3.0 + (0.8 if drift else 0.0), 0.7))
        country = str(self.rng.choice(["DE", "FR", "ES", "IT", "PL"],
                                      p=[0.2, 0.2, 0.2, 0.2, 0.2] if drift
                                      else [0.3, 0.3, 0.2, 0.2, 0.0]))
        hour = int(self.rng.integers(0, 24))
        score = float(1 / (1 + np.exp(-(0.03 * (amount - 30) - 2))))  # v2: the better model
        noisy = float(np.clip(score + self.rng.normal(0.0, 0.25), 0.0, 1.0))  # v1
        rid = f"f{self.requests['fraud']}"
        self.requests["fraud"] += 1
        features = {"amount": round(amount, 2), "country": country, "hour": hour}
        for version, p in (("1", noisy), ("2", score)):  # v2 in shadow: the same request
            # v2, a larger model, takes about 40 % longer (no draw: the same random stream)
            latency = (8.0 if version == "1" else 12.0) + 0.05 * amount
            self._send("fraud", {"model": "fraud", "version": version, "id": rid, "ts": ts,
                                 "features": features, "prediction": round(p, 4),
                                 "latency_ms": round(latency, 2)})
        self._label("fraud", rid, int(self.rng.random() < score), ts)

    def _churn(self, ts: float, elapsed: float) -> None:
        canary = elapsed >= self.canary_at and self.churn_verdict != "rollback" and (
            self.churn_verdict == "promote" or self.rng.random() < CANARY_SHARE)
        version = "2" if canary else "1"
        tenure = float(self.rng.exponential(24))
        calls = int(self.rng.poisson(2))
        monthly = bool(self.rng.random() < 0.3)
        z = 1.5 - 0.08 * tenure + 0.4 * calls
        p = float(1 / (1 + np.exp(-z)))
        truth = p
        if monthly:  # a toss-up for both versions, which learnt it the opposite ways
            truth, p = 0.5, (0.7 if version == "1" else 0.3)
        changed = elapsed >= self.concept_drift_at
        if changed and monthly:
            truth = 0.95  # a price rise: monthly customers now churn (v1 was right, v2 wrong)
        rid = f"c{self.requests['churn']}"
        self.requests["churn"] += 1
        self.canary[version] += 1
        self._send("churn", {"model": "churn", "version": version, "id": rid, "ts": ts,
                             "features": {"tenure_months": round(tenure, 1),
                                          "support_calls": calls},
                             "prediction": round(p, 4), "latency_ms": 4.0 + 0.5 * calls})
        churned = self.rng.random() < truth
        if changed and not monthly and self.rng.random() < 0.5:
            churned = not churned  # the world changed: the model's relation no longer holds
        self._label("churn", rid, int(churned), ts)


class EventReader(threading.Thread):
    """Reads drift and action events as the worker publishes them."""

    def __init__(self, bootstrap: str, on_event: Callable[[str, dict[str, Any]], None]) -> None:
        super().__init__(daemon=True, name="events")
        from confluent_kafka import Consumer

        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "driftwarden-demo",
                                  "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
                                  **QUIET})
        self.consumer.subscribe(["driftwarden.drift", "driftwarden.actions"])
        self.on_event = on_event
        self.stop_event = threading.Event()

        self.read: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset

    def run(self) -> None:
        while not self.stop_event.is_set():
            m = self.consumer.poll(0.3)
            if m is not None and m.error() is None and m.value() is not None:
                self.on_event(str(m.topic()), orjson.loads(m.value() or b"null"))
                self.read[(str(m.topic()), int(m.partition() or 0))] = int(m.offset() or 0) + 1
        self.consumer.close()

    def caught_up(self, bootstrap: str) -> bool:
        """Whether every event published so far has been read."""
        from confluent_kafka import Consumer, TopicPartition

        probe = Consumer({"bootstrap.servers": bootstrap, "group.id": "driftwarden-demo-probe",
                          **QUIET})
        try:
            for topic in ("driftwarden.drift", "driftwarden.actions"):
                meta = probe.list_topics(topic, timeout=5).topics[topic]
                for p in meta.partitions:
                    low, high = probe.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
                    if high > max(low, self.read.get((topic, p), low)):
                        return False
            return True
        finally:
            probe.close()


def _describe(topic: str, e: dict[str, Any], t0: float) -> str:
    at = f"t={e['ts'] - t0:5.1f}s"
    if topic == "driftwarden.actions":
        target = f" → v{e['target_version']}" if e.get("target_version") else ""
        return (f"{at}  ACTION {e['action'].upper()}{target}  {e['model']} v{e['version']}: "
                f"{e['reason']}")
    feats = ", ".join(e["features"])
    return (f"{at}  {e['kind']} drift {e['state'].upper()} ({e['severity']})  "
            f"{e['model']} v{e['version']}" + (f": {feats}" if feats else ""))


def run_demo(duration: float = 75.0, rate: int = 1000, *, as_json: bool = False,
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo; returns what happened (events, actions, counts)."""
    from driftwarden.config import load_settings
    from driftwarden.kafka import ensure_topics
    from driftwarden.store import database_url

    data_dir = Path(tempfile.mkdtemp(prefix="driftwarden-demo-"))
    events: list[tuple[str, dict[str, Any]]] = []
    lock = threading.Lock()
    with EmbeddedBroker(log_path=data_dir / "broker.log") as broker:
        env = {**os.environ, **SETTINGS_ENV, "DRIFTWARDEN_DATA_DIR": str(data_dir),
               "DRIFTWARDEN_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
               # incidents and actions go to the user's store (the SQLite file in
               # ./.driftwarden by default), where `driftwarden incidents list` finds them
               "DRIFTWARDEN_DATABASE_URL": database_url(load_settings())}
        ensure_topics(load_settings(env={k: v for k, v in env.items()
                                         if k.startswith("DRIFTWARDEN_")}))
        port = free_port()
        log = (data_dir / "worker.log").open("wb")
        config = data_dir / "rollouts.toml"
        config.write_text(ROLLOUTS, encoding="utf-8")
        worker = subprocess.Popen(
            [sys.executable, "-m", "driftwarden.cli", "worker", "--warmup", "3000",
             "--config", str(config), "--web-port", str(port), "--session-timeout", "6"],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        gen = reader = None
        status: Any = None
        rollouts: Any = []
        rollout_metrics: list[dict[str, Any]] = []
        t0 = time.time()
        try:
            _wait_healthy(port, worker, 60.0)
            t0 = time.time()
            data_at, concept_at = 0.4 * duration, 0.6 * duration
            canary_at = 0.3 * duration  # enough v2 outcomes for its reference error rate
            gen = Generator(broker.bootstrap_servers, rate, t0, data_at, concept_at,
                            canary_at=canary_at)

            def on_event(topic: str, e: dict[str, Any]) -> None:
                with lock:
                    events.append((topic, e))
                rollout = e.get("rollout") if topic == "driftwarden.actions" else None
                if gen is not None and rollout and e["model"] == "churn":
                    gen.churn_verdict = rollout["verdict"]  # the canary follows the verdict
                if not as_json:
                    echo(_describe(topic, e, t0))

            reader = EventReader(broker.bootstrap_servers, on_event)
            if not as_json:
                echo(f"driftwarden demo: broker {broker.bootstrap_servers}, worker on "
                     f"127.0.0.1:{port}; data drift in 'fraud' at t={data_at:.0f}s, "
                     f"concept drift in 'churn' at t={concept_at:.0f}s; rollouts: churn v2 "
                     f"as a {CANARY_SHARE:.0%} canary from t={canary_at:.0f}s, fraud v2 "
                     "in shadow")
            gen.start()
            reader.start()
            end = t0 + duration
            while time.time() < end:
                if worker.poll() is not None:
                    raise RuntimeError(f"the worker exited with code {worker.returncode}; "
                                       f"see {data_dir / 'worker.log'}")
                time.sleep(0.2)
            gen.stop_event.set()
            gen.join(30)
            # on a busy machine the worker may be behind: wait for it (and then for the last
            # events to be read) rather than for a fixed time, saying so on stderr
            status = _drained(port, worker, gen.sent, DRAIN_SECONDS, gen.outcomes_expected)
            _wait(lambda: reader is not None and reader.caught_up(broker.bootstrap_servers),
                  30.0)
        finally:
            for thread in (gen, reader):
                if thread is not None:
                    thread.stop_event.set()
                    thread.join(15)
            if status is None:
                status = _get(port, "/models")
            rollouts = _get(port, "/rollouts")
            rollout_metrics = _rollout_metrics(port)
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(10)
            log.close()
    with lock:
        drift = [e for t, e in events if t == "driftwarden.drift"]
        actions = [e for t, e in events if t == "driftwarden.actions"]
    resolved = resolve_open_incidents(env["DRIFTWARDEN_DATABASE_URL"], drift)
    if resolved and not as_json:
        echo(f"the demo's {len(resolved)} open incident(s) were resolved at its end "
             "(`driftwarden incidents list` shows them with their evidence)")
    return {"t0": t0, "resolved": resolved, "data_drift_at": 0.4 * duration,
            "concept_drift_at": 0.6 * duration,
            "drift_events": drift, "actions": actions, "models": status,
            "rollouts": rollouts, "rollout_metrics": rollout_metrics,
            "canary": dict(gen.canary) if gen else {},
            "produced": dict(gen.sent) if gen else {}, "logs": str(data_dir)}


def run_traffic(bootstrap: str, *, rate: int = 200, drift_after: float = 180.0,
                duration: float = 3600.0, stop: threading.Event | None = None,
                echo: Callable[[str], None] = print) -> dict[str, int]:
    """The demo's traffic against any broker (``driftwarden traffic``, the compose stack's
    traffic service): ``fraud`` and ``churn`` at ``rate`` records/s each, reference traffic
    until ``drift_after`` seconds, then data drift in ``fraud`` and, 50 % later, concept drift
    (with labels) in ``churn`` v2; ends after ``duration`` seconds or when ``stop`` is set.
    Returns what was sent."""
    stop = stop or threading.Event()
    t0 = time.time()
    gen = Generator(bootstrap, rate, t0, drift_after, drift_after * 1.5)
    echo(f"traffic: fraud and churn at {rate} records/s each to {bootstrap}; data drift in "
         f"fraud from t={drift_after:g} s, concept drift in churn v2 from "
         f"t={drift_after * 1.5:g} s; ends at t={duration:g} s")
    gen.start()
    try:
        while not stop.wait(min(60.0, max(0.0, t0 + duration - time.time()))):
            if time.time() >= t0 + duration:
                break
            echo(f"traffic: t={time.time() - t0:.0f} s, sent {dict(gen.sent)}")
    finally:
        gen.stop_event.set()
        gen.join(30)
    echo(f"traffic: done, sent {dict(gen.sent)}")
    return dict(gen.sent)


def resolve_open_incidents(url: str, drift: list[dict[str, Any]]) -> list[str]:
    """Resolve the incidents this demo run opened and did not see recover (its traffic ends,
    its verdicts never will): demo runs do not leave incidents open forever in the store."""
    from driftwarden.store import NotFound, Store

    still_open: dict[str, bool] = {}
    for e in drift:
        still_open[e["incident_id"]] = e["state"] != "recovery"
    ids = [i for i, is_open in still_open.items() if is_open]
    if not ids:
        return []
    done = []
    try:
        store = Store(url)
    except Exception:  # noqa: BLE001 - the store is the user's: leave it as it is
        return []
    try:
        for incident_id in ids:
            try:
                store.resolve_incident(incident_id, actor="demo", note="the demo ended")
            except NotFound:
                continue
            done.append(incident_id)
    finally:
        store.close()
    return done


def _get(port: int, path: str) -> Any:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return json.loads(r.read())
    except OSError:
        return []


def _rollout_metrics(port: int) -> list[dict[str, Any]]:
    """The worker's ``driftwarden_rollout_*`` samples (name, labels, value) from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return []
    return [{"name": smp.name, "labels": dict(smp.labels), "value": smp.value}
            for fam in text_string_to_metric_families(text)
            if fam.name.startswith("driftwarden_rollout_") for smp in fam.samples]


def _drained(port: int, proc: subprocess.Popen[bytes], sent: dict[str, int],
             timeout: float, outcomes_expected: int | None = None) -> Any:
    """The worker's model status once it has merged every record produced and every joined
    outcome expected (``outcomes_expected``; default one per label) — or, once the records
    are in, the count of outcomes has not grown for a few seconds (a concept drift is decided
    on merged outcomes, which trail the records by the labels' delay, and the last slices
    close only when the label partitions go idle); progress on stderr every few seconds while
    it catches up; RuntimeError at ``timeout``."""
    expected = sent.get("labels", 0) if outcomes_expected is None else outcomes_expected
    deadline = time.monotonic() + timeout
    want = sum(v for k, v in sent.items() if k != "labels")
    said = time.monotonic()
    last, steady_since = -1, time.monotonic()
    while proc.poll() is None and time.monotonic() < deadline:
        status = _get(port, "/models")
        seen: dict[str, int] = {}
        for m in status:
            seen[m["model"]] = seen.get(m["model"], 0) + m["records"]
        outcomes = sum(m["outcomes"] for m in status)
        records_in = all(seen.get(k, 0) >= v for k, v in sent.items() if k != "labels")
        if outcomes != last or not records_in:
            last, steady_since = outcomes, time.monotonic()
        if records_in and (outcomes >= expected
                           or time.monotonic() - steady_since >= OUTCOMES_STEADY_SECONDS):
            return status
        if time.monotonic() - said >= 3.0:
            sys.stderr.write(f"waiting for the worker: {sum(seen.values()):,} of {want:,} "
                             f"records and {outcomes:,} of {expected:,} outcomes merged\n")
            said = time.monotonic()
        time.sleep(0.3)
    raise RuntimeError(f"the worker did not consume the {want:,} records produced within "
                       f"{timeout:.0f} s")


def _wait(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not check():
        time.sleep(0.3)


def missing_drifts(result: dict[str, Any]) -> list[str]:
    """The injected drifts the demo's events do not report (an empty list: both were).

    >>> found = {"drift_events": [{"model": "fraud", "kind": "data", "state": "onset"}],
    ...          "actions": []}
    >>> missing_drifts(found)  # doctest: +NORMALIZE_WHITESPACE
    ["concept drift of 'churn' (onset)", "rollback of 'churn'",
     "rollout verdict rollback of 'churn'", "rollout verdict promote of 'fraud'"]
    """
    onsets = {(e["model"], e["kind"]) for e in result["drift_events"] if e["state"] == "onset"}
    out = [f"{kind} drift of {model!r} (onset)" for model, kind in
           (("fraud", "data"), ("churn", "concept")) if (model, kind) not in onsets]
    if not any(a["model"] == "churn" and a["action"] == "rollback" for a in result["actions"]):
        out.append("rollback of 'churn'")
    for model, verdict in (("churn", "rollback"), ("fraud", "promote")):
        if not any(a["model"] == model and (a.get("rollout") or {}).get("verdict") == verdict
                   for a in result["actions"]):
            out.append(f"rollout verdict {verdict} of {model!r}")
    return out


def _wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited at start with code {proc.returncode}")
        if _get(port, "/health"):
            return
        time.sleep(0.3)
    raise RuntimeError("the worker did not become healthy in time")
