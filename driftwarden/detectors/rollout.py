"""Live rollout verdicts: candidate model versions against their baseline version on the same
live traffic, slice by slice, with decisions that stay valid however often they are looked at.

A :class:`Rollout` is fed what stage 2 already merges per model version — each closed slice's
input summary and its joined outcomes (:meth:`Rollout.observe_data`,
:meth:`Rollout.observe_outcomes`), and in shadow mode the paired disagreements of the two
versions on the same requests (:meth:`Rollout.observe_pairs`) — and how far stage 2's clocks
have passed (:meth:`Rollout.advance`: every slice before it is final for every version, in
event time for inputs and in label time for outcomes). It folds the slices in order, each
once both clocks have passed it, inputs and outcomes of that slice together, and decides
after each: so a verdict, and the evidence it carries, depend on the merged slices alone —
not on the order versions' slices closed in, nor on how the stream was cut. A slice is folded
only if every version served traffic in it: the versions are compared on **concurrent**
traffic (the same slices), so a daily cycle or an upstream change affects both sides. A slice
one version had no traffic in is left out (counted as ``unmatched_slices``).

Per candidate and at every folded slice:

* **routing** — the candidate's inputs against the baseline version's: per numeric feature the
  difference of means in units of the baseline's standard deviation, per category the
  difference of shares, each with an anytime-valid confidence sequence; a difference surely
  larger than the tolerance means the candidate is fed other traffic (a routing bug, a
  sticky-session segment): the rollout stops **inconclusive** with reason ``routing``, never
  with a model verdict; while an input's estimated difference exceeds the tolerance but not
  yet surely, no model verdict is taken (the routing check settles first);
* **performance** (decisive when labels arrive) — the loss (a classifier's error, a regressor's
  absolute error), candidate − baseline, unpaired, against the non-inferiority ``margin``
  (:func:`~driftwarden.detectors.sequential.unpaired`);
* **disagreement** (decisive in shadow mode without labels) — the share of paired requests
  the two versions decide differently, against ``max_disagreement``;
* **prediction shift** (evidence) — the difference of the mean prediction.

Verdicts: ``continue``; ``rollback`` as soon as the evidence says worse than allowed (after
``min_samples`` per version); ``promote`` once it says no worse and ``min_seconds`` of event
time have passed; ``inconclusive`` at ``max_seconds`` or on a routing finding. The first final
verdict of a candidate is kept. The false-verdict budget ``alpha`` is the rollout's: split
over its candidates (and, for the routing check, over the features compared), each
direction wrong with probability ≤ α / 2 over the whole rollout.

No I/O and no wall clock: event time comes from slice ids, so the verdicts depend on the
merged slices alone — not on partitions, workers, batch sizes or restarts.

>>> import numpy as np
>>> spec = RolloutSpec(model="churn", baseline="1", candidates=["2"], min_samples=200)
>>> r = Rollout("churn-v2", spec, slice_seconds=60.0)
>>> rng = np.random.default_rng(1)
>>> for sid in range(40):
...     r.observe_outcomes("1", sid, (rng.random(300) < 0.10).astype(float))
...     r.observe_outcomes("2", sid, (rng.random(30) < 0.20).astype(float))  # 10 % canary
>>> r.advance(40, 40)   # stage 2's clocks have passed the 40 slices
>>> d = r.evaluate()
>>> [(x.candidate, x.verdict, x.signal) for x in d]
[('2', 'rollback', 'performance')]
>>> d[0].samples["2"] < 40 * 30      # decided before the end of the traffic
True
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec
import numpy as np

from driftwarden.config import RolloutSpec, Strategy
from driftwarden.detectors.sequential import (
    Comparison,
    RunningMean,
    Verdict,
    decide,
    radius,
    unpaired,
)
from driftwarden.detectors.summary import Spread, new_latency

ROLLOUT_NAMESPACE = uuid.UUID("6f1c64a2-4a3b-5f7e-9d43-2b8e1f0c7a15")
KINDS = ("data", "outcomes", "pairs")  # pairs: shadow pairs, by the outcome clock
MAX_PENDING = 4096  # slices waiting for a version without traffic: the oldest are dropped


@dataclass(frozen=True)
class Decision:
    """A candidate's verdict at one folded slice, with its evidence."""

    rollout: str
    model: str
    baseline: str
    candidate: str
    strategy: str
    verdict: Verdict
    reason: str
    signal: str  # performance | disagreement | latency | quality | routing | guard-rail | none
    slice: int | None  # the last slice folded in
    ts: float | None   # its end (event time)
    samples: dict[str, int]  # labelled outcomes per version (shadow: pairs)
    evidence: dict[str, Any]

    @property
    def final(self) -> bool:
        return self.verdict != "continue"

    @property
    def event_id(self) -> str:
        """The same for a rollout, candidate and verdict on every replay and topology."""
        return str(uuid.uuid5(ROLLOUT_NAMESPACE, "\x1f".join(
            (self.rollout, self.candidate, self.verdict))))

    def to_dict(self) -> dict[str, Any]:
        return {"rollout": self.rollout, "model": self.model, "baseline": self.baseline,
                "candidate": self.candidate, "strategy": self.strategy,
                "verdict": self.verdict, "reason": self.reason, "signal": self.signal,
                "slice": self.slice, "ts": self.ts, "samples": dict(self.samples),
                "evidence": self.evidence, "event_id": self.event_id}


