"""`driftwarden produce`: a table replayed as prediction logs on the real broker."""

from __future__ import annotations

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from driftwarden.cli import main
from driftwarden.produce import produce_rows


def read_topic(bootstrap, topic):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "t", "enable.auto.commit": False})
    out = []
    for p in c.list_topics(topic, timeout=10).topics[topic].partitions:
        low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        if high > low:
            c.assign([TopicPartition(topic, p, low)])
            while True:
                msgs = c.consume(100, 1.0)
                out += [orjson.loads(m.value()) for m in msgs if m.error() is None]
                if not msgs or msgs[-1].offset() + 1 >= high:
                    break
    c.close()
    return out


def test_produce_replays_rows_as_batches_with_labels(broker, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DRIFTWARDEN_TOPICS__PREDICTIONS", "replay.predictions")
    monkeypatch.setenv("DRIFTWARDEN_TOPICS__LABELS", "replay.labels")
    f = tmp_path / "rows.csv"
    f.write_text("id,amount,country,prediction,label\n"
                 + "".join(f"r{i},{i * 1.5},{'DE' if i % 2 else 'FR'},0.{i},{i % 2}\n"
                           for i in range(25)))
    code = main(["produce", str(f), "--model", "fraud", "--batch", "10",
                 "--bootstrap-servers", broker.bootstrap_servers])
    assert code == 0, capsys.readouterr().err
    assert "sent 25 records in 3 messages and 25 labels" in capsys.readouterr().out
    msgs = read_topic(broker.bootstrap_servers, "replay.predictions")
    records = [r for m in msgs for r in m["records"]]
    assert [len(m["records"]) for m in msgs] == [10, 10, 5]
    assert records[3]["features"] == {"amount": 4.5, "country": "DE"}
    assert records[3]["id"] == "r3" and records[3]["model"] == "fraud"
    labels = read_topic(broker.bootstrap_servers, "replay.labels")
    assert sorted(lab["id"] for lab in labels) == sorted(f"r{i}" for i in range(25))


def test_rate_is_kept_and_bad_files_fail_in_one_line(tmp_path, capsys):
    t = [0.0]
    sent = []
    out = produce_rows([{"x": i} for i in range(20)], lambda *a: sent.append(a), topic="p",
                       labels_topic="l", model="m", rate=10.0, clock=lambda: t[0],
                       sleep=lambda s: t.__setitem__(0, t[0] + s))
    assert out == {"records": 20, "messages": 20, "labels": 0} and abs(t[0] - 1.9) < 1e-9
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"x": 1}\nnot json\n')
    for args in (["produce", str(tmp_path / "missing.csv"), "--model", "m"],
                 ["produce", str(bad), "--model", "m"]):
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("driftwarden: error:")
    nomodel = tmp_path / "nomodel.csv"
    nomodel.write_text("x\n1\n")
    assert main(["produce", str(nomodel), "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert "no model" in capsys.readouterr().err
    assert main(["produce", str(nomodel), "--model", "m", "--bootstrap-servers",
                 "127.0.0.1:1"]) == 2  # nothing listens there
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the broker at 127.0.0.1:1" in err[0]


def test_a_file_with_its_own_timeline_and_a_bad_time_is_one_line_before_anything_is_sent(
        tmp_path, capsys):
    from driftwarden.cli import main

    bad = tmp_path / "bad.csv"
    bad.write_text("x,time\n1,2026-11-29T08:00:00Z\n2,noon\n")
    # the broker address is unreachable: the time is checked first, nothing is sent
    assert main(["produce", str(bad), "--model", "m", "--ts-column", "time",
                 "--bootstrap-servers", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "row 1: time 'noon' is not a time" in err[0], err
    assert main(["produce", str(bad), "--model", "m", "--rate", "5", "--speedup", "2"]) == 2
    assert "either --rate or --speedup" in capsys.readouterr().err


def test_a_replay_keeps_the_files_times_and_paces_them_by_the_speedup():
    from datetime import datetime

    from driftwarden.produce import produce_rows

    rows = [{"x": i, "time": t} for i, t in enumerate(
        ["2026-11-29T08:00:00+00:00", "2026-11-29T08:01:00+00:00", 1795939320.0,
         datetime(2026, 11, 29, 8, 3)])]  # ISO, ISO, epoch seconds, a naive (UTC) datetime
    sent, sleeps = [], []
    now = [1000.0]

    def sleep(s):
        sleeps.append(s)
        now[0] += s

    produce_rows(rows, lambda t, k, v: sent.append(orjson.loads(v)), topic="p",
                 labels_topic="l", model="m", ts_column="time", speedup=60.0,
                 clock=lambda: now[0], sleep=sleep)
    assert [r["ts"] for r in sent] == [1795939200.0 + 60 * i for i in range(4)]
    assert sleeps == pytest.approx([1.0, 1.0, 1.0])  # a minute of the file per second
    assert all("time" not in r["features"] for r in sent)
