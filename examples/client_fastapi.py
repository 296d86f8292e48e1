"""A FastAPI model endpoint that logs every prediction to driftwarden without slowing down.

    pip install driftwarden fastapi uvicorn
    DRIFTWARDEN_BOOTSTRAP=127.0.0.1:9092 uvicorn examples.client_fastapi:app

``dw.log`` only appends to a bounded buffer (about a microsecond); driftwarden.client's own
thread sends column batches to Kafka. The shutdown hook flushes what is left.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI
from pydantic import BaseModel

from driftwarden.client import Client

MODEL, VERSION = "fraud", os.environ.get("MODEL_VERSION", "7")
dw = Client(os.environ.get("DRIFTWARDEN_BOOTSTRAP", "127.0.0.1:9092"), model=MODEL,
            version=VERSION, start=os.environ.get("DRIFTWARDEN_CLIENT_START", "1") == "1")


@asynccontextmanager
async def lifespan(_app: FastAPI):
    yield
    await dw.aclose(timeout=10)  # send what is buffered before the process goes


app = FastAPI(lifespan=lifespan)


class Transaction(BaseModel):
    id: str
    amount: float
    country: str


def score(t: Transaction) -> float:
    """Stands in for the real model."""
    return 1.0 / (1.0 + math.exp(-(0.03 * (t.amount - 30.0) - 2.0)))


@app.post("/predict")
async def predict(t: Transaction) -> dict:
    started = time.perf_counter()
    p = score(t)
    dw.log({"amount": t.amount, "country": t.country}, p, id=t.id,
           latency_ms=(time.perf_counter() - started) * 1e3)
    return {"id": t.id, "score": p}
