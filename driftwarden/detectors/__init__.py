"""The detection core: mergeable summaries, windows, statistics, online detectors, decisions.

Pure Python + numpy / scipy / river: no Kafka, no files, no network, no wall clock. Everything
here is testable in microseconds and shared by the stream, batch and edge modes.
"""

from __future__ import annotations

from driftwarden.detectors.baseline import Baseline
from driftwarden.detectors.compare import FeatureComparison, compare
from driftwarden.detectors.decide import (
    Calibration,
    Decider,
    DecisionPolicy,
    Evaluation,
    Verdict,
    calibrate,
    evaluate,
)
from driftwarden.detectors.summary import Summary
from driftwarden.detectors.window import SlidingWindow, tumbling_window


def __getattr__(name: str) -> object:
    # river is heavy to import; load the online detectors only when asked for
    if name in ("OnlineDetector", "DriftResult"):
        from driftwarden.detectors import online

        return getattr(online, name)
    raise AttributeError(name)


__all__ = [
    "Baseline", "Calibration", "DecisionPolicy", "Decider", "DriftResult", "Evaluation",
    "FeatureComparison", "OnlineDetector", "SlidingWindow", "Summary", "Verdict", "calibrate",
    "compare", "evaluate", "tumbling_window",
]
