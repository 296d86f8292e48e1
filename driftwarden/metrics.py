"""Every Prometheus metric of driftwarden, declared once (prefix ``driftwarden_``).

Nothing registers on the global registry at import: :meth:`Metrics.create` builds the metrics
on a registry passed in. Two kinds:

* **instrumented** — observed as things happen (processing lag, consumer lag, checkpoints);
* **read from state at scrape time** — a collector walks the worker's monitors and counters
  when Prometheus scrapes (counts, drift scores, verdicts, performance). The stream pays
  nothing per record for them, and a series exists only for a (model, version) that has a
  monitor: models are capped by ``max_models`` (an unknown model beyond the cap is rejected
  to the DLQ, not given series), features come from the model's baseline (at most
  :data:`MAX_FEATURES` per model, the most drifted first), reasons and kinds are fixed sets.

``DEFINITIONS`` lists every metric with its type, help and labels; dashboards and alert rules
are built from these names (see the README's metrics table).

>>> from prometheus_client import CollectorRegistry, generate_latest
>>> registry = CollectorRegistry()
>>> m = Metrics.create(registry, lambda: [])
>>> m.processing_lag.observe(0.2)
>>> registry.get_sample_value("driftwarden_processing_lag_seconds_count")
1.0
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "driftwarden_"
MAX_FEATURES = 200  # feature series per (model, version): the most drifted ones beyond this
KINDS = ("data", "prediction", "quality", "concept")
SEVERITY = {"none": 0, "warning": 1, "critical": 2}

# Seconds from a message's broker timestamp to the moment the worker took it. Slices are
# seconds long and the latency target is p99 < 2 s: fine buckets below 2 s, coarse ones above
# for a worker catching up (minutes) or replaying (hours).
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0,
               300.0, 1800.0, 3600.0)


@dataclass(frozen=True)
class Definition:
    name: str      # without the prefix
    type: str      # counter | gauge | histogram
    help: str
    labels: tuple[str, ...] = ()
    instrumented: bool = False  # observed as it happens; else read from state at scrape time

    @property
    def full_name(self) -> str:
        return PREFIX + self.name


DEFINITIONS = {d.name: d for d in (
    # instrumented
    Definition("processing_lag_seconds", "histogram",
               "Seconds from a message's broker timestamp to the worker taking it.",
               instrumented=True),
    Definition("consumer_lag_messages", "gauge",
               "Messages waiting in a source partition (end offset minus the last taken).",
               ("topic", "partition"), instrumented=True),
    Definition("stalled_partitions", "gauge",
               "Source partitions with waiting messages and no progress for stall_seconds.",
               instrumented=True),
    Definition("checkpoints_total", "counter", "State checkpoints written and confirmed.",
               instrumented=True),
    Definition("checkpoint_bytes", "gauge", "Compressed bytes of the last checkpoint.",
               instrumented=True),
    Definition("model_silenced", "gauge",
               "1 while a model is silenced through the admin API (no actions, no pages).",
               ("model",), instrumented=True),
    Definition("api_refused_total", "counter",
               "Admin API requests refused for want of a valid token (not audited one by one).",
               ("reason",), instrumented=True),
    Definition("broker_unreachable", "gauge",
               "1 while the broker has been unreachable for stall_seconds or more.",
               instrumented=True),
    # read from state at scrape time
    Definition("messages_total", "counter",
               "Source messages by fate: used (records taken), dead_lettered, duplicate (a "
               "producer's re-send), held (a CloudEvent half waiting for its other half). "
               "Each message counts once.",
               ("outcome",)),
    Definition("duplicates_total", "counter",
               "Records dropped as a producer's re-send of a prediction still waiting for its "
               "label (same id, version, prediction and event time).", ("model",)),
    Definition("output_failures_total", "counter",
               "Outputs the producer refused or could not deliver (logged, not retried)."),
    Definition("events_total", "counter",
               "Records taken per model, version and kind (prediction).",
               ("model", "version", "kind")),
    Definition("invalid_events_total", "counter",
               "Messages rejected to the dead-letter topic, by reason.", ("reason",)),
    Definition("late_events_total", "counter",
               "Records older than the watermark (counted, not merged into a window).",
               ("model", "version")),
    Definition("feature_drift_score", "gauge",
               "Statistic of a drift test on a feature's window against its baseline.",
               ("model", "version", "feature", "test")),
    Definition("feature_drift_pvalue", "gauge",
               "Multiplicity-adjusted p-value of a drift test (NaN when the test has none).",
               ("model", "version", "feature", "test")),
    Definition("feature_drift_threshold", "gauge",
               "Threshold the drift score is compared with (calibrated or configured).",
               ("model", "version", "feature", "test")),
    Definition("drift_detected", "gauge",
               "1 while the model's verdict of this kind is drift, else 0.",
               ("model", "version", "kind")),
    Definition("drift_severity", "gauge",
               "Verdict severity: 0 none, 1 warning, 2 critical.", ("model", "version", "kind")),
    Definition("model_performance", "gauge",
               "Realized (joined labels; window_* over the sliding window) and estimated "
               "(label-free, CBPE) performance.", ("model", "version", "metric")),
    Definition("missing_ratio", "gauge", "Share of the window's rows missing the feature.",
               ("model", "version", "feature")),
    Definition("unseen_ratio", "gauge",
               "Share of the window's values of a categorical feature not in its baseline.",
               ("model", "version", "feature")),
    Definition("window_fill_ratio", "gauge", "Closed slices in the window over its size.",
               ("model", "version")),
    Definition("label_outcomes_total", "counter", "Predictions joined with their label.",
               ("model", "version")),
    Definition("label_join_ratio", "gauge",
               "Joined outcomes over predictions seen (labels arrive late or never).",
               ("model", "version")),
    Definition("actions_total", "counter", "Action events emitted (rollback/retrain/review).",
               ("model", "action")),
    Definition("partials_total", "counter",
               "Partial summaries the merge stage took, by fate: merged, duplicate (a replay), "
               "late (its slice had closed: counted, not merged), mismatched (other bins).",
               ("model", "version", "kind", "fate")),
    Definition("late_partial_rows_total", "counter",
               "Records in partials that came after their slice closed (not merged).",
               ("model", "version", "kind")),
    Definition("late_outcomes_total", "counter",
               "Joined outcomes not counted: their slice of label time had closed (a label "
               "that waited past its partition's watermark).", ()),
    Definition("shadow_pairs_total", "counter",
               "Shadow mode: the serving and shadow versions' predictions of the same request "
               "id, by fate: paired, unpaired (no partner within pair_seconds), apart "
               "(partner too far in event time), evicted (max_pending_labels), duplicate "
               "(a version's second prediction of a request), late (its slice had closed).",
               ("fate",)),
    Definition("source_lag_seconds", "gauge",
               "How far the slowest active source (input partition, device) is behind the most "
               "advanced one, in event time: a device catching up, a partition behind.",
               ("kind",)),
    Definition("sources", "gauge",
               "Sources the merge stage knows, by state: active, idle (said so), silent "
               "(nothing for source_idle_seconds: no longer waited for).", ("kind", "state")),
    Definition("rollout_verdict", "gauge",
               "1 for a rollout candidate's current verdict (continue, promote, rollback, "
               "inconclusive), 0 for the others; final verdicts stay.",
               ("rollout", "model", "candidate", "verdict")),
    Definition("rollout_difference", "gauge",
               "A rollout signal's difference candidate - baseline (losses: lower is better) "
               "at the last compared slice: its estimate, anytime-valid lower / upper bounds, "
               "and the margin it is judged against.",
               ("rollout", "candidate", "signal", "bound")),
    Definition("rollout_samples", "gauge",
               "Labelled outcomes (shadow: paired requests) a rollout has compared, per "
               "version.", ("rollout", "candidate", "version")),
    Definition("notifications_sent_total", "counter",
               "Items delivered to a side channel (grafana annotations, alertmanager).",
               ("sink",)),
    Definition("notifications_dropped_total", "counter",
               "Items a side channel dropped: its queue was full, or the service refused them.",
               ("sink",)),
    Definition("notification_failures_total", "counter",
               "Failed deliveries to a side channel (each retry counts).", ("sink",)),
    Definition("notification_queue", "gauge", "Items waiting for a side channel.", ("sink",)),
)}


class Metrics:
    """The instrumented metrics of one worker, on one registry; see the module docstring."""

    def __init__(self, registry: CollectorRegistry) -> None:
        d = DEFINITIONS
        self.registry = registry
        self.processing_lag = Histogram(
            d["processing_lag_seconds"].full_name, d["processing_lag_seconds"].help,
            buckets=LAG_BUCKETS, registry=registry)
        self.consumer_lag = Gauge(d["consumer_lag_messages"].full_name,
                                  d["consumer_lag_messages"].help,
                                  d["consumer_lag_messages"].labels, registry=registry)
        self.stalled = Gauge(d["stalled_partitions"].full_name, d["stalled_partitions"].help,
                             registry=registry)
        self.checkpoints = Counter(d["checkpoints_total"].full_name.removesuffix("_total"),
                                   d["checkpoints_total"].help, registry=registry)
        self.checkpoint_bytes = Gauge(d["checkpoint_bytes"].full_name,
                                      d["checkpoint_bytes"].help, registry=registry)
        self.silenced = Gauge(d["model_silenced"].full_name, d["model_silenced"].help,
                              d["model_silenced"].labels, registry=registry)
        self.api_refused = Counter(d["api_refused_total"].full_name.removesuffix("_total"),
                                   d["api_refused_total"].help, d["api_refused_total"].labels,
                                   registry=registry)
        self.broker_unreachable = Gauge(d["broker_unreachable"].full_name,
                                        d["broker_unreachable"].help, registry=registry)

    @classmethod
    def create(cls, registry: CollectorRegistry, services: Callable[[], Iterable[Any]],
               sinks: Iterable[Any] = (), output_failures: Callable[[], int] | None = None
               ) -> Metrics:
        """The instrumented metrics plus a collector reading ``services()`` (the worker's
        :class:`~driftwarden.stream.service.StreamService` objects) and ``sinks`` (its
        :class:`~driftwarden.notify.SideSender` objects) at scrape time."""
        m = cls(registry)
        registry.register(StateCollector(services, sinks, output_failures))
        return m

    def set_silenced(self, models: Iterable[str]) -> None:
        """Replace the silenced-model series (a model whose silence ended disappears)."""
        self.silenced.clear()
        for model in models:
            self.silenced.labels(model).set(1)

    def set_consumer_lag(self, lag: dict[tuple[str, int], int]) -> None:
        """Replace the consumer-lag series by ``lag`` (partitions no longer held disappear)."""
        self.consumer_lag.clear()
        for (topic, partition), n in lag.items():
            self.consumer_lag.labels(topic, str(partition)).set(n)


def _family(name: str) -> Any:
    d = DEFINITIONS[name]
    if d.type == "counter":
        return CounterMetricFamily(d.full_name, d.help, labels=d.labels)
    return GaugeMetricFamily(d.full_name, d.help, labels=d.labels)


class StateCollector(Collector):
    """Reads the worker's state when Prometheus scrapes; see the module docstring."""

    def __init__(self, services: Callable[[], Iterable[Any]], sinks: Iterable[Any] = (),
                 output_failures: Callable[[], int] | None = None) -> None:
        self.services = services
        self.sinks = list(sinks)
        self.output_failures = output_failures

    def describe(self) -> Iterator[Metric]:
        return iter(())  # no describe-time scrape: the state may still be restoring

    def collect(self) -> Iterator[Metric]:
        fam = {name: _family(name) for name, d in DEFINITIONS.items() if not d.instrumented}
        invalid: dict[str, float] = {}
        counts: dict[tuple[str, ...], float] = {}
        actions: dict[tuple[str, ...], float] = {}
        fates: dict[str, float] = {}
        dups: dict[str, float] = {}
        late_outcomes = 0
        pairs: dict[str, float] = {}
        sources: dict[str, dict[str, Any]] = {}
        now = time.monotonic()  # the clock the worker's source clocks use
        for svc in list(self.services()):
            for reason, n in svc.invalid.items():
                invalid[reason] = invalid.get(reason, 0) + n
            for fate, n in svc.messages.items():
                fates[fate] = fates.get(fate, 0) + n
            for model, n in svc.duplicates.items():
                dups[model] = dups.get(model, 0) + n
            for key, n in svc.counts.items():
                k = tuple(key.split("\x1f"))
                counts[k] = counts.get(k, 0) + n
            for key, n in svc.actions.items():
                k = tuple(key.split("\x1f"))
                actions[k] = actions.get(k, 0) + n
            for monitor in list(svc.monitors.values()):
                _monitor_samples(fam, monitor)
            merge = getattr(svc, "merge", None)
            if merge is not None:
                _merge_samples(fam, merge, sources, now)
                _rollout_samples(fam, svc.rollouts())
                late_outcomes += svc.join.late_rows
                for fate, n in {**svc.join.pairs.fates(), "late": svc.join.late_pairs}.items():
                    pairs[fate] = pairs.get(fate, 0) + n
        for reason, n in sorted(invalid.items()):
            fam["invalid_events_total"].add_metric([reason], n)
        for k, n in sorted(counts.items()):
            fam["events_total"].add_metric(list(k), n)
        for k, n in sorted(actions.items()):
            fam["actions_total"].add_metric(list(k), n)
        for fate, n in sorted(fates.items()):
            fam["messages_total"].add_metric([fate], n)
        for model, n in sorted(dups.items()):
            fam["duplicates_total"].add_metric([model], n)
        fam["late_outcomes_total"].add_metric([], late_outcomes)
        for fate, n in sorted(pairs.items()):
            fam["shadow_pairs_total"].add_metric([fate], n)
        _source_samples(fam, sources)
        if self.output_failures is not None:
            fam["output_failures_total"].add_metric([], self.output_failures())
        for sink in self.sinks:
            fam["notifications_sent_total"].add_metric([sink.name], sink.sent)
            fam["notifications_dropped_total"].add_metric([sink.name], sink.dropped)
            fam["notification_failures_total"].add_metric([sink.name], sink.failures)
            fam["notification_queue"].add_metric([sink.name], sink.depth)
        yield from fam.values()


