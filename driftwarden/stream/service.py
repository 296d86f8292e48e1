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

import logging
import math
import time
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
from driftwarden.stream.policy import ModelPolicy, ResponsePolicy

log = logging.getLogger("driftwarden.stream")


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
        # model -> {"feature_names": [...], "task": ..., "baseline": for every version,
        #           "baselines": {version: Baseline}} (see stream.baselines)
        self.models = dict(models or {})
        self.monitors: dict[tuple[str, str], ModelMonitor] = {}
        self.labels = LabelJoiner(settings.detection.label_ttl,
                                  settings.detection.max_pending_labels,
                                  settings.detection.label_grace)
        self.cloudevents = CloudEventJoiner()
        self.policy = policy or ResponsePolicy(ModelPolicy(runbook_url=settings.runbook_base))
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
        self.limits = settings.limits
        # each fresh message's fate, once: used, dead_lettered, duplicate (every record of it
        # a re-send), held (a CloudEvent half)
        self.messages: Counter[str] = Counter()
        self.model_features: dict[str, set[str]] = {}  # the feature names seen per model
        self.duplicates: Counter[str] = Counter()  # records a producer sent twice, by model
        self.fault_every = settings.fault_every  # tests: every Nth offset raises (0: never)
        # idle close: when each monitor last took records (monotonic seconds; a restored
        # monitor counts from its restore), and the ones already reported idle
        self.monotonic = time.monotonic
        self.last_records: dict[tuple[str, str], float] = {}
        self.idle: set[tuple[str, str]] = set()
        self.idle_closes = 0  # handle_idle calls that changed a monitor (state to checkpoint)

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
        """The outputs of a batch of prediction / feature messages. Whatever raises while one
        message is decoded, admitted or joined is that message's own failure: it is
        dead-lettered as ``internal_error`` and the others go on. The records of the batch
        then reach their monitors together (one update per model version); if that update
        raises, the monitor's parts are applied again one message at a time and the part that
        raises is dead-lettered (see the README's failure modes)."""
        out: list[Output] = []
        # per monitor, in arrival order: (message, records of it) parts
        by_monitor: dict[tuple[str, str], list[tuple[RawMessage, RecordBatch]]] = {}
        joined: dict[tuple[str, str], list[Outcome]] = {}
        for msg in self._fresh(messages):
            mark = len(out)
            try:
                parts = self._prediction_parts(msg, out, joined)
            except Exception as exc:  # noqa: BLE001 - one message's failure stays its own
                del out[mark:]
                self._internal_error(msg, exc, out)
                continue
            for key, batch in parts:
                by_monitor.setdefault(key, []).append((msg, batch))
        for key, monitor_parts in by_monitor.items():
            out += self._apply(key, monitor_parts)
        out += self._outcomes(joined)
        return out

    def _prediction_parts(self, msg: RawMessage, out: list[Output],
                          joined: dict[tuple[str, str], list[Outcome]]
                          ) -> list[tuple[tuple[str, str], RecordBatch]]:
        """Decode one message, dead-letter what cannot be used, admit its model versions and
        remember its predictions for the label join; its records by monitor."""
        self._inject_fault(msg)
        mark, held, resent = len(out), len(self.cloudevents), 0
        clock = self._clock(msg)
        decoded = decode_predictions(msg.value, msg.headers, now=clock, clock=clock,
                                     max_bytes=self.settings.kafka.max_message_bytes,
                                     limits=self.limits, feature_names=self.feature_names,
                                     joiner=self.cloudevents)
        self._dead_letters(msg, decoded, out)
        parts: list[tuple[tuple[str, str], RecordBatch]] = []
        singles: dict[tuple[str, str], list[PredictionRecord]] = {}
        for batch in decoded.batches:
            key = (batch.model, batch.version)
            if not self._admit(batch.model, batch.version, batch.ts[0], msg, out, None):
                continue
            whole = len(batch)
            batch = self._without_duplicates(batch)
            resent += whole - len(batch)
            if not len(batch):
                continue
            if not self._within_features(batch.model, batch.feature_names(), msg, out, None):
                continue
            parts.append((key, batch))
            outcomes = self.labels.add_predictions(batch.model, batch.version, batch.ids,
                                                   batch.predictions, batch.ts)
            if outcomes:
                joined.setdefault(key, []).extend(outcomes)
        for i, rec in enumerate(decoded.records):
            key = (rec.model, rec.version)
            if not self._admit(rec.model, rec.version, rec.ts, msg, out, rec):
                continue
            if rec.id is not None and self.labels.duplicates(
                    rec.model, rec.version, [rec.id], [rec.prediction], [rec.ts]):
                self.duplicates[rec.model] += 1
                resent += 1
                continue
            if not self._within_features(rec.model, rec.features.keys(), msg, out, rec,
                                         i if len(decoded.records) > 1 else None):
                continue
            singles.setdefault(key, []).append(rec)
            if rec.id is not None and rec.prediction is not None:
                outcome = self.labels.add_prediction(rec.model, rec.id, rec.version,
                                                     rec.prediction, rec.ts)
                if outcome is not None:  # its label had arrived first
                    joined.setdefault(key, []).append(outcome)
        parts += [(key, RecordBatch.of(recs)) for key, recs in singles.items()]
        if not parts and not resent and len(out) == mark and len(self.cloudevents) == held:
            self._reject(msg, Rejection("invalid_record", "the message holds no record"), out)
        # held: a CloudEvent half waiting for the other; duplicate: a producer's re-send
        self.messages["used" if parts else "dead_lettered" if len(out) > mark
                      else "duplicate" if resent else "held"] += 1
        return parts

    def _apply(self, key: tuple[str, str],
               parts: list[tuple[RawMessage, RecordBatch]]) -> list[Output]:
        """Feed a monitor the parts of a batch at once; if that raises, one at a time, and
        dead-letter the part that raises."""
        monitor = self.monitors[key]
        self.last_records[key] = self.monotonic()
        self.idle.discard(key)
        counter = f"{key[0]}\x1f{key[1]}\x1fprediction"
        batch = RecordBatch.concat([b for _, b in parts])
        try:
            events = monitor.add(batch)
        except Exception:  # noqa: BLE001 - a bug must not take the partition down
            log.exception("monitor %s/%s failed on a batch; retrying it message by message",
                          *key)
        else:
            self.counts[counter] += len(batch)
            return self._events(events)
        out: list[Output] = []
        for msg, part in parts:
            try:
                events = monitor.add(part)
            except Exception as exc:  # noqa: BLE001
                self._internal_error(msg, exc, out, fate=False)  # its fate was counted
                continue
            self.counts[counter] += len(part)
            out += self._events(events)
        return out

    def _without_duplicates(self, batch: RecordBatch) -> RecordBatch:
        """The batch less the records a producer sent again (see LabelJoiner.duplicates):
        counted, not taken twice, so a retried send leaves the statistics as they were."""
        dup = self.labels.duplicates(batch.model, batch.version, batch.ids, batch.predictions,
                                     batch.ts)
        if not dup:
            return batch
        self.duplicates[batch.model] += len(dup)
        return batch.without(dup)

    def _within_features(self, model: str, names: Any, msg: RawMessage, out: list[Output],
                         record: Any, index: int | None = None) -> bool:
        """Whether the features ``names`` keep ``model`` within ``max_features_per_model``
        (remembering the new ones); dead-letters the records otherwise."""
        known = self.model_features.setdefault(model, set())
        if known.issuperset(names):
            return True
        new = set(names).difference(known)
        if any("\x00" in n for n in new):  # names go to the store and to metric labels
            self._reject(msg, Rejection("invalid_record", "a feature name holds a NUL "
                                        "character", index), out, record=record)
            return False
        cap = self.limits.max_features_per_model
        if len(known) + len(new) > cap:
            self._reject(msg, Rejection("limit_exceeded", f"model {model[:64]!r} would have more "
                                        f"than max_features_per_model {cap} features", index),
                         out, record=record)
            return False
        known.update(new)
        return True

    def _internal_error(self, msg: RawMessage, exc: BaseException, out: list[Output],
                        fate: bool = True) -> None:
        log.warning("internal error on %s/%d@%d, dead-lettered: %s: %s", msg.topic,
                    msg.partition, msg.offset, type(exc).__name__, str(exc)[:200])
        if fate:
            self.messages["dead_lettered"] += 1
        self._reject(msg, Rejection("internal_error", f"{type(exc).__name__}: {exc}"), out)

    def _inject_fault(self, msg: RawMessage) -> None:
        """The fault suite's hook: handling the message at every offset N-1 mod N raises."""
        if self.fault_every and msg.offset % self.fault_every == self.fault_every - 1:
            raise RuntimeError(f"fault injected at offset {msg.offset} (fault_every)")

    @staticmethod
    def _clock(msg: RawMessage) -> float:
        """The time a message vouches for: its Kafka timestamp, but never after the wall
        clock (a producer sets it; a replay of old messages sees the same value)."""
        return min(msg.timestamp, time.time())

    def _admit(self, model: str, version: str, ts: float, msg: RawMessage, out: list[Output],
               record: Any) -> bool:
        """Whether records of (model, version) have a monitor (made now when allowed)."""
        if (model, version) in self.monitors:
            return True
        if "\x00" in model or "\x00" in version:  # names go to the store: no NUL there
            self._reject(msg, Rejection("invalid_record", "a model name or version holds a NUL "
                                        "character"), out, record=record)
            return False
        known = model in self.models
        if not known and (not self.discovery or len(self.monitors) >= self.max_models):
            why = ("discovery is off" if not self.discovery
                   else f"the cap of {self.max_models} models is reached")
            self._reject(msg, Rejection("unknown_model", f"model {model!r}: {why}"), out,
                         record=record)
            return False
        config = self.models.get(model, {})
        task = config.get("task", "classification")
        # a new version of a known model counts as deployed now (event time), replacing the
        # newest version seen before it: what a rollback would go back to
        earlier = [v for (m, v) in self.monitors if m == model]
        self.policy.register_version(model, version, ts, earlier[-1] if earlier else None)
        self.monitors[(model, version)] = ModelMonitor(
            model, version, self.settings.detection, task=task, executor=self.executor,
            baseline=config.get("baselines", {}).get(version) or config.get("baseline"))
        return True

    # -- labels ---------------------------------------------------------------------------
    def handle_labels(self, messages: Sequence[RawMessage]) -> list[Output]:
        """The outputs of a batch of label messages (a message that raises is dead-lettered
        as ``internal_error``, the others go on)."""
        out: list[Output] = []
        joined: dict[tuple[str, str], list[Outcome]] = {}
        for msg in self._fresh(messages):
            mark = len(out)
            try:
                self._label(msg, out, joined)
            except Exception as exc:  # noqa: BLE001 - one message's failure stays its own
                del out[mark:]
                self._internal_error(msg, exc, out)
        out += self._outcomes(joined)
        return out

    def _label(self, msg: RawMessage, out: list[Output],
               joined: dict[tuple[str, str], list[Outcome]]) -> None:
        self._inject_fault(msg)
        clock = self._clock(msg)
        decoded = decode_label(msg.value, now=clock, clock=clock, limits=self.limits,
                               max_bytes=self.settings.kafka.max_message_bytes)
        self._dead_letters(msg, decoded, out)
        self.messages["used" if decoded.records else "dead_lettered"] += 1
        for lab in decoded.records:  # only what the join needs is kept, not the message
            outcome = self.labels.add_label(lab.model, lab.id, lab.label, lab.ts)
            if outcome is not None:
                joined.setdefault((outcome.model, outcome.version), []).append(outcome)

    def _outcomes(self, joined: dict[tuple[str, str], list[Outcome]]) -> list[Output]:
        out: list[Output] = []
        for key, outcomes in joined.items():
            monitor = self.monitors.get(key)
            if monitor is None:
                continue
            try:
                events = monitor.add_outcomes([o.prediction for o in outcomes],
                                              [o.label for o in outcomes],
                                              self.labels.watermark)
            except Exception:  # noqa: BLE001 - a bug must not take the partition down
                log.exception("monitor %s/%s failed on %d outcomes; they are not counted",
                              *key, len(outcomes))
                self.invalid["internal_error"] += len(outcomes)
                continue
            out += self._events(events)
        for lab in self.labels.take_late():
            out.append(Output(self.topics.late, lab.model.encode(), _dumps(
                {"model": lab.model, "id": lab.id, "label": lab.label, "ts": lab.ts}),
                [("dw.reason", b"no_pending_prediction")]))
        return out

    # -- idle sources ---------------------------------------------------------------------------
    def handle_idle(self) -> list[Output]:
        """Close the slices of the monitors whose records stopped ``idle_close_seconds`` ago
        (wall clock): their event time is taken to go on at the wall clock's pace from their
        newest record, so the open slices close and are evaluated, and the window then drains
        slice by slice, as it would under live traffic with nothing in it (see
        :meth:`ModelMonitor.advance`). Called every second or so by the worker; returns the
        outputs of the events it caused.

        >>> from driftwarden.config import load_settings
        >>> svc = StreamService(load_settings(env={}))
        >>> svc.handle_idle()
        []
        """
        after = self.settings.detection.idle_close_seconds
        if after <= 0:
            return []
        now = self.monotonic()
        out: list[Output] = []
        for key, monitor in self.monitors.items():
            quiet = now - self.last_records.setdefault(key, now)
            if quiet < after or not monitor.idle_work:
                continue
            newest = monitor.max_ts
            if not math.isfinite(newest):
                continue
            if key not in self.idle:
                self.idle.add(key)
                log.info("%s v%s: no records for %.0f s: closing its open slices (event time "
                         "taken to go on from its newest record)", key[0], key[1], quiet)
            before = monitor.progress
            try:
                events = monitor.advance(newest + quiet)
            except Exception:  # noqa: BLE001 - a bug must not take the partition down
                log.exception("monitor %s/%s failed closing idle slices", *key)
                continue
            if monitor.progress != before:
                self.idle_closes += 1
            out += self._events(events)
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
        if isinstance(record, PredictionRecord):
            record = _record_json(record)
        elif record is None and rej.index is not None:
            record = _batch_record(msg.value, rej.index)
        value, headers = dead_letter(msg.value, msg.headers, rej, msg.topic, msg.partition,
                                     msg.offset, record, max_bytes=self.limits.dlq_max_bytes)
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
                "invalid": dict(self.invalid), "actions": dict(self.actions),
                "messages": dict(self.messages), "duplicates": dict(self.duplicates),
                "model_features": {m: sorted(f) for m, f in self.model_features.items()}}

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
        self.messages = Counter(state.get("messages", {}))
        self.duplicates = Counter(state.get("duplicates", {}))
        self.model_features = {m: set(f) for m, f in state.get("model_features", {}).items()}

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
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, RecursionError):
        return None
