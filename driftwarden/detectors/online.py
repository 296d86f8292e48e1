"""Online concept-drift detectors: one adapter shape over river's detectors.

Concept drift shows in the *error stream* of a model (0/1 mistakes of a classifier, the loss of
a regressor) or in its *score stream*. river implements the classic detectors; this module puts
them behind one small class so river's API never leaks into the stream code:

* :class:`OnlineDetector` — ``update(x)`` feeds one value, ``update_many(xs)`` a batch, both
  return a frozen :class:`DriftResult`; ``to_state()`` / ``from_state()`` round-trip the whole
  detector through JSON-safe data (a Faust table value, a SQL row).
* ``method`` is one of ``adwin``, ``page_hinkley``, ``kswin`` (any real-valued stream),
  ``ddm``, ``eddm``, ``hddm_a``, ``hddm_w`` (0/1 error streams; HDDM also takes values in
  [0, 1]).

Field note: PageHinkley's default threshold (50) suits a stream of unit scale; scale it to the
data or it raises false alarms (hundreds per 500k N(0, 1) values). KSWIN is slow (~145 µs per
update) and noisy; ADWIN is the sensible default.

>>> import random
>>> rng = random.Random(7)
>>> det = OnlineDetector("adwin", seed=7)
>>> stream = ([float(rng.random() < 0.1) for _ in range(2000)]
...           + [float(rng.random() < 0.5) for _ in range(500)])
>>> first = next(i for i, x in enumerate(stream) if det.update(x).drift)
>>> 2000 <= first < 2200
True
"""

from __future__ import annotations

import base64
import collections
import importlib
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from river import drift as _drift
from river.drift import binary as _binary

from driftwarden.errors import ValidationError

METHODS: dict[str, type] = {
    "adwin": _drift.ADWIN,
    "page_hinkley": _drift.PageHinkley,
    "kswin": _drift.KSWIN,
    "ddm": _binary.DDM,
    "eddm": _binary.EDDM,
    "hddm_a": _binary.HDDMA,
    "hddm_w": _binary.HDDMW,
}
BINARY_METHODS = frozenset({"ddm", "eddm"})


@dataclass(frozen=True)
class DriftResult:
    """The verdict after an update: ``drift`` / ``warning`` flags, the detector's ``statistic``
    (its running estimate of the stream's mean, or KSWIN's KS statistic), ``p_value``
    (KSWIN only, else NaN), ``threshold`` (the detector's main sensitivity parameter) and
    ``n_seen`` (values fed since creation)."""

    drift: bool
    warning: bool
    statistic: float
    p_value: float
    threshold: float
    n_seen: int


_THRESHOLD_PARAM = {"adwin": "delta", "page_hinkley": "threshold", "kswin": "alpha",
                    "ddm": "drift_threshold", "eddm": "beta", "hddm_a": "drift_confidence",
                    "hddm_w": "drift_confidence"}