VERDICTS = ("continue", "promote", "rollback", "inconclusive")
BOUNDS = ("estimate", "lower", "upper", "margin")


def _rollout_samples(fam: dict[str, Any], rollouts: Iterable[dict[str, Any]]) -> None:
    """Each rollout candidate's verdict, its signals' bounds and its samples (shaped for an
    Argo Rollouts AnalysisTemplate or a Flagger MetricTemplate: see deploy/rollouts/)."""
    for r in rollouts:
        for cand, d in sorted(r["verdicts"].items()):
            for v in VERDICTS:
                fam["rollout_verdict"].add_metric([r["name"], r["model"], cand, v],
                                                  float(d["verdict"] == v))
            for version, n in sorted(d["samples"].items()):
                fam["rollout_samples"].add_metric([r["name"], cand, version], n)
            for signal in ("performance", "disagreement", "latency", "quality"):
                comp = d["evidence"].get(signal)
                if not comp or comp.get("n", 0) == 0:
                    continue
                for bound in BOUNDS:
                    value = comp.get(bound)
                    fam["rollout_difference"].add_metric(
                        [r["name"], cand, signal, bound],
                        float("nan") if value is None else float(value))


PARTIAL_FATES = (("merged", "merged"), ("duplicate", "duplicates"), ("late", "late"),
                 ("mismatched", "mismatched"))
