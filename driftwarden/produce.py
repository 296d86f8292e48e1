"""``driftwarden produce``: replay a table (CSV, Parquet, JSON Lines) as prediction logs, so
the stream service can be tried on one's own data.

Each row becomes a native record: the columns ``model``, ``version``, ``id``, ``ts`` and the
prediction and label columns are taken as such, every other column is a feature. A JSON Lines
row that already has ``features`` is sent as it is (with the defaults filled in). Rows without
``ts`` get the time they are sent, so the worker's windows move as the replay goes; with a
``ts`` column a replay of last month gives last month's verdicts. A label column, when
present, is also sent to the label topic (same ``id``), so concept drift can be tried too.

>>> rec, label = to_record({"amount": 3.5, "country": "DE", "prediction": 0.9, "label": 1},
...                        7, model="fraud", version="1", now=100.0)
>>> rec
{'model': 'fraud', 'version': '1', 'id': 'row-7', 'ts': 100.0, 'features': {'amount': 3.5, \
'country': 'DE'}, 'prediction': 0.9}
>>> label
{'model': 'fraud', 'id': 'row-7', 'label': 1, 'ts': 100.0}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from driftwarden.errors import InputError


def to_record(row: Mapping[str, Any], index: int, *, model: str | None, version: str,
              now: float, prediction: str = "prediction", label: str = "label"
              ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The prediction record of one row, and its label message (None without a label)."""
    name = row.get("model") or model
    if not name:
        raise InputError(f"row {index}: no model (give --model or a `model` column)")
    rid = row.get("id")
    rid = f"row-{index}" if rid is None else str(rid)
    ts = row.get("ts")
    ts = now if ts is None else ts
    if isinstance(row.get("features"), dict):
        features = row["features"]
    else:
        skip = {"model", "version", "id", "ts", prediction, label}
        features = {k: v for k, v in row.items() if k not in skip}
    rec = {"model": name, "version": str(row.get("version") or version), "id": rid, "ts": ts,
           "features": features, "prediction": row.get(prediction)}
    lab = None
    if row.get(label) is not None:
        lab = {"model": name, "id": rid, "label": row[label], "ts": ts}
    return rec, lab


def produce_rows(rows: list[dict[str, Any]], send: Callable[[str, bytes, bytes], None], *,
                 topic: str, labels_topic: str, model: str | None, version: str = "1",
                 rate: float = 0.0, batch: int = 1, prediction: str = "prediction",
                 label: str = "label", clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> dict[str, int]:
    """Send every row (``batch`` records per message, at most ``rate`` records per second
    when > 0) through ``send(topic, key, value)``; returns what was sent."""
    sent = {"records": 0, "messages": 0, "labels": 0}
    start = clock()
    pending: list[dict[str, Any]] = []

    def flush() -> None:
        if not pending:
            return
        if batch == 1:
            value = orjson.dumps(pending[0])
        else:
            value = orjson.dumps({"model": pending[0]["model"],
                                  "version": pending[0]["version"], "records": pending})
        send(topic, pending[0]["model"].encode(), value)
        sent["messages"] += 1
        pending.clear()

    for i, row in enumerate(rows):
        if rate > 0:
            due = start + i / rate
            if due > clock():
                flush()
                sleep(max(0.0, due - clock()))
        rec, lab = to_record(row, i, model=model, version=version, now=clock(),
                             prediction=prediction, label=label)
        if pending and (pending[0]["model"], pending[0]["version"]) != (rec["model"],
                                                                        rec["version"]):
            flush()
        pending.append(rec)
        sent["records"] += 1
        if lab is not None:
            send(labels_topic, rec["model"].encode(), orjson.dumps(lab))
            sent["labels"] += 1
        if len(pending) >= batch:
            flush()
    flush()
    return sent