@dataclass
class PairCounts:
    """Shadow mode: a candidate version's predictions paired with its baseline version's on
    the same requests — how many, how many decide differently (a classifier's; see
    :func:`pair_disagreements`), and the difference candidate − baseline of numeric
    predictions (a :class:`~driftwarden.detectors.summary.Spread`: moments, and |difference|
    binned — the distribution of differences, and a regressor's disagreement beyond a
    tolerance). Mergeable by addition.

    >>> c = PairCounts.of([0.2, 0.7, 0.9], [0.3, 0.4, 0.95], "classification")
    >>> c.n, c.disagree, round(c.diff.mean, 3)
    (3, 1, -0.05)
    """

    n: int = 0
    disagree: int = 0
    decided: bool = True  # disagree counts decisions (a classifier); a regressor's: diff
    diff: Spread = field(default_factory=Spread)

    @classmethod
    def of(cls, baseline: Sequence[Any], candidate: Sequence[Any], task: str) -> PairCounts:
        out = cls(n=len(baseline), decided=task != "regression")
        if task != "regression":
            out.disagree = int(pair_disagreements(list(baseline), list(candidate)).sum())
        b, c = as_numbers(list(baseline)), as_numbers(list(candidate))
        if b is not None and c is not None:
            with np.errstate(invalid="ignore", over="ignore"):
                d = c - b
            out.diff.update(d[np.isfinite(d)])
        return out

    def merge(self, other: PairCounts) -> PairCounts:
        return PairCounts(self.n + other.n, self.disagree + other.disagree,
                          self.decided and other.decided, self.diff.merge(other.diff))

    def to_state(self) -> dict[str, Any]:
        return {"n": self.n, "disagree": self.disagree, "decided": self.decided,
                "diff": self.diff.to_state()}

    @classmethod
    def from_state(cls, s: Mapping[str, Any]) -> PairCounts:
        return cls(int(s["n"]), int(s["disagree"]), bool(s["decided"]),
                   Spread.from_state(s["diff"]))


def data_moments(summary: Any) -> dict[str, Any]:
    """What the routing and prediction-shift checks need of one merged input summary (a
    :class:`~driftwarden.detectors.summary.Summary`): per numeric feature (n, mean, sum of
    squared deviations), per categorical feature the count of each category by name, the
    prediction's moments when numeric, the predictions that are missing or not valid values
    (``quality``: [bad, rows]), the request latencies (``latency``: a Spread's state) and, for
    scores in [0, 1], the moments of max(p, 1 − p) over the slice's sample of predictions
    (``confidence``: what CBPE expects the accuracy to be if the scores are calibrated)."""
    out: dict[str, Any] = {"numeric": {}, "categorical": {}, "prediction": None}
    for name, fs in summary.features.items():
        if fs.spec.__class__.__name__ == "NumericSpec":
            out["numeric"][name] = _moments(fs)
        else:
            names = list(fs.spec.categories) + ["__other__"]
            out["categorical"][name] = {c: int(k) for c, k in zip(names, fs.counts) if k}
    p = summary.prediction
    if p is not None and p.spec.__class__.__name__ == "NumericSpec":
        out["prediction"] = _moments(p)
        sample = getattr(getattr(p, "reservoir", None), "values", None)
        if sample is not None and len(sample):
            x = np.asarray(sample, dtype=np.float64)
            x = x[np.isfinite(x)]
            if len(x) and x.min() >= 0.0 and x.max() <= 1.0:  # scores: CBPE's confidence
                c = np.maximum(x, 1.0 - x)
                out["confidence"] = [len(c), float(c.mean()), float(((c - c.mean()) ** 2).sum())]
    if p is not None and summary.n_rows:  # predictions missing, NaN, infinite or not a value
        bad = p.n_missing + p.n_invalid + getattr(p, "n_nan", 0) + getattr(p, "n_inf", 0)
        out["quality"] = [int(bad), int(summary.n_rows)]
    lat = getattr(summary, "latency", None)
    if lat is not None and lat.n:
        out["latency"] = lat.to_state()
    return out


