"""Response policy: from drift events to action events for automated responders.

Per model (from the config, with defaults):

* ``rollback`` to the previous version when **concept** drift is **critical** on a version
  deployed less than ``rollback_window`` seconds ago (and a previous version is known);
* ``retrain`` when **data** drift persists: an incident still open ``retrain_after`` seconds
  after its onset, or escalated to critical;
* ``review`` for any other onset worth a human (warning data / prediction / quality / concept).

Every action has an ``event_id`` that is a function of (incident, action) only, so a retry —
or a restarted worker replaying the same events — never produces a second id, and a
responder can drop duplicates. A ``cooldown`` per (model, action) keeps one incident storm
from issuing the same action over and over.

>>> p = ResponsePolicy()
>>> onset = {"event_id": "e1", "incident_id": "i1", "model": "fraud", "version": "7",
...          "kind": "data", "state": "onset", "severity": "warning", "features": ["amount"],
...          "evidence": [], "ts": 1000.0}
>>> [a["action"] for a in p.decide(onset)]
['review']
>>> [a["action"] for a in p.decide({**onset, "state": "escalation", "severity": "critical"})]
['retrain']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from driftwarden.config import RUNBOOK_BASE
from driftwarden.errors import ValidationError
from driftwarden.events import SCHEMA_VERSION
from driftwarden.stream.monitor import event_id

ACTIONS = ("rollback", "retrain", "review", "promote")


@dataclass(frozen=True)
class ModelPolicy:
    """The response rules of one model."""

    rollback_window: float = 86_400.0
    retrain_after: float = 3_600.0
    cooldown: float = 3_600.0
    review: bool = True
    runbook_url: str = RUNBOOK_BASE  # the runbook page; each action links #action-ACTION

    def __post_init__(self) -> None:
        for name in ("rollback_window", "retrain_after", "cooldown"):
            if getattr(self, name) < 0:
                raise ValidationError(f"{name} must be >= 0")


@dataclass
class ResponsePolicy:
    """Turns drift events into action events; see the module docstring."""

    default: ModelPolicy = field(default_factory=ModelPolicy)
    models: dict[str, ModelPolicy] = field(default_factory=dict)
    # model -> version -> (deployed_at, previous version); from the registry or the config
    deployments: dict[str, dict[str, tuple[float, str | None]]] = field(default_factory=dict)
    _last: dict[tuple[str, str], float] = field(default_factory=dict)
    _open: dict[str, float] = field(default_factory=dict)  # incident -> onset time
    # (model, version) -> the rollout judging that candidate version: the rollout decides
    # whether it is rolled back (on the same traffic as its baseline), so concept drift on it
    # asks for a review rather than a second, competing rollback
    rollouts: dict[tuple[str, str], str] = field(default_factory=dict)

    def register_version(self, model: str, version: str, deployed_at: float,
                         previous: str | None) -> None:
        self.deployments.setdefault(model, {})[version] = (deployed_at, previous)

    def decide(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The action events one drift event calls for (often none)."""
        model, version, kind = event["model"], event["version"], event["kind"]
        state, severity, ts = event["state"], event["severity"], float(event["ts"])
        incident = event["incident_id"]
        rules = self.models.get(model, self.default)
        if state == "onset":
            self._open[incident] = ts
        if state == "recovery":
            self._open.pop(incident, None)
            return []
        actions: list[tuple[str, str | None, str]] = []
        deployed = self.deployments.get(model, {}).get(version)
        judged_by = self.rollouts.get((model, version))
        if kind == "concept" and severity == "critical" and judged_by is not None:
            actions.append(("review", None, f"critical concept drift on version {version}, "
                                            f"a candidate of rollout {judged_by} (the rollout "
                                            "decides on its rollback)"))
        elif kind == "concept" and severity == "critical" and deployed is not None:
            deployed_at, previous = deployed
            if previous is not None and ts - deployed_at <= rules.rollback_window:
                actions.append(("rollback", previous,
                                f"critical concept drift on version {version}, deployed "
                                f"{ts - deployed_at:.0f} s ago"))
        if kind == "data" and (severity == "critical" or
                               ts - self._open.get(incident, ts) >= rules.retrain_after):
            actions.append(("retrain", None, f"data drift ({severity}) in "
                                             f"{', '.join(event['features']) or 'the inputs'}"))
        if not actions and state == "onset" and rules.review:
            actions.append(("review", None, f"{kind} drift ({severity}) in "
                                            f"{', '.join(event['features']) or 'the model'}"))
        out = []
        for action, target, reason in actions:
            key = (model, action)
            last = self._last.get(key)
            if last is not None and ts - last < rules.cooldown:
                continue
            self._last[key] = ts
            out.append({
                "schema_version": SCHEMA_VERSION,  # driftwarden.events.ActionEvent
                "event_id": event_id(incident, action),
                "action": action, "model": model, "version": version,
                "target_version": target, "incident_id": incident, "reason": reason,
                "evidence": {"drift_event_id": event["event_id"], "kind": kind,
                             "severity": severity, "features": list(event["features"]),
                             "tests": list(event.get("evidence", []))[:20]},
                "runbook_url": f"{rules.runbook_url}#action-{action}", "ts": ts,
                "rollout": None,  # set on the actions of a rollout's verdict
            })
        return out

    def to_state(self) -> dict[str, Any]:
        """What the policy remembers (deployments, last action times, open incidents) as JSON."""
        return {"deployments": {m: {v: list(d) for v, d in vs.items()}
                                for m, vs in self.deployments.items()},
                "last": [[m, a, t] for (m, a), t in self._last.items()],
                "open": dict(self._open)}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take back what :meth:`to_state` saved (the rules stay those of the config)."""
        self.deployments = {m: {v: (float(d[0]), d[1]) for v, d in vs.items()}
                            for m, vs in state["deployments"].items()}
        self._last = {(m, a): float(t) for m, a, t in state["last"]}
        self._open = {k: float(v) for k, v in state["open"].items()}


_SIGNAL_KIND = {"performance": "concept", "disagreement": "prediction", "routing": "data",
                "latency": "quality", "quality": "quality"}
_SIGNAL_FEATURE = {"disagreement": "__prediction__", "quality": "__prediction__",
                   "latency": "__latency_ms__"}


def rollout_action(decision: Any, runbook_url: str) -> dict[str, Any]:
    """The action event of a rollout's final verdict (a
    :class:`~driftwarden.detectors.rollout.Decision`): ``rollback`` (back to the baseline
    version), ``promote`` (to the candidate) or, for ``inconclusive``, ``review``. Its
    ``event_id`` is the decision's: the same on every replay and topology."""
    d = decision
    action = {"rollback": "rollback", "promote": "promote"}.get(d.verdict, "review")
    ev = d.evidence
    if d.signal in _SIGNAL_FEATURE:
        comp, features = ev.get(d.signal) or {}, [_SIGNAL_FEATURE[d.signal]]
    elif d.signal == "routing":
        flagged = [x for x in ev.get("inputs", []) if x["flagged"]]
        comp = flagged[0] if flagged else {}
        features = [x["feature"] for x in flagged]
    else:
        comp, features = ev.get("performance") or {}, ["__error__"]
    margin = comp.get("margin", comp.get("tolerance"))  # routing: the input's tolerance
    test = {"feature": features[0] if features else "__error__",
            "test": "confidence_sequence", "statistic": comp.get("estimate"),
            "pvalue": None, "adjusted_pvalue": None, "threshold": margin,
            "n_reference": int(d.samples.get(d.baseline, 0)),
            "n_current": int(d.samples.get(d.candidate, 0)),
            "decision": True, "rejected": d.verdict == "rollback"}
    return {
        "schema_version": SCHEMA_VERSION,  # driftwarden.events.ActionEvent
        "event_id": d.event_id, "action": action, "model": d.model, "version": d.candidate,
        "target_version": {"rollback": d.baseline, "promote": d.candidate}.get(action),
        "incident_id": event_id("rollout", d.rollout), "reason": f"rollout {d.rollout}: "
        f"{d.reason}",
        "evidence": {"drift_event_id": d.event_id, "kind": _SIGNAL_KIND.get(d.signal, "concept"),
                     "severity": {"rollback": "critical", "promote": "none"}.get(
                         action, "warning"),
                     "features": features, "tests": [test]},
        "runbook_url": f"{runbook_url}#action-{action}", "ts": d.ts if d.ts is not None else 0.0,
        "rollout": {"rollout": d.rollout, "strategy": d.strategy, "baseline": d.baseline,
                    "candidate": d.candidate, "verdict": d.verdict, "signal": d.signal,
                    "estimate": comp.get("estimate"), "lower": comp.get("lower"),
                    "upper": comp.get("upper"), "margin": margin,
                    "alpha": float(ev.get("alpha", 0.0)), "samples": dict(d.samples),
                    "slice": d.slice},
    }
