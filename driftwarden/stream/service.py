"""The stream service's core: raw Kafka messages in, messages to produce out. No Kafka here.

:class:`StreamService` is what the Faust agents hand their batches to (STYLE: thin agents over
a plain-Python core). One service is one *shard*: everything of one partition number of the
input topics, which Faust assigns together. It plays the three roles of the two-stage path
(DESIGN 3b), each in its own module:

* **stage 1** (predictions, features, labels; any key): decode, dead-letter what cannot be
  used, admit model versions (discovered up to ``max_models``, or only the configured ones),
  drop a producer's re-sends, and summarise records into partial summaries per source
  partition and event-time slice (:mod:`driftwarden.stream.sources`), published to the
  summaries topic keyed by model; what the label join needs goes to the joins topic, keyed by
  request id (:mod:`driftwarden.stream.joins`);
* **the join** (joins): predictions meet their labels whatever the producers' keys were;
  outcomes become outcome partials, labels without a prediction go to the late topic;
* **stage 2** (summaries): each model's partials from every source merged into its sliding
  windows, tests, verdicts and the response policy (:mod:`driftwarden.stream.merge`) — one
  place decides per model, however many partitions its records were spread over.

With ``loopback`` (the default: tests, notebooks, one process) messages for the joins and
summaries topics are handled by this same service at once, so ``handle_predictions`` returns
the drift and action events directly; the worker turns loopback off and lets Kafka carry them
to the shard that owns them.

>>> from driftwarden.config import load_settings
>>> svc = StreamService(load_settings(env={}))
>>> msg = RawMessage(b"not json", [], "driftwarden.predictions", 0, 7, 1.0)
>>> outs = svc.handle_predictions([msg])
>>> [(o.topic, dict(o.headers)["dw.reason"]) for o in outs]
[('driftwarden.dlq', b'bad_json')]
"""
from __future__ import annotations

import base64
import logging
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

import msgspec
import numpy as np
import orjson

from driftwarden.config import RolloutSpec, Settings
from driftwarden.detectors.baseline import Baseline
from driftwarden.errors import ValidationError
from driftwarden.partials import EventTime, PartialBuilder, peek_model, typed_columns
from driftwarden.schema import (
    CloudEventJoiner,
    Decoded,
    PredictionRecord,
    RecordBatch,
    Rejection,
    decode_label,
    decode_predictions,
)
from driftwarden.stream.baselines import configured_baseline
from driftwarden.stream.dlq import dead_letter
from driftwarden.stream.joins import JoinRouter, JoinStage
from driftwarden.stream.labels import JoinerTables, LabelJoiner
from driftwarden.stream.merge import MergeStage
from driftwarden.stream.monitor import ModelMonitor, batch_columns
from driftwarden.stream.output import Output, RawMessage
from driftwarden.stream.policy import ModelPolicy, ResponsePolicy, rollout_action
from driftwarden.stream.sources import Sources, summary_partition

log = logging.getLogger("driftwarden.stream")
STATE_FORMAT = 2  # a shard's checkpoint: 2 = the three roles (1: one monitor per model)


def output_state(o: Output) -> list[Any]:
    """An output as JSON-ready data (bytes in base64), for the checkpoint's outbox.

    >>> o = Output("t", b"k", b"\\x00v", [("h", b"1")], 3)
    >>> output_from_state(orjson.loads(orjson.dumps(output_state(o)))) == o
    True
    """
    def b64(b: bytes | None) -> str | None:
        return None if b is None else base64.b64encode(b).decode("ascii")
    return [o.topic, b64(o.key), b64(o.value), [[k, b64(v)] for k, v in o.headers],
            o.partition]


def output_from_state(x: Sequence[Any]) -> Output:
    def raw(b: str | None) -> bytes | None:
        return None if b is None else base64.b64decode(b)
    value = raw(x[2])
    return Output(x[0], raw(x[1]), value if value is not None else b"",
                  [(k, raw(v) or b"") for k, v in x[3]], x[4])