class OnlineDetector:
    """A river drift detector behind one shape; see the module docstring.

    Parameters
    ----------
    method
        Which detector (a key of :data:`METHODS`).
    seed
        Seed for detectors with randomness (KSWIN); others ignore it.
    **params
        Passed to river's constructor (e.g. ``delta=0.002`` for ADWIN).
    """

    def __init__(self, method: str = "adwin", *, seed: int = 0, **params: Any) -> None:
        if method not in METHODS:
            raise ValidationError(f"method must be one of {sorted(METHODS)}, got {method!r}")
        cls = METHODS[method]
        river_params = dict(params)
        if method == "kswin":
            river_params.setdefault("seed", seed)
        try:
            self._river = cls(**river_params)
        except TypeError as exc:
            raise ValidationError(f"bad parameter for {method}: {exc}") from None
        except (ValueError, AssertionError) as exc:
            raise ValidationError(f"bad parameter value for {method}: {exc}") from None
        self.method = method
        self.seed = int(seed)
        self.params = dict(params)
        self.n_seen = 0
        self.n_detections = 0
        self._sum = 0.0
        self._since_reset = 0

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.params.items()))
        return f"OnlineDetector({self.method!r}{', ' + args if args else ''}, n_seen={self.n_seen})"

    def update(self, x: float) -> DriftResult:
        """Feed one value (an error 0/1, a loss, a score). NaN / inf values are ignored."""
        if not isinstance(x, (int, float)) or not math.isfinite(x):
            return self.result()
        if self.method in BINARY_METHODS:
            x = 1.0 if x >= 0.5 else 0.0
        if self._river.drift_detected:
            self._sum, self._since_reset = 0.0, 0
        self._river.update(x)
        self.n_seen += 1
        self._sum += x
        self._since_reset += 1
        if self._river.drift_detected:
            self.n_detections += 1
        return self.result()

    @property
    def since_change(self) -> int:
        """Values seen since the last detected change (0 right at a detection: the values
        after it have not come yet); ``result().statistic`` is their mean."""
        return 0 if self._river.drift_detected else self._since_reset

    def update_many(self, xs: Iterable[float]) -> DriftResult:
        """Feed a batch; the result reports a drift if one was detected anywhere in it."""
        drift = warning = False
        for x in xs:
            r = self.update(float(x))
            drift |= r.drift
            warning |= r.warning
        r = self.result()
        return DriftResult(drift, warning, r.statistic, r.p_value, r.threshold, r.n_seen)

    def result(self) -> DriftResult:
        d = self._river
        statistic = self._sum / self._since_reset if self._since_reset else math.nan
        p_value = float(getattr(d, "p_value", math.nan)) if self.method == "kswin" else math.nan
        threshold = float(getattr(d, _THRESHOLD_PARAM[self.method]))
        return DriftResult(bool(d.drift_detected), bool(getattr(d, "warning_detected", False)),
                           statistic, p_value, threshold, self.n_seen)

    # -- state ---------------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """JSON-safe state: parameters, counters and river's internal state."""
        return {"method": self.method, "seed": self.seed, "params": _encode(self.params),
                "n_seen": self.n_seen, "n_detections": self.n_detections, "sum": self._sum,
                "since_reset": self._since_reset, "river": _encode_attrs(self._river)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> OnlineDetector:
        out = cls(state["method"], seed=state["seed"], **_decode(state["params"]))
        out.n_seen, out.n_detections = state["n_seen"], state["n_detections"]
        out._sum, out._since_reset = state["sum"], state["since_reset"]
        _restore_object(out._river, state["river"])
        return out


# ---------------------------------------------------------------------------------------------
# JSON-safe encoding of river objects (no pickle: state may come back from Kafka or SQL, and
# unpickling untrusted bytes runs code). Only river classes are reconstructed.


def _class_path(obj: Any) -> str:
    return f"{type(obj).__module__}:{type(obj).__qualname__}"


def _load_class(path: str) -> type:
    module, _, name = path.partition(":")
    if not (module == "river" or module.startswith("river.")):
        raise ValidationError(f"refusing to restore a non-river class {path!r}")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise ValidationError(f"{path!r} is not a class")
    return obj


def _encode(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else {"__float__": repr(v)}
    if isinstance(v, collections.deque):
        return {"__deque__": [_encode(x) for x in v], "maxlen": v.maxlen}
    if isinstance(v, tuple):
        return {"__tuple__": [_encode(x) for x in v]}
    if isinstance(v, list):
        return [_encode(x) for x in v]
    if isinstance(v, dict):
        return {"__dict__": [[_encode(k), _encode(x)] for k, x in v.items()]}
    if isinstance(v, random.Random):
        return {"__random__": _encode(v.getstate())}
    if type(v).__module__.startswith("river._river_rust"):
        return {"__rust__": _class_path(v), "args": _encode(v.__getnewargs__()),
                "state": base64.b64encode(v.__getstate__()).decode("ascii")}
    if type(v).__module__.startswith("river"):
        return {"__object__": _class_path(v), "attrs": _encode_attrs(v)}
    raise ValidationError(f"cannot encode a {type(v).__name__} in detector state")


def _encode_attrs(obj: Any) -> dict[str, Any]:
    return {k: _encode(x) for k, x in vars(obj).items() if not callable(x)}


def _decode(v: Any) -> Any:
    if isinstance(v, list):
        return [_decode(x) for x in v]
    if not isinstance(v, dict):
        return v
    if "__float__" in v:
        return float(v["__float__"])
    if "__deque__" in v:
        return collections.deque((_decode(x) for x in v["__deque__"]), maxlen=v["maxlen"])
    if "__tuple__" in v:
        return tuple(_decode(x) for x in v["__tuple__"])
    if "__dict__" in v:
        return {_decode(k): _decode(x) for k, x in v["__dict__"]}
    if "__random__" in v:
        r = random.Random()
        r.setstate(_decode(v["__random__"]))
        return r
    if "__rust__" in v:
        cls = _load_class(v["__rust__"])
        obj = cls(*_decode(v["args"]))
        obj.__setstate__(base64.b64decode(v["state"]))
        return obj
    if "__object__" in v:
        cls = _load_class(v["__object__"])
        obj = object.__new__(cls)
        _restore_object(obj, v["attrs"])
        return obj
    raise ValidationError("unrecognised detector state")


def _restore_object(obj: Any, attrs: Mapping[str, Any]) -> None:
    for k, x in attrs.items():
        setattr(obj, k, _decode(x))
