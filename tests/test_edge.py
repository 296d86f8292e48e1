"""The edge pattern against the real broker (issue 13): three devices ship partial summaries
of a model that also has stream traffic; one is offline for ten slices (its partials wait in
its disk buffer) and then catches up. The merged windows hold every record of every source
exactly once; the device that was away shows as a lagging source, not as drift."""

from __future__ import annotations

import time

import numpy as np
import orjson
from confluent_kafka import Producer
from conftest import get_json, wait_for
from prometheus_client.parser import text_string_to_metric_families

from driftwarden.batch import fit_baseline_file
from driftwarden.config import load_settings
from driftwarden.edge import EdgeClient, KafkaSender
from driftwarden.embedded import EmbeddedBroker, free_port
from driftwarden.kafka import ensure_topics

SLICES, PER = 30, 100
T0 = float(int(time.time()) - 600)


def rows(rng, n):
    return {"amount": rng.normal(0, 1, n), "country": rng.choice(["DE", "FR", "US"], n)}


def metrics(port):
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(r.read().decode())
                for s in fam.samples}


def test_devices_and_stream_merge_into_one_window_and_an_absent_device_is_waited_for(
        spawn_worker, tmp_path):
    rng = np.random.default_rng(3)
    ref = tmp_path / "reference.csv"
    r = rows(rng, 3000)
    ref.write_text("amount,country\n" + "".join(
        f"{a},{c}\n" for a, c in zip(r["amount"], r["country"])))
    env = {"DRIFTWARDEN_DETECTION__SLICES": "4", "DRIFTWARDEN_DETECTION__SLICE_SECONDS": "1",
           "DRIFTWARDEN_DETECTION__ALLOWED_LATENESS": "0.5",
           "DRIFTWARDEN_DETECTION__CALIBRATION_SIMS": "60",
           # the stream partitions hold the merge until their records come (they follow the
           # devices), then go idle
           "DRIFTWARDEN_DETECTION__IDLE_CLOSE_SECONDS": "20",
           # longer than device c is away, however slow the machine: it is waited for
           "DRIFTWARDEN_DETECTION__SOURCE_IDLE_SECONDS": "600",
           "DRIFTWARDEN_KAFKA__STALL_SECONDS": "8",
           "DRIFTWARDEN_MODELS__EDGE__BASELINE": str(ref)}
    settings = load_settings(env=env)
    base = fit_baseline_file(str(ref), settings.detection)  # what the worker fits too
    with EmbeddedBroker() as broker:
        ensure_topics(settings, bootstrap_servers=broker.bootstrap_servers)
        proc, port, log = spawn_worker(broker.bootstrap_servers, env)
        try:
            live = KafkaSender(broker.bootstrap_servers)
            offline = KafkaSender(f"127.0.0.1:{free_port()}", timeout=0.5)  # nothing listens
            devices = {name: EdgeClient(base, model="edge", version="1", device=name,
                                        slice_seconds=1.0, allowed_lateness=0.5,
                                        buffer_dir=tmp_path / name, send=live,
                                        n_partitions=settings.kafka.partitions)
                       for name in ("a", "b", "c")}
            for t in range(SLICES):
                for name, dev in devices.items():
                    if name == "c":
                        dev.send = offline if t >= 10 else live  # away from slice 10 on
                    cols = rows(rng, PER)
                    dev.add({"amount": cols["amount"], "country": cols["country"].astype(object)},
                            T0 + t + np.arange(PER) / PER)
            for dev in devices.values():
                dev.close()
            assert devices["c"].buffered >= SLICES - 10 and devices["a"].buffered == 0
            # the stream's records of the same model and time, from a producer without keys
            p = Producer({"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 20})
            for t in range(SLICES):
                cols = rows(rng, PER)
                for i in range(PER):
                    p.produce("driftwarden.predictions", value=orjson.dumps(
                        {"model": "edge", "version": "1", "ts": T0 + t + i / PER,
                         "features": {"amount": float(cols["amount"][i]),
                                      "country": str(cols["country"][i])}}))
                p.poll(0)
            assert p.flush(30) == 0
            total = 4 * SLICES * PER

            # the stream and devices a, b are in; c is behind: its slices hold the window back
            def held():
                m = metrics(port)
                lag = m.get(("driftwarden_source_lag_seconds", (("kind", "data"),)), 0.0)
                return m if lag >= SLICES - 11 else None

            m = wait_for("device c to show as a lagging source", held, timeout=120)
            status = get_json(port, "/models")
            assert status and status[0]["records"] <= 4 * 10 * PER  # nothing past c's slice 10
            assert not any(v["drift"] for v in get_json(port, "/verdicts") or [])

            devices["c"].send = live  # back online: the buffer goes out, oldest first
            assert devices["c"].flush() >= SLICES - 10 and devices["c"].buffered == 0
            done = wait_for("every record of every source merged", lambda: (
                (s := get_json(port, "/models")) and s[0]["records"] == total and s), timeout=120,
                show=lambda: get_json(port, "/models"))
            m = metrics(port)
            mv = (("kind", "data"), ("model", "edge"), ("version", "1"))
            assert m[("driftwarden_partials_total", (("fate", "late"), *mv))] == 0
            assert m[("driftwarden_partials_total", (("fate", "duplicate"), *mv))] == 0
            assert done[0]["late"] == 0
            assert not any(v["drift"] for v in get_json(port, "/verdicts") or [])
        finally:  # while its broker is there: stopping flushes what it holds
            proc.terminate()
            proc.wait(30)
        assert "Traceback" not in log.read_text()
