"""``driftwarden publish``: a file's records as partial summaries, so a nightly batch job shows
up in the same windows, dashboards and incidents as the stream.

A model scored in batch (a nightly job over a table) has no stream to watch. ``publish``
summarises the file the way a worker's stage 1 summarises a partition — per (model, version)
and event-time slice, over the model's baseline bins when one is known — and writes the
partials to the summaries topic, where the model's merge stage takes them like any source's:

* **source** ``batch:<name>`` (``--name``, default the file's name without suffix); its
  partials are numbered from the slice of the file's first row, so publishing the *same file*
  again repeats their identity and the merge stage counts the repeat as duplicates, not as
  new records — a rerun after a failure is safe; a later file of the same job (later event
  times) numbers past the earlier one;
* **bins**: the model version's baseline as the merge stage has it — the worker config's
  (``[models.NAME] baseline``), else the one stage 2 fitted and published on the baselines
  topic; with neither (the model still warms up), the partials carry the records themselves,
  as a stream partition's do before a baseline exists;
* **outcomes**: rows with both a prediction and a label give ``outcomes`` partials (label time
  = the row's time), so realized performance and concept drift see the batch too;
* **end**: a watermark saying the source is idle follows the partials, so the merge stage does
  not wait for more from it; the slices close as the other sources pass them (or at once when
  there are none) and the window drains as after any idle source.

Rows are checked like stream records (the same limits); a row that would be dead-lettered on
the stream stops the publish with one line naming it, before anything is sent. Rows are
sorted by time first: in a file no row is late.

>>> from driftwarden.config import Limits
>>> rows = [{"x": 0.1 * i, "prediction": i % 2, "label": 1, "ts": 100.0 + i}
...         for i in range(5)]
>>> groups = checked_rows(rows, model="m", limits=Limits(), now=200.0)
>>> out = file_messages(groups, source="batch:nightly", slice_seconds=2.0)
>>> [(type(msg).__name__, msg.kind, msg.seq if hasattr(msg, "seq") else msg.idle)
...  for _, msg in out]   # doctest: +NORMALIZE_WHITESPACE
[('Partial', 'data', 50), ('Partial', 'data', 51), ('Partial', 'data', 52),
 ('Partial', 'outcomes', 50), ('Partial', 'outcomes', 51), ('Partial', 'outcomes', 52),
 ('Watermark', 'data', True), ('Watermark', 'outcomes', True)]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from driftwarden.config import Limits
from driftwarden.detectors.baseline import Baseline
from driftwarden.detectors.summary import LATENCY, PREDICTION
from driftwarden.errors import InputError
from driftwarden.partials import (
    Message,
    OutcomeBuilder,
    Partial,
    PartialBuilder,
    Watermark,
    typed_columns,
)
from driftwarden.produce import to_record
from driftwarden.schema import PredictionRecord, Rejection, checked_record
from driftwarden.stream.baselines import configured_baseline

SOURCE_PREFIX = "batch:"


Groups = dict[tuple[str, str], list[tuple[PredictionRecord, Any]]]


def checked_rows(rows: list[dict[str, Any]], *, limits: Limits, now: float,
                 model: str | None = None, version: str = "1", prediction: str = "prediction",
                 label: str = "label", ts_column: str = "ts") -> Groups:
    """The rows as checked records with their labels (None: none), per (model, version).
    Raises :class:`~driftwarden.errors.InputError` naming the first row the stream would
    dead-letter (and why)."""
    groups: Groups = {}
    for i, row in enumerate(rows):
        rec, lab = to_record(row, i, model=model, version=version, now=now,
                             prediction=prediction, label=label, ts_column=ts_column)
        checked = checked_record(rec["model"], rec["version"], rec["id"], rec["ts"],
                                 rec["features"], rec["prediction"], None, None, now=now,
                                 max_ts=now + limits.max_future_seconds, limits=limits,
                                 index=i)
        if isinstance(checked, Rejection):
            raise InputError(f"row {i}: {checked.detail} ({checked.reason})")
        groups.setdefault((checked.model, checked.version), []).append(
            (checked, None if lab is None else lab["label"]))
    return groups


def file_messages(groups: Groups, *, source: str, slice_seconds: float,
                  baseline: Callable[[str, str], Baseline | None] | None = None,
                  task: Callable[[str], str] | None = None, reservoir_size: int = 1024,
                  seed: int = 0) -> list[tuple[str, Message]]:
    """The partials of the checked rows (:func:`checked_rows`) and the closing watermarks,
    each with the model whose summaries partition it goes to (see the module docstring).
    ``baseline(model, version)``: the bins to summarise over (None: records);
    ``task(model)``: ``classification`` or ``regression``."""
    out: list[tuple[str, Message]] = []
    ends: dict[tuple[str, str], float] = {}  # (model, kind) -> the watermark to close with
    for (name, ver), group in groups.items():
        group.sort(key=lambda r: r[0].ts)  # stable: a file's rows are never late
        base = baseline(name, ver) if baseline is not None else None
        kind_task = task(name) if task is not None else "classification"
        ts = np.array([r.ts for r, _ in group])
        first = math.floor(ts[0] / slice_seconds)
        data = PartialBuilder(base, model=name, version=ver, source=source,
                              slice_seconds=slice_seconds, reservoir_size=reservoir_size,
                              seed=seed, seq=first, task=kind_task)
        cols = _columns([r for r, _ in group])
        parts = data.add(typed_columns(base, cols) if base is not None else cols, ts)
        parts += data.flush()
        pairs = [(r.prediction, y, r.ts) for r, y in group
                 if y is not None and r.prediction is not None]
        if pairs:
            outcomes = OutcomeBuilder(model=name, version=ver, source=source,
                                      slice_seconds=slice_seconds, task=kind_task,
                                      seq=math.floor(pairs[0][2] / slice_seconds))
            p, y, t = zip(*pairs)
            parts += outcomes.add(p, y, t) + outcomes.flush()
        for part in parts:
            out.append((name, part))
            key = (name, part.kind)
            ends[key] = max(ends.get(key, -math.inf), part.watermark)
    for (name, kind), wm in ends.items():
        out.append((name, Watermark(kind=kind, source=source,  # type: ignore[arg-type]
                                    watermark=wm, idle=True)))
    return out


def _columns(records: list[PredictionRecord]) -> dict[str, Any]:
    """Feature name -> values (None where a row lacks it), and the predictions and request
    latencies if any."""
    names = sorted({k for r in records for k in r.features})
    cols: dict[str, Any] = {n: [r.features.get(n) for r in records] for n in names}
    if any(r.prediction is not None for r in records):
        cols[PREDICTION] = [r.prediction for r in records]
    if any(r.latency_ms is not None for r in records):
        cols[LATENCY] = [r.latency_ms for r in records]
    return cols


def source_name(name: str) -> str:
    """The summaries source of a batch job called ``name``.

    >>> source_name("nightly-scores")
    'batch:nightly-scores'
    """
    if not name or len(name) > 200 or any(c in name for c in "\x00\x1f/"):
        raise InputError(f"--name {name[:60]!r}: give 1-200 characters without '/' or control "
                         "characters")
    return SOURCE_PREFIX + name


def known_baselines(configured: Mapping[str, Mapping[str, Any]],
                    published: Mapping[tuple[str, str], Baseline]
                    ) -> Callable[[str, str], Baseline | None]:
    """The baseline the merge stage monitors a model version with: the configured one (by
    version, then for every version), else the one stage 2 published."""

    def find(model: str, version: str) -> Baseline | None:
        return configured_baseline(configured, model, version) or published.get(
            (model, version))

    return find


def summary_counts(messages: list[tuple[str, Message]]) -> dict[str, int]:
    """What a publish sends: partials, data rows, outcome rows, binned or not."""
    parts = [m for _, m in messages if isinstance(m, Partial)]
    return {"partials": len(parts),
            "records": sum(p.rows for p in parts if p.kind == "data"),  # chunks: their own
            "outcomes": sum(p.rows for p in parts if p.kind == "outcomes"),
            "raw": sum(1 for p in parts if p.kind == "data" and p.records is not None)}


__all__ = ["checked_rows", "file_messages", "known_baselines", "source_name", "summary_counts"]
