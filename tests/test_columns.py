"""Column batches through the stream service (in process): the same records sent as native
row batches and as column batches give the same counts, the same drift and action events and
the same rollout verdicts — column JSON or Arrow IPC: an encoding, not another behaviour."""

from __future__ import annotations

import orjson
import pytest
from test_rollout_stream import CONFIG, ENV, traffic

from driftwarden.config import load_settings
from driftwarden.stream.service import RawMessage, StreamService


def batches(columns: bool | str, size: int = 100):
    """The traffic's predictions in messages of ``size`` records per model version (rows,
    column JSON, or ``columns="arrow"``: Arrow IPC), its labels one per message, in producer
    order."""
    out, pending = [], {}

    def flush(key):
        recs = pending.pop(key)
        model, version = key
        if columns == "arrow":
            import pyarrow as pa

            from driftwarden.arrow import encode_table

            names = sorted({n for r in recs for n in r["features"]})
            t = pa.table({"id": [r["id"] for r in recs], "ts": [r["ts"] for r in recs],
                          "prediction": [r["prediction"] for r in recs],
                          "latency_ms": [r["latency_ms"] for r in recs],
                          **{n: [r["features"].get(n) for r in recs] for n in names}})
            out.append(("p", encode_table(t.replace_schema_metadata({
                "driftwarden.model": model, "driftwarden.version": version})), recs[-1]["ts"]))
            return
        if columns:
            names = sorted({n for r in recs for n in r["features"]})
            body = {"model": model, "version": version, "columns": {
                "id": [r["id"] for r in recs], "ts": [r["ts"] for r in recs],
                "prediction": [r["prediction"] for r in recs],
                "latency_ms": [r["latency_ms"] for r in recs],
                "features": {n: [r["features"].get(n) for r in recs] for n in names}}}
        else:
            body = {"model": model, "version": version,
                    "records": [{k: v for k, v in r.items() if k not in ("model", "version")}
                                for r in recs]}
        out.append(("p", orjson.dumps(body), recs[-1]["ts"]))

    for kind, r in traffic(seconds=30):
        if kind == "l":
            out.append(("l", orjson.dumps(r), r["ts"]))
            continue
        key = (r["model"], r["version"])
        pending.setdefault(key, []).append(r)
        if len(pending[key]) == size:
            flush(key)
    for key in list(pending):
        flush(key)
    return out


def run(tmp_path, columns: bool | str):
    path = tmp_path / "rollouts.toml"
    path.write_text(CONFIG)
    svc = StreamService(load_settings(path, env=ENV))
    outs = []
    for i, (kind, value, ts) in enumerate(batches(columns)):
        msg = RawMessage(value, [], kind, 0, i, ts)
        outs += (svc.handle_predictions if kind == "p" else svc.handle_labels)([msg])
    outs += svc.finish()
    return svc, outs


@pytest.mark.parametrize("encoding", [True, "arrow"])
def test_column_batches_give_what_row_batches_give(tmp_path, encoding):
    rows, cols = run(tmp_path, False), run(tmp_path, encoding)
    (a, out_a), (b, out_b) = rows, cols
    assert dict(a.counts) == dict(b.counts) and sum(a.counts.values()) > 10_000
    assert dict(a.invalid) == dict(b.invalid) == {}

    def events(outs):
        return sorted(o.value for o in outs if o.topic in ("driftwarden.drift",
                                                           "driftwarden.actions"))

    assert events(out_a) == events(out_b) and events(out_a)
    for name in ("churn-v2", "fraud-v2"):
        ra, rb = a.merge.rollouts[name], b.merge.rollouts[name]
        assert {c: d.to_dict() for c, d in ra.decisions.items()} == {
            c: d.to_dict() for c, d in rb.decisions.items()}
        for v in ra.sides:
            assert ra.sides[v].latency.to_state() == rb.sides[v].latency.to_state()
    assert a.merge.rollouts["fraud-v2"].pairs["2"].n == b.merge.rollouts["fraud-v2"].pairs["2"].n
