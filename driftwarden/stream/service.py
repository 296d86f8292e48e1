"""The stream service's core: raw Kafka messages in, messages to produce out. No Kafka here.

:class:`StreamService` is what the Faust agents hand their batches to (STYLE: thin agents over
a plain-Python core). It decodes, dead-letters what cannot be used, routes records to one
:class:`~driftwarden.stream.monitor.ModelMonitor` per (model, version) — discovered from the
stream up to ``max_models``, or only the configured ones — joins labels, applies the response
policy, and returns the :class:`Output` messages to produce (drift events, action events, dead
letters, late labels) in order.

>>> from driftwarden.config import load_settings
>>> svc = StreamService(load_settings(env={}))
>>> msg = RawMessage(b"not json", [], "driftwarden.predictions", 0, 7, 1.0)
>>> outs = svc.handle_predictions([msg])
>>> [(o.topic, dict(o.headers)["dw.reason"]) for o in outs]
[('driftwarden.dlq', b'bad_json')]
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from driftwarden.config import Settings
from driftwarden.schema import (
    CloudEventJoiner,
    Decoded,
    PredictionRecord,
    RecordBatch,
    Rejection,
    decode_label,
    decode_predictions,
)
from driftwarden.stream.dlq import dead_letter
from driftwarden.stream.labels import LabelJoiner, Outcome
from driftwarden.stream.monitor import ModelMonitor
from driftwarden.stream.policy import ResponsePolicy


class RawMessage(NamedTuple):
    """One consumed Kafka message (value, headers, where it came from, its timestamp in s)."""

    value: bytes
    headers: Sequence[tuple[str, bytes | None]]
    topic: str
    partition: int
    offset: int
    timestamp: float


@dataclass(frozen=True)
class Output:
    """One message to produce."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class StreamService:
    """Decoding, monitors, label join and response policy; see the module docstring."""

    def __init__(self, settings: Settings, *, discovery: bool = True, max_models: int = 100,
                 models: dict[str, dict[str, Any]] | None = None,
                 policy: ResponsePolicy | None = None,
                 executor: Executor | None = None) -> None:
        self.settings = settings
        self.executor = executor  # where monitors calibrate (None: inline)
        self.topics = settings.topics
        self.discovery = discovery
        self.max_models = max_models
        # model -> {"feature_names": [...], "task": ..., "baseline": Baseline from a file}
        self.models = dict(models or {})
        self.monitors: dict[tuple[str, str], ModelMonitor] = {}
        self.labels = LabelJoiner(settings.detection.label_ttl,
                                  settings.detection.max_pending_labels,
                                  settings.detection.label_grace)
        self.cloudevents = CloudEventJoiner()
        self.policy = policy or ResponsePolicy()
        self.counts: Counter[str] = Counter()        # events by model/version/kind
        self.invalid: Counter[str] = Counter()       # rejections by reason
        self.actions: Counter[str] = Counter()
        self.feature_names = {m: c["feature_names"] for m, c in self.models.items()
                              if c.get("feature_names")}
        # "topic/partition" -> offset of the last message applied: what a restored checkpoint
        # already holds, so a replay after a restart skips it (exactly-once effect on state)
        self.offsets: dict[str, int] = {}
        self.replayed = 0  # messages skipped because the state already held them
        # models silenced through the admin API (set by the worker from the store): their
        # verdicts are still published and recorded, their actions are not emitted
        self.silenced: frozenset[str] = frozenset()
        self.suppressed: Counter[str] = Counter()  # actions not emitted, by model

    def _fresh(self, messages: Sequence[RawMessage]) -> list[RawMessage]:
        """The messages not yet applied to this state (each partition's in offset order)."""
        out = []
        for msg in messages:
            tp = f"{msg.topic}/{msg.partition}"
            if msg.offset <= self.offsets.get(tp, -1):
                self.replayed += 1
                continue
            self.offsets[tp] = msg.offset
            out.append(msg)
        return out

    # -- predictions ---------------------------------------------------------------------------
    def handle_predictions(self, messages: Sequence[RawMessage]) -> list[Output]:
        out: list[Output] = []
        # per monitor, in arrival order: batches, and lists of single records between them
        by_monitor: dict[tuple[str, str], list[RecordBatch | list[PredictionRecord]]] = {}
        joined: dict[tuple[str, str], list[Outcome]] = {}
        for msg in self._fresh(messages):
            decoded = decode_predictions(msg.value, msg.headers, now=msg.timestamp,
                                         max_bytes=self.settings.kafka.max_message_bytes,
                                         feature_names=self.feature_names,
                                         joiner=self.cloudevents)
            self._dead_letters(msg, decoded, out)
            for batch in decoded.batches:
                key = (batch.model, batch.version)
                if key not in self.monitors and not self._admit(
                        batch.model, batch.version, batch.ts[0], msg, out, None):
                    continue
                by_monitor.setdefault(key, []).append(batch)
                outcomes = self.labels.add_predictions(batch.model, batch.version, batch.ids,
                                                       batch.predictions, batch.ts)
                if outcomes:
                    joined.setdefault(key, []).extend(outcomes)
            for rec in decoded.records:
                key = (rec.model, rec.version)
                if key not in self.monitors and not self._admit(
                        rec.model, rec.version, rec.ts, msg, out, _record_json(rec)):
                    continue
                parts = by_monitor.setdefault(key, [])
                if parts and isinstance(parts[-1], list):
                    parts[-1].append(rec)
                else:
                    parts.append([rec])
                if rec.id is not None and rec.prediction is not None:
                    outcome = self.labels.add_prediction(rec.model, rec.id, rec.version,
                                                         rec.prediction, rec.ts)
                    if outcome is not None:  # its label had arrived first
                        joined.setdefault(key, []).append(outcome)
        for (model, version), parts in by_monitor.items():
            batch = RecordBatch.concat([RecordBatch.of(p) if isinstance(p, list) else p
                                        for p in parts])
            self.counts[f"{model}\x1f{version}\x1fprediction"] += len(batch)
            events = self.monitors[(model, version)].add(batch)
            out += self._events(events)
        out += self._outcomes(joined)
        return out

    def _admit(self, model: str, version: str, ts: float, msg: RawMessage, out: list[Output],
               record: Any) -> bool:
        known = model in self.models
        if not known and (not self.discovery or len(self.monitors) >= self.max_models):
            why = ("discovery is off" if not self.discovery
                   else f"the cap of {self.max_models} models is reached")
            self._reject(msg, Rejection("unknown_model", f"model {model!r}: {why}"), out,
                         record=record)
            return False
        task = self.models.get(model, {}).get("task", "classification")
        # a new version of a known model counts as deployed now (event time), replacing the
        # newest version seen before it: what a rollback would go back to
        earlier = [v for (m, v) in self.monitors if m == model]
        self.policy.register_version(model, version, ts, earlier[-1] if earlier else None)
        self.monitors[(model, version)] = ModelMonitor(
            model, version, self.settings.detection, task=task, executor=self.executor,
            baseline=self.models.get(model, {}).get("baseline"))
        return True

    # -- labels ---------------------------------------------------------------------------
    def handle_labels(self, messages: Sequence[RawMessage]) -> list[Output]:
        out: list[Output] = []
        joined: dict[tuple[str, str], list[Outcome]] = {}
        for msg in self._fresh(messages):
            decoded = decode_label(msg.value, now=msg.timestamp,
                                   max_bytes=self.settings.kafka.max_message_bytes)
            self._dead_letters(msg, decoded, out)
            for lab in decoded.records:
                outcome = self.labels.add_label(lab.model, lab.id, lab.label, lab.ts,
                                                raw=msg.value)
                if outcome is not None:
                    joined.setdefault((outcome.model, outcome.version), []).append(outcome)
        out += self._outcomes(joined)
        return out

    def _outcomes(self, joined: dict[tuple[str, str], list[Outcome]]) -> list[Output]:
        out: list[Output] = []
        for key, outcomes in joined.items():
            monitor = self.monitors.get(key)
            if monitor is not None:
                events = monitor.add_outcomes([o.prediction for o in outcomes],
                                              [o.label for o in outcomes],
                                              self.labels.watermark)
                out += self._events(events)
        for lab in self.labels.take_late():
            out.append(Output(self.topics.late, lab.model.encode(), lab.raw or _dumps(
                {"model": lab.model, "id": lab.id, "label": lab.label, "ts": lab.ts}),
                [("dw.reason", b"no_pending_prediction")]))
        return out

    # -- shared ---------------------------------------------------------------------------
    def _events(self, events: list[dict[str, Any]]) -> list[Output]:
        out = []
        for ev in events:
            out.append(Output(self.topics.drift, ev["model"].encode(), _dumps(ev)))
            if ev["model"] in self.silenced:
                self.suppressed[ev["model"]] += 1
                continue
            for action in self.policy.decide(ev):
                self.actions[f"{action['model']}\x1f{action['action']}"] += 1
                out.append(Output(self.topics.actions, action["model"].encode(),
                                  _dumps(action), [("dw.event_id", action["event_id"].encode())]))
        return out

    def _dead_letters(self, msg: RawMessage, decoded: Decoded, out: list[Output]) -> None:
        for rej in decoded.rejections:
            self._reject(msg, rej, out)

    def _reject(self, msg: RawMessage, rej: Rejection, out: list[Output],
                record: Any = None) -> None:
        self.invalid[rej.reason] += 1
        if record is None and rej.index is not None:
            record = _batch_record(msg.value, rej.index)
        value, headers = dead_letter(msg.value, msg.headers, rej, msg.topic, msg.partition,
                                     msg.offset, record)
        out.append(Output(self.topics.dlq, None, value, headers))

    # -- state ---------------------------------------------------------------------------------
    def to_state(self, pending: bool = True) -> dict[str, Any]:
        """Everything this service has learnt, as JSON-ready data: monitors, pending labels
        and CloudEvent halves, the response policy's memory, counters and the offsets applied.
        :meth:`restore` on a service built from the same settings takes it back. Without the
        pending-label table when ``pending`` is False (checkpoints save it incrementally)."""
        return {"offsets": dict(self.offsets),
                "monitors": [m.to_state() for m in self.monitors.values()],
                "labels": self.labels.to_state(pending), "cloudevents": self.cloudevents.to_state(),
                "policy": self.policy.to_state(), "counts": dict(self.counts),
                "invalid": dict(self.invalid), "actions": dict(self.actions)}

    def restore(self, state: Mapping[str, Any], pending: Any = None,
                deltas: Sequence[Mapping[str, Any]] = ()) -> None:
        """Replace this service's state by a saved one (see :meth:`to_state`); ``pending``
        and ``deltas``: the label table's base and the changes since, when saved apart."""
        journal = self.labels.journal
        self.offsets = {k: int(v) for k, v in state["offsets"].items()}
        self.monitors = {}
        for ms in state["monitors"]:
            m = ModelMonitor.from_state(ms, self.settings.detection, executor=self.executor)
            self.monitors[(m.model, m.version)] = m
        self.labels = LabelJoiner.from_state(state["labels"])
        if pending is not None:
            self.labels.load_pending(pending)
        for delta in deltas:
            self.labels.apply_delta(delta)
        self.labels.journal = journal
        self.cloudevents = CloudEventJoiner.from_state(state["cloudevents"])
        self.policy.restore(state["policy"])
        self.counts = Counter(state["counts"])
        self.invalid = Counter(state["invalid"])
        self.actions = Counter(state["actions"])

    def take_fresh_baselines(self) -> list[dict[str, Any]]:
        """Baselines fitted from a warm-up since the last call, JSON-ready, for the store."""
        out = []
        for m in self.monitors.values():
            if m.fresh_baseline and m.baseline is not None:
                m.fresh_baseline = False
                out.append({"model": m.model, "version": m.version,
                            "summary": orjson.loads(_dumps(m.baseline.to_state())),
                            "rows": m.baseline.n_rows,
                            "source": f"warm-up: the first {m.baseline.n_rows} records"})
        return out

    def verdicts(self) -> list[dict[str, Any]]:
        """The current verdict of every monitored model version and kind."""
        return [v for m in self.monitors.values() for v in m.last_verdicts.values()]


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_default, option=orjson.OPT_SERIALIZE_NUMPY)


def _default(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    raise TypeError(type(x).__name__)


def _record_json(rec: PredictionRecord) -> dict[str, Any]:
    return {"model": rec.model, "version": rec.version, "id": rec.id, "ts": rec.ts,
            "features": rec.features, "prediction": rec.prediction}


def _batch_record(value: bytes, index: int) -> Any:
    try:
        return orjson.loads(value)["records"][index]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return None