def _moments(fs: Any) -> list[float]:
    n = fs.n
    if n == 0:
        return [0, 0.0, 0.0]
    std = fs.std if n > 1 else 0.0
    return [n, float(fs.mean), float((n - 1) * std * std) if math.isfinite(std) else 0.0]


def _rm(m: list[float] | tuple[float, float, float]) -> RunningMean:
    return RunningMean(int(m[0]), float(m[1]), float(m[2]))


def _share(count: int, n: int) -> RunningMean:
    """A category's share as the running mean of its 0/1 indicator."""
    p = count / n if n else 0.0
    return RunningMean(n, p, n * p * (1.0 - p))


@dataclass
class _Side:
    """One version's folded evidence."""

    loss: RunningMean = field(default_factory=RunningMean)
    prediction: RunningMean = field(default_factory=RunningMean)
    numeric: dict[str, RunningMean] = field(default_factory=dict)
    categorical: dict[str, dict[str, int]] = field(default_factory=dict)
    latency: Spread = field(default_factory=new_latency)
    confidence: RunningMean = field(default_factory=RunningMean)
    bad_predictions: int = 0
    rows: int = 0

    def fold_data(self, d: Mapping[str, Any]) -> None:
        for name, m in d["numeric"].items():
            self.numeric.setdefault(name, RunningMean()).merge(_rm(m))
        for name, counts in d["categorical"].items():
            mine = self.categorical.setdefault(name, {})
            for c, k in counts.items():
                mine[c] = mine.get(c, 0) + int(k)
        if d.get("prediction"):
            self.prediction.merge(_rm(d["prediction"]))
        if d.get("confidence"):
            self.confidence.merge(_rm(d["confidence"]))
        if d.get("quality"):
            self.bad_predictions += int(d["quality"][0])
            self.rows += int(d["quality"][1])
        if d.get("latency"):
            self.latency = self.latency.merge(Spread.from_state(d["latency"],
                                                                negative_invalid=True))

    def to_state(self) -> dict[str, Any]:
        def rm(r: RunningMean) -> list[float]:
            return [r.n, r.mean, r.m2]
        return {"loss": rm(self.loss), "prediction": rm(self.prediction),
                "numeric": {k: rm(v) for k, v in self.numeric.items()},
                "categorical": self.categorical, "latency": self.latency.to_state(),
                "quality": [self.bad_predictions, self.rows],
                "confidence": rm(self.confidence)}

    @classmethod
    def from_state(cls, s: Mapping[str, Any]) -> _Side:
        side = cls(_rm(s["loss"]), _rm(s["prediction"]),
                   {k: _rm(v) for k, v in s["numeric"].items()},
                   {k: dict(v) for k, v in s["categorical"].items()})
        if "latency" in s:
            side.latency = Spread.from_state(s["latency"], negative_invalid=True)
            side.bad_predictions, side.rows = (int(x) for x in s["quality"])
        if "confidence" in s:
            side.confidence = _rm(s["confidence"])
        return side