def shadow_pairs(specs: Mapping[str, RolloutSpec]
                 ) -> dict[str, tuple[float, dict[str, str]]]:
    """model -> (pairing window, {candidate: baseline}) of its shadow rollouts: what
    :class:`~driftwarden.stream.joins.ShadowPairs` pairs live.

    >>> from driftwarden.config import RolloutSpec
    >>> shadow_pairs({"a": RolloutSpec(model="m", baseline="1", candidates=["2"],
    ...                                strategy="shadow")})
    {'m': (60.0, {'2': '1'})}
    """
    out: dict[str, tuple[float, dict[str, str]]] = {}
    for r in specs.values():
        if r.strategy == "shadow":
            window, pairs = out.get(r.model, (0.0, {}))
            out[r.model] = (max(window, r.pair_seconds),
                            {**pairs, **dict.fromkeys(r.candidates, r.baseline)})
    return out


class StreamService:
    """One shard's three roles; see the module docstring."""

    def __init__(self, settings: Settings, *, discovery: bool = True, max_models: int = 100,
                 models: dict[str, dict[str, Any]] | None = None,
                 policy: ResponsePolicy | None = None,
                 executor: Executor | None = None, loopback: bool = True,
                 partition: int | None = None) -> None:
        self.settings = settings
        self.executor = executor  # where monitors calibrate (None: inline)
        self.topics = settings.topics
        self.discovery = discovery
        self.max_models = max_models
        self.loopback = loopback
        # partitions of the summaries and joins topics (1 with loopback: this service is all)
        self.n_partitions = 1 if loopback else settings.kafka.partitions
        self.partition = partition  # the shard's partition number (None: any, loopback)
        # model -> {"feature_names": [...], "task": ..., "baseline": for every version,
        #           "baselines": {version: Baseline}} (see stream.baselines)
        self.models = dict(models or {})
        d = settings.detection
        # stage 1: a producer's re-sends are recognised among the predictions still pending
        # here (the join itself happens in the join role, keyed by request id: self.labels)
        self.resends = LabelJoiner(d.label_ttl, d.max_pending_labels, d.label_grace)
        self.cloudevents = CloudEventJoiner()
        self.admitted: set[tuple[str, str]] = set()  # model versions stage 1 takes
        self.baselines: dict[tuple[str, str], Baseline] = {}  # known to stage 1 (binned)
        self.data = Sources("data", slice_seconds=d.slice_seconds,
                            allowed_lateness=d.allowed_lateness,
                            n_partitions=self.n_partitions, topic=self.topics.summaries,
                            new_builder=self._data_builder, mirror=self.topics.joins)
        self.router = JoinRouter(self.topics.joins, self.n_partitions)
        self.join = JoinStage(d, summaries=self.topics.summaries, late=self.topics.late,
                              n_partitions=self.n_partitions,
                              tasks={m: c.get("task", "classification")
                                     for m, c in self.models.items()},
                              label_sources=[] if loopback else [
                                  f"{self.topics.labels}/{p}"
                                  for p in range(settings.kafka.partitions)],
                              prediction_sources=[] if loopback else [
                                  f"{t}/{p}" for t in (self.topics.predictions,
                                                       self.topics.features)
                                  for p in range(settings.kafka.partitions)],
                              now=time.monotonic())
        # stage 1 of labels: each label partition's label time, sent to every joins partition
        self.label_times = Sources("labels", slice_seconds=d.slice_seconds,
                                   allowed_lateness=d.allowed_lateness,
                                   n_partitions=self.n_partitions, topic=self.topics.joins,
                                   new_builder=self._no_builder)
        self.merge = MergeStage(self._new_monitor, idle_seconds=d.source_idle_seconds,
                                # expected from now (the worker's clock: monotonic)
                                expect=self._expected_sources(), now=time.monotonic(),
                                known=self._published_baseline,
                                slice_seconds=d.slice_seconds)
        self.policy = policy or ResponsePolicy(ModelPolicy(runbook_url=settings.runbook_base))
        self.set_rollouts(settings.rollouts)  # the config's; the admin API's come later
        self.counts: Counter[str] = Counter()        # records by model/version/kind
        self.invalid: Counter[str] = Counter()       # rejections by reason
        self.actions: Counter[str] = Counter()
        # outputs held until a checkpoint covers them: those of a wall-clock decision (an
        # idle source flushed, a silent one no longer waited for) and every one after it —
        # saved with the state, so a replay after a crash never re-decides what consumers
        # have seen differently (see driftwarden.stream.shards, "Held outputs")
        self.outbox: list[Output] = []
        self.feature_names = {m: c["feature_names"] for m, c in self.models.items()
                              if c.get("feature_names")}
        # "topic/partition" -> offset of the last message applied: what a restored checkpoint
        # already holds, so a replay after a restart skips it (exactly-once effect on state)
        self.offsets: dict[str, int] = {}
        self.replayed = 0  # messages skipped because the state already held them
        self.loop_offset = 0  # loopback messages, numbered like a topic's
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
        # idle close (see handle_idle): the caller's monotonic clock
        self.monotonic = time.monotonic
        self.idle_closes = 0  # handle_idle calls that changed something (state to checkpoint)

    # -- roles' factories -----------------------------------------------------------------------
    def _expected_sources(self) -> tuple[list[str], list[str]]:
        """The sources stage 2 waits for from the start: every input partition (with
        loopback, none: a source counts from its first partial)."""
        if self.loopback:
            return [], []
        n = self.settings.kafka.partitions
        data = [f"{t}/{p}" for t in (self.topics.predictions, self.topics.features)
                for p in range(n)]
        return data, [f"{self.topics.joins}/{p}" for p in range(n)]

    def _configured_baseline(self, model: str, version: str) -> Baseline | None:
        return configured_baseline(self.models, model, version)

    def _data_builder(self, source: str, model: str, version: str,
                      time: EventTime) -> PartialBuilder:
        d = self.settings.detection
        base = self.baselines.get((model, version)) or self._configured_baseline(model, version)
        return PartialBuilder(base, model=model, version=version, source=source,
                              slice_seconds=d.slice_seconds, reservoir_size=d.reservoir_size,
                              seed=d.seed, time=time,
                              task=self.models.get(model, {}).get("task", "classification"))

    @staticmethod
    def _no_builder(source: str, model: str, version: str, time: EventTime) -> Any:
        raise AssertionError("label sources have no builders")

    def _published_baseline(self, model: str, version: str) -> Baseline | None:
        """The baseline stage 2 fitted and published for a model version (this worker's
        stage 1 bins with it), if any."""
        return self.baselines.get((model, version))

    def _new_monitor(self, model: str, version: str, ts: float) -> ModelMonitor | None:
        """Stage 2's monitor of a model version first seen in a partial of event time ``ts``
        (None: refused)."""
        monitors = self.merge.stages
        if model not in self.models and (not self.discovery or len(monitors) >= self.max_models):
            return None
        if "\x00" in model or "\x00" in version:
            return None
        config = self.models.get(model, {})
        # a new version of a known model counts as deployed now, replacing the newest version
        # seen before it: what a rollback would go back to (every partial of a model comes
        # to this one shard, so "before" is the model's whole history)
        earlier = [v for (m, v) in monitors if m == model]
        self.policy.register_version(model, version, ts, earlier[-1] if earlier else None)
        return ModelMonitor(model, version, self.settings.detection,
                            task=config.get("task", "classification"), executor=self.executor,
                            baseline=self._configured_baseline(model, version)
                            or self._published_baseline(model, version))

    @property
    def labels(self) -> LabelJoiner:
        """The label join's table (predictions waiting for their labels)."""
        return self.join.joiner

    def tables(self) -> JoinerTables:
        """The pending tables a checkpoint saves as a base plus deltas."""
        return JoinerTables({"labels": self.join.joiner, "resends": self.resends})

    @property
    def monitors(self) -> dict[tuple[str, str], ModelMonitor]:
        """Stage 2's monitors in this shard (the models whose summaries partition it owns)."""
        return self.merge.monitors

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

    # -- stage 1: predictions --------------------------------------------------------------------
    def handle_predictions(self, messages: Sequence[RawMessage]) -> list[Output]:
        """The outputs of a batch of prediction / feature messages. Whatever raises while one
        message is decoded, admitted or summarised is that message's own failure: it is
        dead-lettered as ``internal_error`` and the others go on. Each message's records are
        judged on time or late against their source partition's event time, in order, and
        reach their model version's partial builder together; if that raises, the parts are
        added one message at a time and the part that raises is dead-lettered (see the
        README's failure modes)."""
        out: list[Output] = []
        # per (source, model, version), in arrival order: (message, on-time records) parts
        by_builder: dict[tuple[str, str, str], list[tuple[RawMessage, RecordBatch]]] = {}
        for msg in self._fresh(messages):
            mark = len(out)
            try:
                parts = self._prediction_parts(msg, out)
            except Exception as exc:  # noqa: BLE001 - one message's failure stays its own
                del out[mark:]
                self._internal_error(msg, exc, out)
                continue
            for key, batch in parts:
                by_builder.setdefault(key, []).append((msg, batch))
        for key, builder_parts in by_builder.items():
            out += self._apply(key, builder_parts)
        out += self.data.publish(self.monotonic()) + self.router.outputs()
        return self._loop(out)

    def _prediction_parts(self, msg: RawMessage, out: list[Output]
                          ) -> list[tuple[tuple[str, str, str], RecordBatch]]:
        """Decode one message, dead-letter what cannot be used, admit its model versions,
        route its predictions to the join; its on-time records by builder."""
        self._inject_fault(msg)
        mark, held, resent = len(out), len(self.cloudevents), 0
        clock = self._clock(msg)
        decoded = decode_predictions(msg.value, msg.headers, now=clock, clock=clock,
                                     max_bytes=self.settings.kafka.max_message_bytes,
                                     limits=self.limits, feature_names=self.feature_names,
                                     joiner=self.cloudevents)
        self._dead_letters(msg, decoded, out)
        source = f"{msg.topic}/{msg.partition}"
        taken: list[RecordBatch] = []
        singles: dict[tuple[str, str], list[PredictionRecord]] = {}
        for batch in decoded.batches:
            if not self._admit(batch.model, batch.version, msg, out, None):
                continue
            whole = len(batch)
            batch = self._without_duplicates(batch)
            resent += whole - len(batch)
            if not len(batch):
                continue
            if not self._within_features(batch.model, batch.feature_names(), msg, out, None):
                continue
            taken.append(batch)
        for i, rec in enumerate(decoded.records):
            if not self._admit(rec.model, rec.version, msg, out, rec):
                continue
            if rec.id is not None and self.resends.duplicates(
                    rec.model, rec.version, [rec.id], [rec.prediction], [rec.ts]):
                self.duplicates[rec.model] += 1
                resent += 1
                continue
            if not self._within_features(rec.model, rec.features.keys(), msg, out, rec,
                                         i if len(decoded.records) > 1 else None):
                continue
            singles.setdefault((rec.model, rec.version), []).append(rec)
        taken += [RecordBatch.of(recs) for recs in singles.values()]
        parts: list[tuple[tuple[str, str, str], RecordBatch]] = []
        for batch in taken:
            self.resends.add_predictions(batch.model, batch.version, batch.ids,
                                        batch.predictions, batch.ts)
            self.router.predictions(source, msg.offset, batch.model, batch.version, batch.ids,
                                    batch.predictions, batch.ts)
            ok = self.data.admit(source, np.asarray(batch.ts, dtype=np.float64))
            if not ok.all():  # late at their source: counted as records, not summarised
                late = int((~ok).sum())
                self.counts[f"{batch.model}\x1f{batch.version}\x1fprediction"] += late
                builder = self.data.builder(source, batch.model, batch.version)
                builder.pending_late += late  # the model's monitor counts them (Partial.late)
                batch = batch.without(np.flatnonzero(~ok).tolist())
            if len(batch):
                parts.append(((source, batch.model, batch.version), batch))
        if not taken and not resent and len(out) == mark and len(self.cloudevents) == held:
            self._reject(msg, Rejection("invalid_record", "the message holds no record"), out)
        # held: a CloudEvent half waiting for the other; duplicate: a producer's re-send
        self.messages["used" if taken else "dead_lettered" if len(out) > mark
                      else "duplicate" if resent else "held"] += 1
        return parts

    def _apply(self, key: tuple[str, str, str],
               parts: list[tuple[RawMessage, RecordBatch]]) -> list[Output]:
        """Give a builder the parts of a batch at once; if that raises, one at a time, and
        dead-letter the part that raises."""
        batch = RecordBatch.concat([b for _, b in parts])
        counter = f"{key[1]}\x1f{key[2]}\x1fprediction"
        try:
            self._summarise(key, batch)
            self.counts[counter] += len(batch)
            return []
        except Exception:  # noqa: BLE001 - a bug must not take the partition down
            log.exception("summarising %s/%s failed on a batch; retrying it message by message",
                          key[1], key[2])
        out: list[Output] = []
        for msg, part in parts:
            try:
                self._summarise(key, part)
            except Exception as exc:  # noqa: BLE001
                self._internal_error(msg, exc, out, fate=False)  # its fate was counted
                continue
            self.counts[counter] += len(part)
        return out

    def _summarise(self, key: tuple[str, str, str], batch: RecordBatch) -> None:
        source, model, version = key
        builder = self.data.builder(source, model, version)
        assert isinstance(builder, PartialBuilder)
        cols = batch_columns(batch, latency=True)
        if builder.baseline is not None:
            cols = typed_columns(builder.baseline, cols)
        self.data.add(source, model, version, cols, np.asarray(batch.ts, dtype=np.float64))

    def _without_duplicates(self, batch: RecordBatch) -> RecordBatch:
        """The batch less the records a producer sent again (see LabelJoiner.duplicates):
        counted, not taken twice, so a retried send leaves the statistics as they were."""
        dup = self.resends.duplicates(batch.model, batch.version, batch.ids, batch.predictions,
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

    def _admit(self, model: str, version: str, msg: RawMessage, out: list[Output],
               record: Any) -> bool:
        """Whether stage 1 takes records of (model, version) (remembered when allowed)."""
        if (model, version) in self.admitted:
            return True
        if "\x00" in model or "\x00" in version:  # names go to the store: no NUL there
            self._reject(msg, Rejection("invalid_record", "a model name or version holds a NUL "
                                        "character"), out, record=record)
            return False
        known = model in self.models
        if not known and (not self.discovery or len(self.admitted) >= self.max_models):
            why = ("discovery is off" if not self.discovery
                   else f"the cap of {self.max_models} models is reached")
            self._reject(msg, Rejection("unknown_model", f"model {model!r}: {why}"), out,
                         record=record)
            return False
        self.admitted.add((model, version))
        return True

    # -- stage 1: labels ------------------------------------------------------------------------
    def handle_labels(self, messages: Sequence[RawMessage]) -> list[Output]:
        """The outputs of a batch of label messages: each label goes to the join (a message
        that raises is dead-lettered as ``internal_error``, the others go on)."""
        out: list[Output] = []
        for msg in self._fresh(messages):
            mark = len(out)
            try:
                self._label(msg, out)
            except Exception as exc:  # noqa: BLE001 - one message's failure stays its own
                del out[mark:]
                self._internal_error(msg, exc, out)
        # rows first, then the label partitions' watermarks (which vouch for those rows)
        out += self.router.outputs() + self.label_times.publish(self.monotonic())
        return self._loop(out)

    def _label(self, msg: RawMessage, out: list[Output]) -> None:
        self._inject_fault(msg)
        clock = self._clock(msg)
        decoded = decode_label(msg.value, now=clock, clock=clock, limits=self.limits,
                               max_bytes=self.settings.kafka.max_message_bytes)
        self._dead_letters(msg, decoded, out)
        self.messages["used" if decoded.records else "dead_lettered"] += 1
        source = f"{msg.topic}/{msg.partition}"
        self.label_times.admit(source, np.array([lab.ts for lab in decoded.records],
                                                dtype=np.float64))
        for lab in decoded.records:  # only what the join needs is kept, not the message
            self.router.label(source, msg.offset, lab.model, lab.id, lab.label, lab.ts)

    # -- the join ---------------------------------------------------------------------------------
    def handle_joins(self, messages: Sequence[RawMessage]) -> list[Output]:
        """Messages of the joins topic (written by stage-1 shards): the outcome partials and
        late labels they cause."""
        out: list[Output] = []
        now = self.monotonic()
        for msg in self._fresh(messages):
            mark = len(out)
            try:
                out += self.join.handle(msg, now)
            except Exception as exc:  # noqa: BLE001 - one message's failure stays its own
                del out[mark:]
                self._internal_error(msg, exc, out, fate=False)
        return self._loop(out)

    # -- stage 2 ---------------------------------------------------------------------------
    def handle_summaries(self, messages: Sequence[RawMessage]) -> list[Output]:
        """Messages of the summaries topic (partials and watermarks from stage-1 shards, edge
        devices, batch jobs): the drift and action events of the slices they close. What is
        not a partial is dead-lettered (``invalid_summary``); a partial in another model's
        partition is forwarded to its own."""
        out: list[Output] = []
        now = self.monotonic()
        for msg in self._fresh(messages):
            mark = len(out)
            try:
                out += self._summary(msg, now)
            except ValidationError as exc:
                self.invalid["invalid_summary"] += 1
                value, headers = dead_letter(msg.value, msg.headers,
                                             Rejection("invalid_summary", str(exc)), msg.topic,
                                             msg.partition, msg.offset, None,
                                             max_bytes=self.limits.dlq_max_bytes)
                out.append(Output(self.topics.dlq, None, value, headers))
            except Exception as exc:  # noqa: BLE001 - one message's failure stays its own
                del out[mark:]
                self._internal_error(msg, exc, out, fate=False)
        return self._loop(out + self._fresh_baselines())

    def _summary(self, msg: RawMessage, now: float) -> list[Output]:
        if not self.loopback and msg.value[:1] != b"{":  # a model's partial, elsewhere?
            model = peek_model(msg.value)
            if model is not None and summary_partition(model, self.n_partitions) != (
                    msg.partition):
                return [Output(msg.topic, msg.value[:0] or None, msg.value, list(
                    (k, v) for k, v in msg.headers if v is not None),
                    partition=summary_partition(model, self.n_partitions))]
        return self._events(self.merge.handle(msg.value, now))

    def _fresh_baselines(self) -> list[Output]:
        """Baselines stage 2 fitted from a warm-up: to the baselines topic (every shard's
        stage 1 bins from then on), or straight to stage 1 with loopback."""
        out = []
        for stage in self.merge.stages.values():
            if not stage.fresh_baseline or stage.monitor.baseline is None:
                continue
            stage.fresh_baseline = False
            model, version = stage.key
            if self.loopback:
                self.set_baseline(model, version, stage.monitor.baseline)
                continue
            # msgpack: the state exactly (floats bit for bit, non-finite values kept), so
            # stage 1 bins over the merge stage's very bins
            body = {"model": model, "version": version,
                    "baseline": stage.monitor.baseline.to_state()}
            out.append(Output(self.topics.baselines, f"{model}\x1f{version}".encode(
                "utf-8", "surrogatepass"), msgspec.msgpack.encode(body)))
        return out

    def set_baseline(self, model: str, version: str, baseline: Baseline) -> None:
        """A baseline stage 2 fitted (from the baselines topic): stage 1 bins from now on."""
        if (model, version) in self.baselines:
            return
        self.baselines[(model, version)] = baseline
        self.data.set_baseline(model, version, baseline)

    def _loop(self, out: list[Output]) -> list[Output]:
        """With loopback, handle the outputs meant for the joins and summaries topics here
        (until none is left); the others are returned."""
        if not self.loopback:
            return out
        done: list[Output] = []
        while out:
            joins = [o for o in out if o.topic == self.topics.joins]
            summaries = [o for o in out if o.topic == self.topics.summaries]
            done += [o for o in out if o.topic not in (self.topics.joins, self.topics.summaries)]
            out = []
            if joins:
                out += self.handle_joins(self._as_messages(joins))
            if summaries:
                out += self.handle_summaries(self._as_messages(summaries))
        return done

    def _as_messages(self, outputs: list[Output]) -> list[RawMessage]:
        msgs = []
        for o in outputs:
            self.loop_offset += 1
            msgs.append(RawMessage(o.value, [], o.topic, 0, self.loop_offset, time.time()))
        return msgs

    # -- idle sources ---------------------------------------------------------------------------
    def handle_idle(self, sources: Sequence[str] | None = None) -> list[Output]:
        """Sources without records for ``idle_close_seconds`` (wall clock) are flushed —
        their open slices published at once — and announced idle, so the merge stage stops
        waiting for them; a model version whose sources are all idle has its event time
        taken to go on at the wall clock's pace from its newest record, so its window drains
        slice by slice, as it would under live traffic with nothing in it (see
        :meth:`ModelMonitor.advance`). ``sources``: the input partitions read to their end
        (None: every source this service knows). Called every second or so by the worker;
        returns the outputs of what it caused.

        >>> from driftwarden.config import load_settings
        >>> svc = StreamService(load_settings(env={}))
        >>> svc.handle_idle()
        []
        """
        after = self.settings.detection.idle_close_seconds
        if after <= 0:
            return []
        now = self.monotonic()
        before = self._progress()
        out: list[Output] = []
        labels = f"{self.topics.labels}/"
        data = None if sources is None else [s for s in sources if not s.startswith(labels)]
        label = None if sources is None else [s for s in sources if s.startswith(labels)]
        out += self.data.idle(now, after, data)
        if not self._data_idle(data):  # only label partitions that never carried a label
            label = [s for s in (self.label_times.times if label is None else label)
                     if not math.isfinite(self.label_times.time(s).max_ts)]
        out += self.label_times.idle(now, after, label)
        out = self._loop(out + self.join.tick(self._joins_source(), now))
        try:
            out += self._loop(self._events(self.merge.idle(now, after)) + self._fresh_baselines())
        except Exception:  # noqa: BLE001 - a bug must not take the partition down
            log.exception("closing idle slices failed")
        if self._progress() != before:
            self.idle_closes += 1
        return out

    def _data_idle(self, caught_up: Sequence[str] | None) -> bool:
        """Whether this shard's label partitions that have carried labels may be taken for
        idle: only once every data input it reads (the predictions and features partitions
        of its number, and any it has had records from) is announced idle. Labels follow
        predictions: a label partition read to its end and quiet while predictions of its
        number still come is waiting for labels (they come in bursts, or its producer is
        failing over), not finished — taking it for idle would close outcome slices its next
        labels belong to, and they would be counted late. A label partition that never
        carried a label goes idle on its own, as data inputs do (an unused features or
        labels partition must not wait for a busy predictions partition: producers keyed by
        model leave most label partitions empty, and each would hold every outcome slice
        back until ``source_idle_seconds``)."""
        inputs = set(self.data.times)
        if self.partition is not None and not self.loopback:
            inputs |= {f"{t}/{self.partition}" for t in (self.topics.predictions,
                                                        self.topics.features)}
        if caught_up is not None:
            inputs |= set(caught_up)
        return inputs <= self.data.idle_sources

    def tick(self) -> list[Output]:
        """The merge stage at the wall clock's ``now``: a source silent for
        ``source_idle_seconds`` stops holding its slices back even when nothing else arrives
        (no partial, no watermark — the sources' owner gone, or its writes refused). Called
        every second or so by the worker, whether or not idle close is on.

        >>> from driftwarden.config import load_settings
        >>> StreamService(load_settings(env={})).tick()
        []
        """
        before = self._progress()
        try:
            out = self._loop(self._events(self.merge.close(self.monotonic()))
                             + self._fresh_baselines())
        except Exception:  # noqa: BLE001 - a bug must not take the partition down
            log.exception("closing slices of silent sources failed")
            out = []
        if self._progress() != before:
            self.idle_closes += 1
        return out

    def finish(self) -> list[Output]:
        """The input has ended (a file replayed, a notebook's last batch): every source is
        flushed and announced idle now, so every open slice closes and is evaluated — without
        the wall-clock drain of :meth:`handle_idle`.

        >>> from driftwarden.config import load_settings
        >>> StreamService(load_settings(env={})).finish()
        []
        """
        now = self.monotonic()
        out = self._loop(self.data.idle(now, 0.0) + self.label_times.idle(now, 0.0))
        out += self._loop(self.join.tick(self._joins_source(), now, force=True))
        return out + self._loop(self._events(self.merge.idle(now, 0.0))
                                + self._fresh_baselines())

    def _joins_source(self) -> str:
        """This shard's joins partition, as its outcome partials name it."""
        return f"{self.topics.joins}/{0 if self.loopback else self.partition}"

    def _progress(self) -> Any:
        return ([m.progress for m in self.monitors.values()], sorted(self.data.idle_sources),
                sorted(self.label_times.idle_sources),
                [(k, len(s.data.open)) for k, s in self.merge.stages.items()])

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
        return out + self._rollout_verdicts()

    def set_rollouts(self, specs: Mapping[str, RolloutSpec]) -> None:
        """The rollouts to judge from now on (the config's and those started through the
        admin API): stage 2 judges them, the policy leaves their candidates' rollback to
        them, the join gives shadow versions their labels."""
        self.merge.rollout_specs = dict(specs)
        self.policy.rollouts = {(r.model, c): name for name, r in specs.items()
                                for c in r.candidates}
        self.join.set_shadows(shadow_pairs(specs))

    def end_rollout(self, name: str, reason: str, promote: str | None = None
                    ) -> list[Output]:
        """A person ended rollout ``name`` (aborted, or ``promote`` a candidate by hand):
        its undecided candidates' verdicts published — only by the shard that judges the
        rollout's model."""
        spec = self.merge.rollout_specs.get(name)
        if spec is None or not (self.loopback or summary_partition(
                spec.model, self.n_partitions) == self.partition):
            return []
        r = self.merge.rollout(name)
        self.merge.decisions += (r.promote_by_hand(promote, reason) if promote is not None
                                 else r.finish(reason))
        return self._rollout_verdicts()

    def rollouts(self) -> list[dict[str, Any]]:
        """The status of the rollouts judged here (see
        :meth:`driftwarden.detectors.rollout.Rollout.status`)."""
        return [r.status() for _, r in sorted(self.merge.rollouts.items())]

    def _rollout_verdicts(self) -> list[Output]:
        """The rollouts' new final verdicts (reached by the slices just merged): logged, and
        each an action event (promote, rollback, or review when inconclusive)."""
        out = []
        for d in self.merge.take_decisions():
            log.info("rollout %s: %s %s (%s) after %s", d.rollout, d.verdict, d.candidate,
                     d.reason, d.samples)
            if d.model in self.silenced:
                self.suppressed[d.model] += 1
                continue
            action = rollout_action(d, self.settings.runbook_base)
            self.actions[f"{action['model']}\x1f{action['action']}"] += 1
            out.append(Output(self.topics.actions, action["model"].encode(), _dumps(action),
                              [("dw.event_id", action["event_id"].encode())]))
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
        """Everything this service has learnt, as JSON-ready data: the three roles' state,
        the pending predictions (re-sends) and CloudEvent halves, the response policy's
        memory, counters and the offsets applied. :meth:`restore` on a service built from
        the same settings takes it back. Without the pending-prediction table when
        ``pending`` is False (checkpoints save it incrementally)."""
        return {"format": STATE_FORMAT, "offsets": dict(self.offsets),
                "loop_offset": self.loop_offset, "resends": self.resends.to_state(pending),
                "admitted": sorted(self.admitted),
                "baselines": [[m, v, b.to_state()] for (m, v), b in self.baselines.items()],
                "data": self.data.to_state(), "join": self.join.to_state(pending),
                "label_times": self.label_times.to_state(),
                "merge": self.merge.to_state(),
                "cloudevents": self.cloudevents.to_state(),
                "policy": self.policy.to_state(), "counts": dict(self.counts),
                "invalid": dict(self.invalid), "actions": dict(self.actions),
                "messages": dict(self.messages), "duplicates": dict(self.duplicates),
                "model_features": {m: sorted(f) for m, f in self.model_features.items()},
                "outbox": [output_state(o) for o in self.outbox]}

    def restore(self, state: Mapping[str, Any], pending: Any = None,
                deltas: Sequence[Mapping[str, Any]] = ()) -> None:
        """Replace this service's state by a saved one (see :meth:`to_state`); ``pending``
        and ``deltas``: the label table's base and the changes since, when saved apart."""
        if state.get("format") != STATE_FORMAT:
            raise ValidationError(f"a checkpoint of format {state.get('format', 1)} (this "
                                  f"driftwarden reads {STATE_FORMAT}): starting afresh")
        journal = self.tables().journal
        now = self.monotonic()
        self.offsets = {k: int(v) for k, v in state["offsets"].items()}
        self.loop_offset = int(state.get("loop_offset", 0))
        self.admitted = {(m, v) for m, v in state["admitted"]}
        self.baselines = {(m, v): Baseline.from_state(b) for m, v, b in state["baselines"]}
        d = self.settings.detection

        def builder(source: str, model: str, version: str, time: EventTime,
                    st: Any) -> PartialBuilder:
            return PartialBuilder.from_state(
                st, model=model, version=version, source=source,
                slice_seconds=d.slice_seconds, reservoir_size=d.reservoir_size, seed=d.seed,
                time=time,
                task=self.models.get(model, {}).get("task", "classification"))

        self.data.load(state["data"], builder)
        self.join.restore(state["join"], now)
        self.label_times.load(state["label_times"], builder)
        self.merge.restore(state["merge"], lambda ms: ModelMonitor.from_state(
            ms, self.settings.detection, executor=self.executor), now)
        self.resends = LabelJoiner.from_state(state["resends"])
        tables = self.tables()
        if pending is not None:
            tables.load_pending(pending)
        for delta in deltas:
            tables.apply_delta(delta)
        tables.journal = journal
        self.cloudevents = CloudEventJoiner.from_state(state["cloudevents"])
        self.policy.restore(state["policy"])
        self.counts = Counter(state["counts"])
        self.invalid = Counter(state["invalid"])
        self.actions = Counter(state["actions"])
        self.messages = Counter(state.get("messages", {}))
        self.outbox = [output_from_state(o) for o in state.get("outbox", [])]
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