STATE_RANK = {"active": 2, "idle": 1, "silent": 0}


def _merge_samples(fam: dict[str, Any], merge: Any, sources: dict[str, dict[str, Any]],
                   now: float) -> None:
    """Stage 2's partials (a model lives in one shard), and each shard's view of the sources
    gathered into ``sources`` (kind -> source -> (state, lag)): every shard hears every
    source, so their views are combined before they are exposed once."""
    for (model, version), stage in list(merge.stages.items()):
        for kind, merger in (("data", stage.data), ("outcomes", stage.outcomes)):
            c = merger.counts
            for label, attr in PARTIAL_FATES:
                fam["partials_total"].add_metric([model, version, kind, label],
                                                 getattr(c, attr))
            fam["late_partial_rows_total"].add_metric([model, version, kind], c.late_rows)
    for i, (kind, clock) in enumerate(zip(("data", "outcomes"), merge.clocks)):
        # a device sends partials, not watermarks: its event time is what they vouched for
        local: dict[str, float] = {}
        for stage in list(merge.stages.values()):
            for name, mark in (stage.outcomes if i else stage.data).local.items():
                local[name] = max(local.get(name, -math.inf), mark)
        lag = clock.lag(now, local)
        seen = sources.setdefault(kind, {})
        for name in list(clock.sources):
            state, behind = clock.state(name, now), lag.get(name, 0.0)
            old = seen.get(name)
            if old is None or STATE_RANK[state] > STATE_RANK[old[0]]:
                seen[name] = (state, behind)
            elif state == old[0]:
                seen[name] = (state, min(old[1], behind))