class Rollout:
    """One rollout's live comparison; see the module docstring. ``slice_seconds``: the width
    of the slices it is fed (event time of a slice id)."""

    def __init__(self, name: str, spec: RolloutSpec, *, slice_seconds: float) -> None:
        spec.check()
        self.name = name
        self.spec = spec
        self.slice_seconds = float(slice_seconds)
        # kind -> slice -> version -> its payload, until every version has passed the slice
        self.pending: dict[str, dict[int, dict[str, Any]]] = {k: {} for k in KINDS}
        # kind -> the first slice stage 2's clock has not passed (every earlier one is final)
        self.passed: dict[str, float] = {k: -math.inf for k in KINDS}
        self.folded: int | None = None  # the newest slice folded (both kinds)
        self.sides: dict[str, _Side] = {v: _Side() for v in spec.versions}
        self.pairs: dict[str, PairCounts] = {c: PairCounts() for c in spec.candidates}
        self.direct_pairs = False  # observe_pairs was used (no slices: decide on every call)
        self.first_slice: int | None = None  # the first slice compared
        self.unmatched_slices = 0
        self.decisions: dict[str, Decision] = {}  # candidate -> its final decision
        self.latest: dict[str, Decision] = {}     # candidate -> the decision at the last fold
        self.aborted: str | None = None           # why a person ended it (admin API)

    # -- input ---------------------------------------------------------------------------------
    def observe_data(self, version: str, sid: int, summary: Any) -> None:
        """A version's merged input summary of slice ``sid`` (a Summary, or
        :func:`data_moments` of one)."""
        if version in self.sides:
            moments = summary if isinstance(summary, Mapping) else data_moments(summary)
            self._observe("data", version, sid, moments)

    def observe_outcomes(self, version: str, sid: int, losses: Any) -> None:
        """A version's joined outcomes of slice ``sid`` (label time): their losses (0/1
        errors, absolute errors)."""
        if version in self.sides:
            rm = RunningMean()
            rm.add(losses)
            self._observe("outcomes", version, sid, [rm.n, rm.mean, rm.m2])

    def observe_pairs(self, candidate: str, disagreements: Any) -> None:
        """Shadow mode: the candidate's and the baseline's decisions on the same requests,
        1.0 where they differ (already paired: no slice matching needed)."""
        if candidate in self.pairs:
            d = np.asarray(disagreements, dtype=np.float64)
            self.pairs[candidate] = self.pairs[candidate].merge(
                PairCounts(n=len(d), disagree=int(d.sum())))
            self.direct_pairs = True

    def observe_slice_pairs(self, candidate: str, sid: int, pairs: PairCounts) -> None:
        """Shadow mode, live: the candidate's predictions paired with the baseline's on the
        same requests in slice ``sid`` (the join's :class:`PairCounts`), folded once the
        outcome clock has passed the slice."""
        if candidate in self.pairs:
            self._observe("pairs", candidate, sid, pairs.to_state())

    def _observe(self, kind: str, version: str, sid: int, payload: Any) -> None:
        if self.folded is not None and sid <= self.folded:
            return  # a slice already folded (replayed, or late): taken once
        pending = self.pending[kind]
        pending.setdefault(sid, {})[version] = payload
        while len(pending) > MAX_PENDING:  # a clock stuck that long: the oldest go
            self._fold(kind, min(pending), {})
            del pending[min(pending)]

    def advance(self, data: float, outcomes: float) -> None:
        """Stage 2's clocks: every slice before ``data`` (event time) and before ``outcomes``
        (label time) is final for every version (+inf: every source idle)."""
        self.passed["data"] = max(self.passed["data"], data)
        self.passed["outcomes"] = max(self.passed["outcomes"], outcomes)
        self.passed["pairs"] = self.passed["outcomes"]

    # -- decisions -----------------------------------------------------------------------------
    def evaluate(self) -> list[Decision]:
        """Fold the slices every version has passed, in slice order, and decide after each;
        returns the candidates' new final decisions (each candidate's first final one)."""
        out: list[Decision] = []
        edge = min(self.passed.values())
        for sid in sorted({s for kind in KINDS for s in self.pending[kind] if s < edge}):
            for kind in KINDS:
                if sid in self.pending[kind]:
                    self._fold(kind, sid, self.pending[kind].pop(sid))
            self.folded = sid
            out += self._decide(final=False)
        if not out and self.direct_pairs:
            out += self._decide(final=False)  # pairs given directly need no slice matching
        return out

    def _fold(self, kind: str, sid: int, by_version: dict[str, Any]) -> None:
        if kind == "pairs":  # already paired request by request: no slice matching
            for cand, state in by_version.items():
                self.pairs[cand] = self.pairs[cand].merge(PairCounts.from_state(state))
            return
        if len(by_version) < len(self.sides):
            self.unmatched_slices += 1  # a version without traffic in it: not concurrent
            return
        for version, payload in by_version.items():
            side = self.sides[version]
            if kind == "data":
                side.fold_data(payload)
            else:
                side.loss.merge(_rm(payload))
        self.first_slice = sid if self.first_slice is None else min(self.first_slice, sid)

    def finish(self, reason: str = "ended") -> list[Decision]:
        """The rollout ends now (aborted, or its traffic stopped): undecided candidates get
        ``inconclusive``."""
        self.aborted = reason
        return self._decide(final=True)

    def promote_by_hand(self, candidate: str, reason: str) -> list[Decision]:
        """A person promotes ``candidate`` (the admin API, audited there): its verdict is
        ``promote`` with the evidence gathered so far (``signal`` = ``by_hand``); the other
        undecided candidates end ``inconclusive``. Nothing if it was decided already."""
        if candidate not in self.sides or candidate == self.spec.baseline or (
                candidate in self.decisions):
            return []
        d = replace(self._judge(candidate, self.alpha, final=False), verdict="promote",
                    signal="by_hand", reason=reason)
        self.decisions[candidate] = self.latest[candidate] = d
        self.aborted = f"candidate {candidate} was promoted by hand"
        return [d, *self._decide(final=True)]

    def elapsed(self) -> float:
        if self.first_slice is None or self.folded is None:
            return 0.0
        return (self.folded - self.first_slice + 1) * self.slice_seconds

    @property
    def alpha(self) -> float:
        """Each candidate's share of the rollout's false-verdict budget."""
        return self.spec.alpha / len(self.spec.candidates)

    def _decide(self, final: bool) -> list[Decision]:
        new: list[Decision] = []
        for cand in self.spec.candidates:
            if cand in self.decisions:
                continue
            d = self._judge(cand, self.alpha, final)
            self.latest[cand] = d
            if d.final:
                self.decisions[cand] = d
                new.append(d)
        return new

    def _judge(self, cand: str, alpha: float, final: bool) -> Decision:
        spec = self.spec
        base, mine = self.sides[spec.baseline], self.sides[cand]
        # the candidate's budget, split over the signals that may roll it back
        alpha /= 1 + (spec.latency_margin is not None) + (spec.quality_margin is not None)
        evidence: dict[str, Any] = {"unmatched_slices": self.unmatched_slices,
                                    "elapsed_seconds": self.elapsed(), "alpha": alpha}
        routing = self._routing(base, mine, alpha)
        evidence["inputs"] = routing
        if base.confidence.n and mine.confidence.n:
            # label-free (CBPE): the accuracy each version's scores promise if calibrated —
            # evidence, not a verdict (a new version's calibration is what is in question)
            est = unpaired(_flip(mine.confidence), _flip(base.confidence), margin=margin_of(
                spec, base), alpha=alpha)
            evidence["estimated_performance"] = {
                "baseline_accuracy": base.confidence.mean,
                "candidate_accuracy": mine.confidence.mean, **est.to_dict()}
        if base.prediction.n and mine.prediction.n:
            evidence["prediction_shift"] = {
                "baseline_mean": base.prediction.mean, "candidate_mean": mine.prediction.mean,
                "difference": mine.prediction.mean - base.prediction.mean}
        margin = margin_of(spec, base)
        guards = self._guards(base, mine, alpha, evidence)
        perf = unpaired(mine.loss, base.loss, margin=margin, alpha=alpha)
        evidence["performance"] = {**perf.to_dict(), "baseline_loss": _num(base.loss.mean),
                                   "candidate_loss": _num(mine.loss.mean)}
        pairs = self._disagreements(cand, base, evidence)
        dis: Comparison | None = None
        if pairs.n:
            r = radius(pairs.n, pairs.variance, alpha)
            dis = decide(pairs.mean, pairs.mean - r, pairs.mean + r, pairs.n,
                         spec.max_disagreement, alpha)
            evidence["disagreement"] = dis.to_dict()
        samples = {spec.baseline: base.loss.n, cand: mine.loss.n}
        verdict: Verdict = "continue"
        signal, reason = "none", "collecting evidence"
        flagged = [r["feature"] for r in routing if r["flagged"]]
        # an input whose difference looks larger than the tolerance, not yet surely: no
        # model verdict until the routing check settles either way
        suspect = [r["feature"] for r in routing if not r["flagged"] and (
            abs(r["estimate"]) > r["tolerance"])]
        decisive = perf
        # shadow: the versions' disagreement bounds their accuracy difference, so agreement
        # within max_disagreement may promote before labels do; more disagreement rolls back
        # only where no label is compared (else the labels say whether it is for the worse)
        if spec.strategy == "shadow" and dis is not None and perf.n < spec.min_samples and (
                dis.verdict == "promote" or (base.loss.n == 0 and mine.loss.n == 0)):
            decisive, signal = dis, "disagreement"
            samples = {spec.baseline: pairs.n, cand: pairs.n}
        elif perf.n:
            signal = "performance"
        if flagged:
            verdict, signal = "inconclusive", "routing"
            reason = (f"routing: version {cand} receives different inputs than "
                      f"{spec.baseline} ({', '.join(flagged[:5])}) — not a model verdict")
        elif suspect and not final and self.elapsed() < spec.max_seconds:
            reason = f"inputs differ more than the tolerance so far ({', '.join(suspect[:5])})"
        elif any(g.verdict == "rollback" for g in guards.values()):
            signal, g = next((k, g) for k, g in guards.items() if g.verdict == "rollback")
            verdict, samples = "rollback", {
                spec.baseline: base.latency.n if signal == "latency" else base.rows,
                cand: mine.latency.n if signal == "latency" else mine.rows}
            reason = (f"{signal}: {cand} worse than {spec.baseline} by more than the margin "
                      f"({g.lower:.4f} > {g.margin:.4f})")
        elif decisive.n >= spec.min_samples and decisive.verdict == "rollback":
            verdict = "rollback"
            reason = (f"{signal}: {cand} worse than {spec.baseline} by more than the margin "
                      f"({decisive.lower:.4f} > {decisive.margin:.4f})")
        elif (decisive.n >= spec.min_samples and decisive.verdict == "promote"
              and self.elapsed() >= spec.min_seconds):
            verdict = "promote"
            reason = (f"{signal}: {cand} no worse than {spec.baseline} within the margin "
                      f"({decisive.upper:.4f} < {decisive.margin:.4f})")
        elif final or self.elapsed() >= spec.max_seconds:
            verdict, signal = "inconclusive", "guard-rail"
            reason = (self.aborted if final and self.aborted else
                      f"max_seconds ({spec.max_seconds:g} s) reached without a decision")
        at = self.folded
        ts = None if at is None else (at + 1) * self.slice_seconds
        return Decision(self.name, spec.model, spec.baseline, cand, spec.strategy, verdict,
                        reason, signal, at, ts, samples, evidence)

    def _disagreements(self, cand: str, base: _Side, evidence: dict[str, Any]) -> RunningMean:
        """The shadow pairs' disagreement as the running mean of its 0/1 indicator (a
        regressor's: differences beyond ``pair_tolerance``, by default a tenth of the
        baseline's prediction standard deviation); their description into ``evidence``."""
        pc = self.pairs[cand]
        if not pc.n:
            return RunningMean()
        k = pc.disagree
        if not pc.decided:
            tol = self.spec.pair_tolerance
            if tol is None and base.prediction.n > 1 and base.prediction.variance > 0:
                tol = 0.1 * math.sqrt(base.prediction.variance)
            if tol is None:
                return RunningMean()  # no scale yet to call two numbers different
            k = pc.diff.beyond(tol)
            evidence["pair_tolerance"] = tol
        evidence["pairs"] = {
            "n": pc.n, "agreement": 1.0 - k / pc.n,
            "difference_mean": _num(pc.diff.mean) if pc.diff.n else None,
            "difference_std": pc.diff.std,
            **{f"abs_difference_p{q}": pc.diff.quantile(q / 100) for q in (50, 90, 99)}}
        return _share(k, pc.n)

    def _guards(self, base: _Side, mine: _Side, alpha: float, evidence: dict[str, Any]
                ) -> dict[str, Comparison]:
        """The guard-rail signals the spec enables — ``latency`` (mean request latency, the
        margin relative to the baseline's), ``quality`` (the share of predictions missing or
        not valid) — each at ``alpha`` (the candidate's, split over them and the model
        signal: see :meth:`_judge`); each only rolls back (``promote`` from them is no
        verdict). Their description goes into ``evidence`` whether enabled or not."""
        spec = self.spec
        out: dict[str, Comparison] = {}
        if base.latency.n and mine.latency.n:
            evidence["latency"] = {f"{who}_{k}": v for who, side in (
                ("baseline", base), ("candidate", mine)) for k, v in (
                ("mean", side.latency.mean), ("p50", side.latency.quantile(0.5)),
                ("p99", side.latency.quantile(0.99)))}
            if spec.latency_margin is not None:
                c = unpaired(mine.latency.moments(), base.latency.moments(),
                             margin=spec.latency_margin * base.latency.mean, alpha=alpha)
                out["latency"] = c
                evidence["latency"].update(c.to_dict())
        if base.rows and mine.rows:
            evidence["quality"] = {"baseline_bad_share": base.bad_predictions / base.rows,
                                   "candidate_bad_share": mine.bad_predictions / mine.rows}
            if spec.quality_margin is not None:
                c = unpaired(_share(mine.bad_predictions, mine.rows),
                             _share(base.bad_predictions, base.rows),
                             margin=spec.quality_margin, alpha=alpha)
                out["quality"] = c
                evidence["quality"].update(c.to_dict())
        return {k: c for k, c in out.items() if c.n >= spec.min_samples}

    @staticmethod
    def _looks_binary(side: _Side) -> bool:
        """A classifier's 0/1 losses: the variance of a Bernoulli of that mean."""
        m = side.loss.mean
        return abs(side.loss.variance - m * (1 - m)) <= 1e-9 + 1e-6 * m

    def _routing(self, base: _Side, mine: _Side, alpha: float) -> list[dict[str, Any]]:
        """Per input feature (and category): the candidate − baseline difference, its
        anytime-valid bounds, and whether it surely exceeds the tolerance."""
        spec = self.spec
        checks: list[tuple[str, RunningMean, RunningMean, float]] = []
        for name, b in sorted(base.numeric.items()):
            c = mine.numeric.get(name)
            if c is not None and b.n > 1 and c.n > 1 and b.variance > 0:
                checks.append((name, c, b, spec.input_tolerance * math.sqrt(b.variance)))
        for name, bc in sorted(base.categorical.items()):
            cc = mine.categorical.get(name, {})
            nb, nc = sum(bc.values()), sum(cc.values())
            if nb and nc:
                for cat in sorted(set(bc) | set(cc)):
                    checks.append((f"{name}={cat}", _share(cc.get(cat, 0), nc),
                                   _share(bc.get(cat, 0), nb), spec.share_tolerance))
        out = []
        each = alpha / max(1, len(checks))
        for name, c, b, tol in checks:
            est = c.mean - b.mean
            r = radius(c.n, c.variance, each / 2) + radius(b.n, b.variance, each / 2)
            lo, hi = est - r, est + r
            flagged = min(c.n, b.n) >= spec.min_samples and (lo > tol or hi < -tol)
            out.append({"feature": name, "estimate": est, "lower": _num(lo), "upper": _num(hi),
                        "tolerance": tol, "flagged": bool(flagged)})
        return out

    # -- state ---------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """What the API, the metrics and the store show of this rollout."""
        return {"name": self.name, "model": self.spec.model, "baseline": self.spec.baseline,
                "candidates": list(self.spec.candidates), "strategy": self.spec.strategy,
                "elapsed_seconds": self.elapsed(), "unmatched_slices": self.unmatched_slices,
                "verdicts": {c: (self.decisions.get(c) or self.latest.get(c) or
                                 _waiting(self, c)).to_dict() for c in self.spec.candidates}}

    def to_state(self) -> dict[str, Any]:
        return {"spec": msgspec.to_builtins(self.spec), "slice_seconds": self.slice_seconds,
                "pending": {k: [[s, v] for s, v in p.items()] for k, p in self.pending.items()},
                "passed": {k: (v if math.isfinite(v) else None if v < 0 else "inf")
                           for k, v in self.passed.items()},
                "folded": self.folded,
                "sides": {v: s.to_state() for v, s in self.sides.items()},
                "pairs": {c: p.to_state() for c, p in self.pairs.items()},
                "direct_pairs": self.direct_pairs,
                "first_slice": self.first_slice,
                "unmatched_slices": self.unmatched_slices, "aborted": self.aborted,
                "decisions": {c: d.to_dict() for c, d in self.decisions.items()}}

    @classmethod
    def from_state(cls, name: str, state: Mapping[str, Any]) -> Rollout:
        spec = msgspec.convert(state["spec"], RolloutSpec)
        r = cls(name, spec, slice_seconds=state["slice_seconds"])
        r.pending.update({k: {int(s): v for s, v in p} for k, p in state["pending"].items()})
        r.passed.update({k: (-math.inf if v is None else math.inf if v == "inf" else float(v))
                         for k, v in state["passed"].items()})
        r.folded = state["folded"]
        r.sides = {v: _Side.from_state(s) for v, s in state["sides"].items()}
        r.pairs = {c: PairCounts.from_state(p) if isinstance(p, Mapping)
                   else PairCounts(n=int(p[0]), disagree=round(p[0] * p[1]))  # older state
                   for c, p in state["pairs"].items()}
        r.direct_pairs = bool(state.get("direct_pairs", False))
        r.first_slice = state["first_slice"]
        r.unmatched_slices = int(state["unmatched_slices"])
        r.aborted = state["aborted"]
        r.decisions = {c: _decision(d) for c, d in state["decisions"].items()}
        return r


