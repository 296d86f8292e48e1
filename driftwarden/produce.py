"""``driftwarden produce``: replay a table (CSV, Parquet, JSON Lines) as prediction logs, so
the stream service can be tried on one's own data.

Each row becomes a native record: the columns ``model``, ``version``, ``id``, the time column
(``ts``, or ``--ts-column``) and the prediction and label columns are taken as such, every
other column is a feature. A JSON Lines row that already has ``features`` is sent as it is
(with the defaults filled in). Rows without a time get the time they are sent, so the
worker's windows move as the replay goes (and close once the replay ends: the worker closes
an idle model's slices); with a time column a replay of last month gives last month's
verdicts — as fast as the broker takes them, or on the file's own timeline ``speedup`` times
faster. Times are epoch seconds, ISO 8601 strings or the file's own timestamps (naive ones
are UTC). A label column, when present, is also sent to the label topic (same ``id``), so
concept drift can be tried too.

>>> rec, label = to_record({"amount": 3.5, "country": "DE", "prediction": 0.9, "label": 1},
...                        7, model="fraud", version="1", now=100.0)
>>> rec
{'model': 'fraud', 'version': '1', 'id': 'row-7', 'ts': 100.0, 'features': {'amount': 3.5, \
'country': 'DE'}, 'prediction': 0.9}
>>> label
{'model': 'fraud', 'id': 'row-7', 'label': 1, 'ts': 100.0}
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from driftwarden.errors import InputError


def timestamp(value: Any, index: int, column: str = "ts") -> float | None:
    """Epoch seconds of a time cell (None when empty): a number, a numeric or ISO 8601 string,
    or a datetime (naive: UTC). One readable error otherwise.

    >>> timestamp("2026-11-29T08:00:00Z", 0), timestamp(1.5, 1), timestamp(None, 2)
    (1795939200.0, 1.5, None)
    >>> timestamp("noon", 3)
    Traceback (most recent call last):
    ...
    driftwarden.errors.InputError: row 3: ts 'noon' is not a time (epoch seconds or ISO 8601)
    """
    if value is None:
        return None
    out: float | None = None
    if isinstance(value, datetime):
        out = (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(value)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(value.strip())
            except ValueError:
                out = None
            else:
                out = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    if out is None or not math.isfinite(out):
        raise InputError(f"row {index}: {column} {str(value)[:40]!r} is not a time (epoch "
                         "seconds or ISO 8601)")
    return out


def to_record(row: Mapping[str, Any], index: int, *, model: str | None, version: str,
              now: float, prediction: str = "prediction", label: str = "label",
              ts_column: str = "ts") -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The prediction record of one row, and its label message (None without a label)."""
    name = row.get("model") or model
    if not name:
        raise InputError(f"row {index}: no model (give --model or a `model` column)")
    rid = row.get("id")
    rid = f"row-{index}" if rid is None else str(rid)
    ts = timestamp(row.get(ts_column), index, ts_column)
    ts = now if ts is None else ts
    if isinstance(row.get("features"), dict):
        features = row["features"]
    else:
        skip = {"model", "version", "id", ts_column, prediction, label}
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
                 label: str = "label", ts_column: str = "ts", speedup: float = 0.0,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> dict[str, int]:
    """Send every row (``batch`` records per message) through ``send(topic, key, value)``,
    at most ``rate`` records per second when > 0, or, when ``speedup`` > 0, each row at its
    own time (``ts_column``) relative to the first row's, ``speedup`` times faster; returns
    what was sent.

    >>> sent, sleeps = [], []
    >>> rows = [{"x": 1, "t": 100.0}, {"x": 2, "t": 110.0}, {"x": 3, "t": 130.0}]
    >>> produce_rows(rows, lambda *m: sent.append(m), topic="p", labels_topic="l",
    ...              model="m", ts_column="t", speedup=10, clock=lambda: 0.0,
    ...              sleep=sleeps.append)["records"], sleeps     # 10 s and 30 s at 10x
    (3, [1.0, 3.0])
    """
    if rate > 0 and speedup > 0:
        raise InputError("give either a rate or a speedup, not both")
    sent = {"records": 0, "messages": 0, "labels": 0}
    start = clock()
    first: float | None = None
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
        due = None
        if rate > 0:
            due = start + i / rate
        elif speedup > 0:
            t = timestamp(row.get(ts_column), i, ts_column)
            if t is None:
                raise InputError(f"row {i}: no {ts_column} (a speedup replays the file's own "
                                 "timeline: every row needs a time)")
            first = t if first is None else first
            due = start + (t - first) / speedup
        if due is not None and due > clock():
            flush()
            sleep(max(0.0, due - clock()))
        rec, lab = to_record(row, i, model=model, version=version, now=clock(),
                             prediction=prediction, label=label, ts_column=ts_column)
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
