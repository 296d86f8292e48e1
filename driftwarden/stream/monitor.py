"""The monitor of one (model, version): the plain-Python core a stream agent hands batches to.

A :class:`ModelMonitor` owns everything stateful about one model version — its baseline
(fitted from its first ``warmup`` records, or given), an event-time sliding window, the
calibration, one :class:`~driftwarden.detectors.decide.Decider` per verdict kind and an online
detector on the error stream — and turns batches of records into **drift events**: one per
change of a verdict (``onset``, ``escalation``, ``recovery``) of kind

* ``data`` — the input features' distributions (the decision layer's family over all features);
* ``prediction`` — the distribution of the model's output;
* ``quality`` — missing, invalid or unseen values above the baseline's by more than
  ``quality_tolerance``, or fields appearing, disappearing or changing type;
* ``concept`` — the error stream of joined labels (river's ADWIN by default).

No Kafka, no clock: time is the event time carried by the records, so a replay gives the
same events. The whole state round-trips through JSON (:meth:`to_state`), for a Faust table.

>>> import numpy as np
>>> from driftwarden.config import Detection
>>> from driftwarden.schema import PredictionRecord, RecordBatch
>>> rng = np.random.default_rng(0)
>>> def batch(t0, n, shift=0.0):
...     return [PredictionRecord("fraud", "1", f"r{t0}-{i}", t0 + i / n,
...                              {"amount": float(rng.normal(shift, 1)), "country": "DE"},
...                              float(rng.random())) for i in range(n)]
>>> m = ModelMonitor("fraud", "1", Detection(warmup=2000, slices=3, slice_seconds=1.0,
...                  allowed_lateness=0.0, calibration_sims=50))
>>> events = [e for t in range(0, 12) for e in m.add(batch(t, 500, 0.0 if t < 8 else 1.0))]
>>> [(e["kind"], e["state"], e["features"]) for e in events]
[('data', 'onset', ['amount'])]
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, Future
from typing import Any

import numpy as np

from driftwarden.config import Detection
from driftwarden.detectors.baseline import Baseline
from driftwarden.detectors.compare import compare
from driftwarden.detectors.decide import (
    Calibration,
    Decider,
    Evaluation,
    TestEvidence,
    Verdict,
    calibrate,
    evaluate,
)
from driftwarden.detectors.online import OnlineDetector
from driftwarden.detectors.quality import feature_quality, schema_change
from driftwarden.detectors.summary import (
    LATENCY,
    PREDICTION,
    OutcomeSummary,
    Summary,
)
from driftwarden.detectors.window import SlidingWindow
from driftwarden.events import SCHEMA_VERSION
from driftwarden.partials import outcome_error, typed_columns
from driftwarden.schema import PredictionRecord, RecordBatch

KINDS = ("data", "prediction", "quality", "concept")
EVENT_NAMESPACE = uuid.UUID("6f7c1f2e-3b9a-4c55-9d1e-0d2f8a5b7c31")
MAX_CALIBRATION_ROWS = 5000  # larger windows are rescaled (see decide.NullModel)
CONCEPT_REFERENCE = 500  # the first outcomes set the reference error rate
CONCEPT_MIN_SINCE = 50   # outcomes after a detected change before its direction is judged


def event_id(*parts: Any) -> str:
    """Deterministic id: the same incident and state always give the same id.

    >>> event_id("fraud", "1", "data", 17, "onset") == event_id("fraud", "1", "data", 17, "onset")
    True
    """
    return str(uuid.uuid5(EVENT_NAMESPACE, "\x1f".join(str(p) for p in parts)))


def _clean(x: float) -> float | None:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


class ModelMonitor:
    """Windows, tests and verdicts of one model version; see the module docstring."""

    def __init__(self, model: str, version: str, detection: Detection | None = None, *,
                 baseline: Baseline | None = None, task: str = "classification",
                 executor: Executor | None = None) -> None:
        self.model = model
        self.version = version
        self.detection = detection or Detection()
        self.policy = self.detection.policy()
        self.task = task
        self.baseline: Baseline | None = None
        self.fresh_baseline = False  # a warm-up fit not yet handed to the store
        self.executor = executor
        self._calibration: Calibration | Future[Calibration] | None = None
        self.window: SlidingWindow | None = None
        self.deciders = {kind: Decider(self.policy) for kind in KINDS}
        self.incidents: dict[str, int] = {}   # kind -> slice id of the open incident's onset
        self.concept = OnlineDetector(self.detection.concept_detector,
                                      seed=self.detection.seed)
        self.error_baseline: list[float] = [0.0, 0.0]  # errors, outcomes during warm-up
        self.concept_change = False  # the detector found a change not yet judged
        self._warm: list[PredictionRecord] = []
        self.n_records = 0
        self.n_late = 0
        self.n_outcomes = 0
        self.outcomes = OutcomeSummary("regression" if task == "regression" else
                                       "classification")  # realized performance, cumulative
        # realized performance over the sliding window: outcomes per slice of label time
        self.recent_outcomes: dict[int, OutcomeSummary] = {}
        self.last_verdicts: dict[str, dict[str, Any]] = {}
        # the tests behind the last verdict of each kind (scores, p-values, thresholds: metrics)
        self.last_evidence: dict[str, tuple[TestEvidence, ...]] = {}
        self.estimated_accuracy: float | None = None  # label-free, of the last window
        if baseline is not None:
            self._install(baseline, None)

    def __repr__(self) -> str:
        phase = "warming up" if self.baseline is None else "monitoring"
        return f"ModelMonitor({self.model!r}, {self.version!r}, {phase}, n={self.n_records})"

    # -- baseline ---------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.baseline is not None

    def _install(self, baseline: Baseline, rows_per_window: int | None) -> None:
        d = self.detection
        self.baseline = baseline
        self.fresh_baseline = False  # a warm-up fit not yet handed to the store
        rows = rows_per_window or MAX_CALIBRATION_ROWS
        def run() -> Calibration:
            return calibrate(baseline, max(50, min(rows, MAX_CALIBRATION_ROWS)),
                             n_sim=d.calibration_sims, seed=d.seed,
                             tests=self.policy.calibrated_tests(), reservoir_size=d.reservoir_size)

        # on an executor, the first evaluation waits for it: the same events either way
        self._calibration = self.executor.submit(run) if self.executor is not None else run()
        self.window = SlidingWindow(self._new_summary, slices=d.slices,
                                    slice_seconds=d.slice_seconds,
                                    allowed_lateness=d.allowed_lateness)

    @property
    def calibration(self) -> Calibration | None:
        """The calibration (waiting for it if it is still being computed)."""
        if isinstance(self._calibration, Future):
            self._calibration = self._calibration.result()
        return self._calibration

    def _new_summary(self) -> Summary:
        assert self.baseline is not None
        return self.baseline.new_summary(reservoir_size=self.detection.reservoir_size,
                                         seed=self.detection.seed, task=self.task)

    def _fit_from_warmup(self) -> None:
        d = self.detection
        cols = batch_columns(RecordBatch.of(self._warm))
        base = Baseline.fit(cols, bins=d.bins, max_categories=d.max_categories,
                            categorical_max_distinct=d.categorical_max_distinct,
                            sample_rows=d.sample_rows, reference_sample=d.reference_sample,
                            prediction=PREDICTION if PREDICTION in cols else None, seed=d.seed)
        ts = np.array([r.ts for r in self._warm])
        span = float(ts.max() - ts.min()) if len(ts) > 1 else 0.0
        rate = len(ts) / span if span > 0 else float(len(ts))
        self._install(base, int(rate * d.slices * d.slice_seconds))
        self._warm = []
        self.fresh_baseline = True  # for the store: taken (and reset) by the service

    # -- the stream ---------------------------------------------------------------------------
    def add(self, records: Sequence[PredictionRecord] | RecordBatch) -> list[dict[str, Any]]:
        """Feed records of this model version; returns the drift events they caused."""
        if not len(records):
            return []
        batch = records if isinstance(records, RecordBatch) else RecordBatch.of(records)
        self.n_records += len(batch)
        if self.baseline is None:
            need = self.detection.warmup - len(self._warm)
            self._warm.extend(batch[:need].records())
            batch = batch[need:]
            if len(self._warm) >= self.detection.warmup:
                self._fit_from_warmup()
            if not len(batch):
                return []
        assert self.window is not None
        cols = self._typed(batch_columns(batch))
        ts = np.array(batch.ts, dtype=np.float64)
        events: list[dict[str, Any]] = []
        # each slice is evaluated the moment it closes, on the window as it was then, however
        # many slices one batch spans (a consumer catching up reads many at once)
        result = self.window.add(cols, ts=ts, n_rows=len(batch),
                                 on_close=lambda sid: events.extend(self._evaluate(sid)))
        self.n_late += result.late
        return events

    def adopt(self, baseline: Baseline) -> None:
        """Take the baseline a previous owner of this model fitted (the merge stage lost its
        state — a broker that lost its log — while stage 1 bins with the published one):
        monitoring goes on with it; the warm-up records held so far are dropped (counted)."""
        if self.baseline is None:
            self._install(baseline, None)
            self._warm = []

    # -- merged slices (the merge stage: see driftwarden.partials) ------------------------------
    def add_warm_slice(self, ts: Sequence[float], columns: Mapping[str, Sequence[Any]]
                       ) -> list[dict[str, Any]]:
        """Warm-up records of a closed slice, in a canonical order (see
        :func:`driftwarden.partials.merge_records`); once the warm-up holds ``warmup``
        records the baseline is fitted from them (the merge stage gives no more than that)."""
        names = [n for n in columns if n not in (PREDICTION, LATENCY)]
        preds, lat = columns.get(PREDICTION), columns.get(LATENCY)
        for i, t in enumerate(ts):
            feats = {n: columns[n][i] for n in names if columns[n][i] is not None}
            self._warm.append(PredictionRecord(self.model, self.version, None, float(t), feats,
                                               None if preds is None else preds[i],
                                               None if lat is None else lat[i]))
        self.n_records += len(ts)
        if self.baseline is None and len(self._warm) >= self.detection.warmup:
            self._fit_from_warmup()
        return []

    def add_slice(self, sid: int, summary: Summary) -> list[dict[str, Any]]:
        """A closed slice merged from partial summaries over this monitor's baseline: it
        enters the window, which closes it (and the empty slices before it) and evaluates."""
        assert self.window is not None, "add_slice needs a baseline"
        self.n_records += summary.n_rows
        events: list[dict[str, Any]] = []
        self.window.add_slice(sid, summary,
                              on_close=lambda s: events.extend(self._evaluate(s)))
        return events

    def add_outcome_slice(self, sid: int, summary: OutcomeSummary, errors: np.ndarray
                          ) -> list[dict[str, Any]]:
        """A closed slice of label time merged from outcome partials: its performance counts,
        and its errors (see :func:`driftwarden.partials.replay_errors`) for the error-stream
        detector, decided every ``concept_step`` outcomes as in :meth:`add_outcomes`."""
        self.outcomes = self.outcomes.merge(summary)
        recent = self._window_outcomes((sid + 0.5) * self.detection.slice_seconds)
        self.recent_outcomes[sid] = recent.merge(summary)
        return self._feed_errors(errors.tolist(), (sid + 1) * self.detection.slice_seconds)

    def advance(self, to: float) -> list[dict[str, Any]]:
        """The model's sources are idle (no records for ``idle_close_seconds``; the caller
        keeps that clock): its event time has reached ``to``. A warm-up holding at least
        ``min_warmup`` records becomes the baseline now, and every slice that ends by ``to``
        closes and is evaluated without waiting for ``allowed_lateness`` — so the end of a
        replayed file ends in a verdict. Returns the drift events; no events and no change
        when there is nothing to close.

        >>> import numpy as np
        >>> from driftwarden.config import Detection
        >>> from driftwarden.schema import PredictionRecord
        >>> rng = np.random.default_rng(1)
        >>> m = ModelMonitor("m", "1", Detection(warmup=5000, min_warmup=500, slices=3,
        ...                  slice_seconds=1.0, allowed_lateness=10.0, calibration_sims=50))
        >>> rows = lambda t0, shift: [PredictionRecord("m", "1", None, t0 + i / 1000,
        ...     {"x": float(rng.normal(shift, 1))}) for i in range(1000)]
        >>> m.add(rows(0.0, 0.0)), m.ready        # 1,000 of 5,000 warm-up records
        ([], False)
        >>> m.advance(3.0), m.ready               # idle: the warm-up is the baseline
        ([], True)
        >>> m.add(rows(10.0, 2.0))                # lateness 10 s: nothing closes yet
        []
        >>> [(e["state"], e["features"]) for e in m.advance(13.0)]
        [('onset', ['x'])]
        """
        if self.baseline is None:
            if not self.idle_work:  # a warm-up short of min_warmup waits for more records
                return []
            self._fit_from_warmup()
        assert self.window is not None
        events: list[dict[str, Any]] = []
        self.window.advance(to, on_close=lambda sid: events.extend(self._evaluate(sid)))
        return events

    @property
    def idle_work(self) -> bool:
        """Whether :meth:`advance` could change anything: a warm-up to end, slices to close
        or a window that still holds rows."""
        if self.baseline is None:
            return len(self._warm) >= self.detection.min_warmup  # (>= 1: config)
        return self.window is not None and bool(self.window.has_rows)

    @property
    def progress(self) -> tuple[bool, int | None]:
        """What :meth:`advance` moves: whether there is a baseline, the newest slice closed."""
        return self.ready, None if self.window is None else self.window.last_closed

    @property
    def max_ts(self) -> float:
        """The newest event time seen (of the warm-up while it lasts)."""
        if self.window is not None and math.isfinite(self.window.max_ts):
            return self.window.max_ts
        return max((r.ts for r in self._warm), default=-math.inf)

    def _typed(self, cols: dict[str, Any]) -> dict[str, Any]:
        assert self.baseline is not None
        return typed_columns(self.baseline, cols)

    def _evaluate(self, slice_id: int) -> list[dict[str, Any]]:
        assert self.baseline is not None and self.window is not None
        window = self.window.summary()
        self.estimated_accuracy = estimated_accuracy(window.prediction)
        comps = compare(self.baseline, window)
        pred = comps.pop(PREDICTION, None)
        ts = (slice_id + 1) * self.detection.slice_seconds
        evaluations = {"data": evaluate(comps, self.policy, self.calibration)}
        if pred is not None:
            evaluations["prediction"] = evaluate({PREDICTION: pred}, self.policy,
                                                 self.calibration)
        evaluations["quality"] = self._quality(window)
        events = []
        for kind, ev in evaluations.items():
            verdict = self.deciders[kind].update(ev)
            self.last_verdicts[kind] = self._verdict_dict(kind, verdict, ts)
            self.last_evidence[kind] = ev.evidence
            if verdict.state is not None:
                events.append(self._event(kind, verdict, slice_id, ts))
        return events

    def _quality(self, window: Summary) -> Evaluation:
        assert self.baseline is not None
        tol = self.detection.quality_tolerance
        evidence = []
        flagged = []
        for name, fs in window.features.items():
            q = feature_quality(fs)
            ref = feature_quality(self.baseline.reference.features[name])
            for measure in ("missing_ratio", "invalid_ratio", "unseen_ratio", "nan_ratio"):
                now, before = getattr(q, measure), getattr(ref, measure)
                bad = q.n_rows > 0 and now - before > tol
                evidence.append(TestEvidence(name, measure, now, math.nan, math.nan, before + tol,
                                             ref.n_rows, q.n_rows, True, bad))
                if bad and name not in flagged:
                    flagged.append(name)
        sc = schema_change(window)
        for name in sc.new_fields + sc.missing_fields + sc.retyped_fields:
            if name not in flagged:
                flagged.append(name)
        severity = "critical" if (sc.missing_fields or sc.retyped_fields) else (
            "warning" if flagged else "none")
        return Evaluation(bool(flagged), severity, tuple(flagged), tuple(evidence),
                          len(evidence))

    # -- outcomes (joined labels) ---------------------------------------------------------------
    def add_outcomes(self, predictions: Sequence[Any], labels: Sequence[Any],
                     ts: float) -> list[dict[str, Any]]:
        """Feed joined (prediction, label) pairs to the error-stream detector.

        The concept verdict does not depend on how outcomes are batched: errors go to the
        detector one by one, and the decision is taken every ``concept_step`` outcomes (by
        count, wherever the calls cut the stream). A change the detector finds is latched
        until a decision point has seen at least ``CONCEPT_MIN_SINCE`` outcomes after it, so
        that its direction is judged on data, not on the one outcome that tripped it. The
        reference error rate is that of the first ``CONCEPT_REFERENCE`` outcomes exactly.
        """
        errors = [e for p, y in zip(predictions, labels)
                  if (e := outcome_error(p, y, self.task)) is not None]
        numeric = [(p, y) for p, y in zip(predictions, labels)
                   if isinstance(p, (int, float)) and isinstance(y, (int, float))]
        if numeric:
            p_arr = np.array([p for p, _ in numeric], dtype=float)
            y_arr = np.array([y for _, y in numeric], dtype=float)
            self.outcomes.update(p_arr, y_arr)
            self._window_outcomes(ts).update(p_arr, y_arr)
        return self._feed_errors(errors, ts)

    def _feed_errors(self, errors: Sequence[float], ts: float) -> list[dict[str, Any]]:
        step = self.detection.concept_step
        events: list[dict[str, Any]] = []
        for e in errors:
            if self.error_baseline[1] < CONCEPT_REFERENCE:
                self.error_baseline[0] += e
                self.error_baseline[1] += 1
            if self.concept.update(e).drift:
                self.concept_change = True
            self.n_outcomes += 1
            if self.n_outcomes % step == 0:
                events += self._concept_decision(ts)
        return events

    def _concept_decision(self, ts: float) -> list[dict[str, Any]]:
        """The concept verdict at a decision point (every ``concept_step`` outcomes)."""
        result = self.concept.result()
        before = self._reference_error()
        rate, since = result.statistic, self.concept.since_change
        judged = since >= CONCEPT_MIN_SINCE and math.isfinite(rate)
        decider = self.deciders["concept"]
        # onset: the detector found a change, and the error rate since it is above the
        # reference; the incident stays open while that rate stays a quarter above it
        rising = self.concept_change and judged and rate > before
        drifting = rising or (decider.active and judged and rate > 1.25 * before) or (
            decider.active and not judged)  # a new change just found: not judged yet
        if judged:
            self.concept_change = False
        severity = "none"
        if drifting:
            # critical: the error rate grew by half or more of its reference value
            severity = ("critical" if rate >= 1.5 * max(before, 1e-9) or (
                not judged and decider.severity == "critical") else "warning")
        ev = Evaluation(drifting, severity, ("__error__",) if drifting else (), (
            TestEvidence("__error__", self.detection.concept_detector, rate,
                         math.nan, math.nan, before, int(self.error_baseline[1]),
                         since, True, drifting),), 1)
        # the error stream is an evaluation of its own: no hysteresis beyond the detector's
        if rising:
            decider.drift_streak = max(decider.drift_streak, self.policy.hysteresis - 1)
        verdict = decider.update(ev)
        self.last_verdicts["concept"] = self._verdict_dict("concept", verdict, ts)
        if verdict.state is None:
            return []
        return [self._event("concept", verdict, int(self.n_outcomes), ts)]

    def _window_outcomes(self, ts: float) -> OutcomeSummary:
        """The outcome summary of the slice of label time ``ts``; slices older than the
        window are dropped."""
        d = self.detection
        sid = int(math.floor(ts / d.slice_seconds)) if math.isfinite(ts) else 0
        newest = max([sid, *self.recent_outcomes])
        for old in [k for k in self.recent_outcomes if k <= newest - d.slices]:
            del self.recent_outcomes[old]
        if sid not in self.recent_outcomes:
            self.recent_outcomes[sid] = OutcomeSummary(self.outcomes.task)
        return self.recent_outcomes[sid]

    def window_performance(self) -> OutcomeSummary:
        """Realized performance over the last ``slices`` slices of label time."""
        out = OutcomeSummary(self.outcomes.task)
        for o in self.recent_outcomes.values():
            out = out.merge(o)
        return out

    def _reference_error(self) -> float:
        n = self.error_baseline[1]
        return self.error_baseline[0] / n if n else 0.0

    def status(self) -> dict[str, Any]:
        """Counters and realized performance (for the admin endpoint and metrics)."""
        o = self.outcomes
        w = self.window_performance()
        return {"model": self.model, "version": self.version, "ready": self.ready,
                "records": self.n_records, "late": self.n_late, "outcomes": self.n_outcomes,
                "accuracy": _clean(o.accuracy()), "auc": _clean(o.auc()),
                "mae": _clean(o.mae()) if o.task == "regression" else None,
                # the same over the sliding window (label time), what drifts show first
                "window_outcomes": w.n, "window_accuracy": _clean(w.accuracy()),
                "window_auc": _clean(w.auc()),
                "window_mae": _clean(w.mae()) if w.task == "regression" else None,
                # label-free (CBPE): what calibrated scores promise, window vs baseline
                "estimated_accuracy": self.estimated_accuracy,
                "baseline_estimated_accuracy": None if self.baseline is None
                else estimated_accuracy(self.baseline.reference.prediction),
                "window_fill": None if self.window is None else self.window.fill_ratio}

    # -- events ---------------------------------------------------------------------------------
    def _verdict_dict(self, kind: str, v: Verdict, ts: float) -> dict[str, Any]:
        """The current verdict of one kind: ``drift`` (an incident is open), ``state`` (see
        :attr:`Decider.phase`) and the features behind that state — those drifting now, the
        open incident's while it recovers, the candidates while pending, none when ok."""
        decider = self.deciders[kind]
        phase = decider.phase
        features = (list(decider.incident_features) if phase == "recovering"
                    else list(v.features) if phase in ("drifting", "pending") else [])
        return {"model": self.model, "version": self.version, "kind": kind, "drift": v.drift,
                "state": phase, "severity": v.severity, "features": features, "ts": ts}

    def _event(self, kind: str, v: Verdict, at: int, ts: float) -> dict[str, Any]:
        if v.state == "onset":
            self.incidents[kind] = at
        incident = self.incidents.get(kind, at)
        if v.state == "recovery":
            self.incidents.pop(kind, None)
        incident_id = event_id(self.model, self.version, kind, incident)
        evidence = [e.to_dict() for e in v.evaluation.evidence if e.decision and (
            e.rejected or e.feature in v.features)]
        return {
            "schema_version": SCHEMA_VERSION,  # driftwarden.events.DriftEvent
            "event_id": event_id(incident_id, v.state, at),
            "incident_id": incident_id,
            "model": self.model, "version": self.version, "kind": kind, "state": v.state,
            "severity": v.severity if v.state != "recovery" else "none",
            "features": list(v.features), "evidence": evidence, "ts": ts,
        }

    # -- state ----------------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        return {
            "model": self.model, "version": self.version, "task": self.task,
            "baseline": None if self.baseline is None else self.baseline.to_state(),
            "calibration": None if self.calibration is None else self.calibration.to_state(),
            "window": None if self.window is None else self.window.to_state(),
            "deciders": {k: d.to_state() for k, d in self.deciders.items()},
            "incidents": dict(self.incidents),
            "concept": self.concept.to_state(),
            "error_baseline": list(self.error_baseline),
            "concept_change": self.concept_change,
            "warm": [_record_state(r) for r in self._warm],
            "n_records": self.n_records, "n_late": self.n_late, "n_outcomes": self.n_outcomes,
            "outcomes": self.outcomes.to_state(),
            "last_verdicts": dict(self.last_verdicts),
            "recent_outcomes": {str(k): v.to_state() for k, v in self.recent_outcomes.items()},
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], detection: Detection | None = None, *,
                   executor: Executor | None = None) -> ModelMonitor:
        m = cls(state["model"], state["version"], detection, task=state["task"],
                executor=executor)
        if state["baseline"] is not None:
            m.baseline = Baseline.from_state(state["baseline"])
            m._calibration = Calibration.from_state(state["calibration"])
            base = m.baseline
            m.window = SlidingWindow.from_state(
                m._new_summary, state["window"],
                lambda s: Summary.from_state(base.specs, s, base.prediction))
        m.deciders = {k: Decider.from_state(v, m.policy) for k, v in state["deciders"].items()}
        m.incidents = dict(state["incidents"])
        m.concept = OnlineDetector.from_state(state["concept"])
        m.error_baseline = list(state["error_baseline"])
        m.concept_change = bool(state.get("concept_change", False))
        m._warm = [PredictionRecord(**r) for r in state["warm"]]
        m.n_records, m.n_late = state["n_records"], state["n_late"]
        m.n_outcomes = state["n_outcomes"]
        m.outcomes = OutcomeSummary.from_state(state["outcomes"])
        m.last_verdicts = dict(state.get("last_verdicts", {}))
        m.recent_outcomes = {int(k): OutcomeSummary.from_state(v)
                             for k, v in state.get("recent_outcomes", {}).items()}
        return m