def _decision(d: Mapping[str, Any]) -> Decision:
    return Decision(d["rollout"], d["model"], d["baseline"], d["candidate"], d["strategy"],
                    d["verdict"], d["reason"], d["signal"], d["slice"], d["ts"],
                    dict(d["samples"]), d["evidence"])


def _waiting(r: Rollout, cand: str) -> Decision:
    return Decision(r.name, r.spec.model, r.spec.baseline, cand, r.spec.strategy, "continue",
                    "no concurrent slice yet", "none", None, None,
                    {r.spec.baseline: 0, cand: 0}, {})


def _flip(confidence: RunningMean) -> RunningMean:
    """Expected accuracy as expected loss (1 − confidence), as the performance signal is."""
    return RunningMean(confidence.n, 1.0 - confidence.mean, confidence.m2)


def margin_of(spec: RolloutSpec, base: _Side) -> float:
    """The non-inferiority margin in loss units (see :class:`RolloutSpec`)."""
    if spec.margin is not None:
        return spec.margin
    return 0.01 if base.loss.n == 0 or Rollout._looks_binary(base) else 0.01 * base.loss.mean


def _num(x: float) -> float | None:
    return x if isinstance(x, float) and math.isfinite(x) else None


def as_numbers(values: Any) -> np.ndarray | None:
    """``values`` as float64 if every one is a number (None: not numeric).

    >>> as_numbers([1, "2.5"]).tolist(), as_numbers(["cat"])
    ([1.0, 2.5], None)
    """
    arr = np.asarray(values)
    if arr.dtype.kind in "fiub":
        return arr.astype(np.float64)
    try:
        return np.asarray([float(v) for v in arr.tolist()], dtype=np.float64)
    except (TypeError, ValueError):
        return None