def _source_samples(fam: dict[str, Any], sources: dict[str, dict[str, Any]]) -> None:
    for kind in ("data", "outcomes"):
        seen = sources.get(kind, {})
        states = {"active": 0, "idle": 0, "silent": 0}
        for state, _ in seen.values():
            states[state] += 1
        for state, n in states.items():
            fam["sources"].add_metric([kind, state], n)
        lags = [b for st, b in seen.values() if st == "active" and math.isfinite(b)]
        fam["source_lag_seconds"].add_metric([kind], max(lags, default=0.0))


def _monitor_samples(fam: dict[str, Any], m: Any) -> None:
    mv = [m.model, m.version]
    status = m.status()
    fam["late_events_total"].add_metric(mv, m.n_late)
    fam["label_outcomes_total"].add_metric(mv, m.n_outcomes)
    if m.n_records:
        fam["label_join_ratio"].add_metric(mv, min(1.0, m.n_outcomes / m.n_records))
    if status["window_fill"] is not None:
        fam["window_fill_ratio"].add_metric(mv, status["window_fill"])
    for metric in ("accuracy", "auc", "mae", "window_accuracy", "window_auc", "window_mae",
                   "estimated_accuracy", "baseline_estimated_accuracy"):
        value = status.get(metric)
        if value is not None and math.isfinite(value):
            fam["model_performance"].add_metric([*mv, metric], value)
    for kind in KINDS:
        v = m.last_verdicts.get(kind)
        if v is not None:
            fam["drift_detected"].add_metric([*mv, kind], 1.0 if v["drift"] else 0.0)
            fam["drift_severity"].add_metric([*mv, kind], SEVERITY.get(v["severity"], 0))
    evidence = [e for kind in ("data", "prediction")
                for e in m.last_evidence.get(kind, ())]
    if len({e.feature for e in evidence}) > MAX_FEATURES:
        top = sorted({e.feature: e.statistic / e.threshold if e.threshold else 0.0
                      for e in evidence}.items(), key=lambda kv: -kv[1])[:MAX_FEATURES]
        keep = {f for f, _ in top}
        evidence = [e for e in evidence if e.feature in keep]
    for e in evidence:
        labels = [*mv, e.feature, e.test]
        fam["feature_drift_score"].add_metric(labels, e.statistic)
        fam["feature_drift_pvalue"].add_metric(labels, e.adjusted_pvalue)
        fam["feature_drift_threshold"].add_metric(labels, e.threshold)
    quality = m.last_evidence.get("quality", ())
    for e in quality[:4 * MAX_FEATURES]:
        if e.test in ("missing_ratio", "unseen_ratio"):
            fam[e.test].add_metric([*mv, e.feature], e.statistic)