def estimated_accuracy(prediction: Any) -> float | None:
    """Confidence-based performance estimation for a binary classifier: with calibrated
    scores p (threshold 0.5) a prediction is right with probability max(p, 1 - p), so the
    expected accuracy is their mean — over the window's sample of scores. None when the
    outputs are not scores in [0, 1].

    >>> from driftwarden.detectors.summary import NumericSpec, NumericSummary
    >>> s = NumericSummary(NumericSpec.fit("p", np.linspace(0, 1, 50), 5))
    >>> s.update(np.array([0.9, 0.2, 0.6, 0.5]))
    >>> round(estimated_accuracy(s), 3)
    0.7
    """
    sample = getattr(getattr(prediction, "reservoir", None), "values", None)
    if sample is None or len(sample) == 0:
        return None
    x = sample[np.isfinite(sample)]
    if len(x) == 0 or x.min() < 0.0 or x.max() > 1.0:
        return None
    return float(np.maximum(x, 1.0 - x).mean())


def batch_columns(batch: RecordBatch, *, latency: bool = False) -> dict[str, Any]:
    """A batch's feature columns, and its predictions as the ``__prediction__`` column (and,
    with ``latency``, its request latencies as ``__latency_ms__``: what a partial summary
    carries for the rollouts; never a feature of a baseline)."""
    cols: dict[str, Any] = batch.columns()
    if any(p is not None for p in batch.predictions):
        cols[PREDICTION] = batch.predictions
    if latency and batch.latencies is not None:
        cols[LATENCY] = batch.latencies
    return cols


def _record_state(r: PredictionRecord) -> dict[str, Any]:
    return {"model": r.model, "version": r.version, "id": r.id, "ts": r.ts,
            "features": r.features, "prediction": r.prediction, "latency_ms": r.latency_ms,
            "segment": r.segment}