def decisions(values: Any, numeric: np.ndarray | None) -> np.ndarray:
    """A classifier's decision per prediction: a score in [0, 1] thresholded at 0.5, any
    other value as it is (``numeric``: :func:`as_numbers` of ``values``)."""
    if numeric is not None and np.all((numeric >= 0.0) & (numeric <= 1.0) | ~np.isfinite(numeric)):
        return np.where(np.isfinite(numeric), (numeric >= 0.5).astype(np.float64), np.nan)
    return np.asarray(values).astype(str)


def pair_disagreements(baseline: Any, candidate: Any, tolerance: float | None = None
                       ) -> np.ndarray:
    """Shadow mode: 1.0 where the two versions' predictions of the same requests decide
    differently (:func:`decisions`: scores in [0, 1] on either side of 0.5, other values
    unequal) or, with ``tolerance``, numbers further apart than it.

    >>> pair_disagreements([0.2, 0.7, 0.55], [0.3, 0.4, 0.6]).tolist()
    [0.0, 1.0, 0.0]
    >>> pair_disagreements([10.0, 12.0], [10.5, 14.0], tolerance=1.0).tolist()
    [0.0, 1.0]
    >>> pair_disagreements([0, 2, 3], [0, 3, 3]).tolist()     # class ids, not scores
    [0.0, 1.0, 0.0]
    """
    if tolerance is not None:
        b, c = np.asarray(baseline, dtype=float), np.asarray(candidate, dtype=float)
        return (np.abs(c - b) > tolerance).astype(np.float64)
    return (decisions(baseline, as_numbers(baseline))
            != decisions(candidate, as_numbers(candidate))).astype(np.float64)


__all__ = ["Decision", "PairCounts", "Rollout", "RolloutSpec", "Strategy",
           "as_numbers", "data_moments", "decisions", "pair_disagreements"]
