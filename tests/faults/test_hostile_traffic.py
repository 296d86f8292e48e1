"""R12: 10^5 messages on the real broker, 10 % of them hostile (the fuzz corpus and generated
ones): the worker does not crash, every good record is counted, the dead-letter topic holds
exactly the hostile messages, the series count does not grow with them and memory stays
bounded. (Throughput against a clean run is measured by bench/bench_hostile.py.)"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import get_json, wait_for
from faultkit import NOW, fates, produce, producer, read_topic, record, rss_mib, scrape, worker_env

from driftwarden.config import load_settings
from driftwarden.schema import REASONS
from driftwarden.stream.service import RawMessage, StreamService

pytestmark = pytest.mark.faults

CORPUS = Path(__file__).parent.parent / "fuzz_corpus"
TOTAL = 100_000


def hostile_messages() -> list[tuple[bytes, list]]:
    """Messages that are dead-lettered whole (one dead letter, no record): the corpus's
    prediction cases under 64 kB that are, plus generated ones; checked in process first."""
    cases = []
    for path in sorted(CORPUS.glob("*.pred")):
        body = path.read_bytes()
        hdr = path.with_suffix(".headers")
        headers = [(k, v.encode()) for k, v in json.loads(hdr.read_text())] if hdr.exists() \
            else []
        if len(body) < 65_536 and not headers:
            cases.append((body, headers))
    rng = random.Random(12)
    for i in range(200):
        cases.append((bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60))), []))
        cases.append((b'{"model":"m0","features":{"x":' + b"[" * (300 + i) + b"]" * (300 + i)
                      + b"}}", []))
    svc = StreamService(load_settings(env={}))
    whole = []
    for i, (body, headers) in enumerate(cases):
        before = svc.messages.copy()
        outs = svc.handle_predictions([RawMessage(body, headers, "t", 0, i, NOW)])
        if (svc.messages - before) == {"dead_lettered": 1} and len(outs) == 1:
            whole.append((body, headers))
    assert len(whole) > 300
    return whole


def test_r12_ten_percent_hostile_messages_among_a_hundred_thousand(broker, spawn_worker):
    bs = broker.bootstrap_servers
    proc, port, log = spawn_worker(bs, worker_env("r12"), warmup=1000)
    p = producer(bs)
    clean = 5000  # first a clean stretch: warm-up, windows, the series of a healthy worker
    produce(p, "r12.predictions", (record(f"m{i % 2}", i, NOW - 300 + i / 200)
                                   for i in range(clean)), key=None)
    wait_for("the clean stretch", lambda: sum(fates(port).values()) >= clean, 60)
    wait_for("the clean stretch merged (its monitors and their series)", lambda: sum(
        m["records"] for m in get_json(port, "/models") or []) >= clean, 60)
    wait_for("the watchdog's first round (consumer-lag series)", lambda: any(
        n == "driftwarden_consumer_lag_messages" for n, _ in scrape(port)), 30)
    series_before = set(scrape(port))
    rss_before = rss_mib(proc.pid)

    hostile = hostile_messages()
    rng = random.Random(3)
    n_hostile = (TOTAL - clean) // 10
    plan = [True] * n_hostile + [False] * (TOTAL - clean - n_hostile)
    rng.shuffle(plan)
    goods = 0

    def messages():
        nonlocal goods
        h = 0
        for bad in plan:
            if bad:
                body, _ = hostile[h % len(hostile)]
                h += 1
                yield body
            else:
                i = clean + goods
                goods += 1
                yield record(f"m{i % 2}", i, NOW - 300 + i / 200)

    produce(p, "r12.predictions", messages())
    wait_for("every message's fate", lambda: sum(fates(port).values()) >= TOTAL, 240)
    f = fates(port)
    assert f == {"used": clean + goods, "dead_lettered": n_hostile}, f
    # keyless records spread over both partitions: one monitor per model merges them
    wait_for("every record merged", lambda: sum(
        m["records"] for m in get_json(port, "/models") or []) == clean + goods, 60,
        show=lambda: (clean + goods, [(m["model"], m["records"], m["late"])
                                      for m in get_json(port, "/models") or []],
                      {k: v for k, v in scrape(port).items() if "partial" in k[0] and v}))
    # the dead letters are produced as the messages are handled; their delivery (and the
    # broker's end offsets) may trail the fate counter by a moment
    wait_for("every dead letter on the topic", lambda: len(read_topic(bs, "r12.dlq", 10)) >=
             n_hostile, 60)
    letters = read_topic(bs, "r12.dlq")
    assert len(letters) == n_hostile
    assert {h["dw.reason"].decode() for _, h in letters} <= set(REASONS)
    # hostile input adds the series of its dead-letter reasons and fate, nothing per message
    added = set(scrape(port)) - series_before
    assert {name for name, _ in added} <= {"driftwarden_invalid_events_total",
                                           "driftwarden_messages_total"}, added
    assert len(added) <= len(REASONS) + 1
    grew = rss_mib(proc.pid) - rss_before
    assert grew < 300
    print(f"R12: {n_hostile} hostile of {TOTAL} messages, RSS {rss_before:.0f} MiB -> "
          f"+{grew:.0f} MiB, {len(added)} series added")
    assert proc.poll() is None
    text = log.read_text()
    assert "Traceback" not in text and "Crashed" not in text
