"""A KServe custom predictor that logs every prediction to driftwarden.

    pip install driftwarden kserve
    DRIFTWARDEN_BOOTSTRAP=kafka:9092 python examples/client_kserve.py

KServe's own request logger sends CloudEvents that driftwarden reads too; logging from the
predictor instead puts the features, the prediction, the request id and the model's own
latency in one record, with no sidecar. ``instances`` rows are named by ``FEATURES``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from driftwarden.client import Client

FEATURES = ("amount", "hour")


class FraudPredictor:
    """The model's logic, apart from KServe's plumbing (testable without kserve)."""

    def __init__(self, name: str, dw: Client) -> None:
        self.name, self.dw = name, dw

    def predict(self, payload: dict[str, Any], headers: dict[str, str] | None = None
                ) -> dict[str, Any]:
        started = time.perf_counter()
        rows = payload["instances"]
        scores = [min(1.0, max(0.0, 0.01 * float(row[0]))) for row in rows]
        took = (time.perf_counter() - started) * 1e3 / max(1, len(rows))
        rid = (headers or {}).get("ce-id") or (headers or {}).get("x-request-id")
        for i, (row, p) in enumerate(zip(rows, scores)):
            self.dw.log(dict(zip(FEATURES, row)), p, latency_ms=took,
                        id=None if rid is None else f"{rid}/{i}")
        return {"predictions": scores}


def main() -> None:  # pragma: no cover - needs kserve and a cluster's Kafka
    from kserve import Model, ModelServer

    dw = Client(os.environ.get("DRIFTWARDEN_BOOTSTRAP", "127.0.0.1:9092"), model="fraud",
                version=os.environ.get("MODEL_VERSION", "1"))

    class Fraud(Model):
        def __init__(self, name: str) -> None:
            super().__init__(name)
            self.logic = FraudPredictor(name, dw)
            self.ready = True

        async def predict(self, payload: dict, headers: dict | None = None) -> dict:
            return self.logic.predict(payload, headers)

    try:
        ModelServer().start([Fraud("fraud")])
    finally:
        dw.close()


if __name__ == "__main__":
    main()
