"""The edge pattern: a device summarises its own records and ships partial summaries.

A device that runs a model (a phone, a camera, a gateway) cannot stream every prediction, but
it can keep a :class:`~driftwarden.partials.PartialBuilder` — bounded memory: one summary per
open slice over the model's baseline bins — and send one small partial per slice to the
summaries topic, where the model's merge stage (stage 2) adds it to the same windows as the
stream's partials. :class:`EdgeClient` is that client:

* :meth:`EdgeClient.log` / :meth:`EdgeClient.add` take records; a slice is complete once the
  device's event time (its newest record minus ``allowed_lateness``) has passed it;
* complete partials are written to a **disk buffer** first (one file each, numbered), then
  sent oldest first; while the broker cannot be reached they stay there — bounded by
  ``max_buffer_bytes``, the oldest dropped first and counted (``dropped``) — and are sent
  when it can; the partial numbering survives restarts, so the merge stage recognises a
  partial sent twice;
* :meth:`EdgeClient.close` flushes the open slices (the device is going offline).

The merge stage waits for a device it has heard from, up to ``source_idle_seconds``; one
away for longer is no longer waited for, and what it sends later is counted late (per source),
not merged into closed slices and not lost silently. A device catching up shows as a source
lagging behind the others (``driftwarden_source_lag_seconds``), not as drift.

>>> import tempfile, numpy as np
>>> from driftwarden.detectors.baseline import Baseline
>>> base = Baseline.fit({"x": np.linspace(0, 1, 200)}, bins=4)
>>> sent = []
>>> dev = EdgeClient(base, model="m", version="1", device="cam-7", slice_seconds=10.0,
...                  buffer_dir=tempfile.mkdtemp(), send=lambda msgs: sent.extend(msgs) or True)
>>> dev.log({"x": 0.3}, ts=1.0); dev.log({"x": 0.9}, ts=12.0)
>>> _ = dev.close()
>>> [decode(v).rows for _, v in sent], dev.buffered, dev.sent
([1, 1], 0, 2)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from driftwarden.detectors.baseline import Baseline
from driftwarden.detectors.summary import LATENCY, PREDICTION
from driftwarden.partials import Partial, PartialBuilder, decode, encode, typed_columns
from driftwarden.stream.sources import summary_partition

log = logging.getLogger("driftwarden.edge")
Sender = Callable[[list[tuple[int, bytes]]], bool]  # (partition, value) pairs -> delivered


class EdgeClient:
    """A device's partial summaries of one model version; see the module docstring."""

    def __init__(self, baseline: Baseline, *, model: str, version: str, device: str,
                 slice_seconds: float, buffer_dir: str | os.PathLike[str],
                 allowed_lateness: float = 0.0, send: Sender | None = None,
                 n_partitions: int = 4, max_buffer_bytes: int = 64 << 20,
                 batch_rows: int = 1000) -> None:
        self.model, self.version, self.source = model, version, f"edge:{device}"
        self.n_partitions = n_partitions
        self.buffer = Path(buffer_dir)
        self.buffer.mkdir(parents=True, exist_ok=True)
        self.max_buffer_bytes = int(max_buffer_bytes)
        self.send = send
        self.batch_rows = batch_rows
        saved = self._load_state()
        self.dropped = int(saved.get("dropped", 0))
        self.sent = int(saved.get("sent", 0))
        self.builder = PartialBuilder(baseline, model=model, version=version,
                                      source=self.source, slice_seconds=slice_seconds,
                                      allowed_lateness=allowed_lateness,
                                      seq=int(saved.get("seq", 0)))
        self._rows: list[tuple[float, Mapping[str, Any], Any, float | None]] = []

    # -- records in ------------------------------------------------------------------------
    def log(self, features: Mapping[str, Any], prediction: Any = None,
            ts: float | None = None, latency_ms: float | None = None) -> None:
        """One record (``ts``: event time in seconds; now when omitted; ``latency_ms``: how
        long the prediction took, for rollouts' latency comparison)."""
        import time

        self._rows.append((time.time() if ts is None else float(ts), features, prediction,
                           latency_ms))
        if len(self._rows) >= self.batch_rows:
            self._drain_rows()

    def add(self, columns: Mapping[str, Any], ts: Any) -> None:
        """Records as columns (feature name -> values, ``__prediction__`` for outputs,
        ``__latency_ms__`` for request latencies)."""
        self._drain_rows()
        assert self.builder.baseline is not None
        self._keep(self.builder.add(typed_columns(self.builder.baseline, columns),
                                    np.asarray(ts, dtype=np.float64)))

    def _drain_rows(self) -> None:
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        names = sorted({n for _, f, _, _ in rows for n in f})
        cols: dict[str, Any] = {n: [f.get(n) for _, f, _, _ in rows] for n in names}
        if any(p is not None for _, _, p, _ in rows):
            cols[PREDICTION] = [p for _, _, p, _ in rows]
        if any(x is not None for *_, x in rows):
            cols[LATENCY] = [x for *_, x in rows]
        assert self.builder.baseline is not None
        self._keep(self.builder.add(typed_columns(self.builder.baseline, cols),
                                    np.array([t for t, _, _, _ in rows])))

    # -- partials out ---------------------------------------------------------------------
    def flush(self) -> int:
        """Send what the buffer holds, oldest first, stopping at the first failure; returns
        how many were sent."""
        self._drain_rows()
        return self._send_buffer()

    def close(self) -> int:
        """Publish every open slice (the device goes offline or stops) and try to send."""
        self._drain_rows()
        self._keep(self.builder.flush())
        return self._send_buffer()

    @property
    def buffered(self) -> int:
        return len(self._files())

    def _keep(self, partials: list[Partial]) -> None:
        for p in partials:
            path = self.buffer / f"{p.seq:012d}.partial"
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(encode(p, binary=True))
            os.replace(tmp, path)
        if partials:
            self._bound()
            self._save_state()
            self._send_buffer()

    def _files(self) -> list[Path]:
        return sorted(self.buffer.glob("*.partial"))

    def _bound(self) -> None:
        """Drop the oldest buffered partials beyond ``max_buffer_bytes`` (counted)."""
        files = self._files()
        sizes = [f.stat().st_size for f in files]
        total = sum(sizes)
        for f, size in zip(files, sizes):
            if total <= self.max_buffer_bytes:
                break
            f.unlink(missing_ok=True)
            total -= size
            self.dropped += 1
            log.warning("edge buffer full: dropped the oldest partial %s", f.name)

    def _send_buffer(self) -> int:
        if self.send is None:
            return 0
        n = 0
        for f in self._files():
            value = f.read_bytes()
            partition = summary_partition(self.model, self.n_partitions)
            try:
                ok = self.send([(partition, value)])
            except Exception as exc:  # noqa: BLE001 - offline: keep it for later
                log.info("edge: sending failed (%s); %d partial(s) kept", exc, self.buffered)
                ok = False
            if not ok:
                break
            f.unlink(missing_ok=True)
            n += 1
        self.sent += n
        if n:
            self._save_state()
        return n

    # -- the device's own state (the partial numbering must survive restarts) --------------
    def _state_path(self) -> Path:
        return self.buffer / "state.json"

    def _load_state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self._state_path().read_text()))
        except (OSError, ValueError):
            return {}

    def _save_state(self) -> None:
        tmp = self._state_path().with_suffix(".tmp")
        tmp.write_text(json.dumps({"seq": self.builder.seq, "dropped": self.dropped,
                                   "sent": self.sent}))
        os.replace(tmp, self._state_path())


class KafkaSender:
    """Sends partials to the summaries topic with confluent-kafka; a send that is not
    acknowledged within ``timeout`` seconds counts as failed (the device is offline) and the
    partial stays in the buffer."""

    def __init__(self, bootstrap_servers: str, topic: str = "driftwarden.summaries",
                 timeout: float = 5.0, config: Mapping[str, Any] | None = None) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self.timeout = timeout
        self.producer = Producer({"bootstrap.servers": bootstrap_servers,
                                  "enable.idempotence": True, "acks": "all",
                                  "message.timeout.ms": int(timeout * 1000),
                                  "log.connection.close": False, **(config or {})})

    def __call__(self, messages: list[tuple[int, bytes]]) -> bool:
        failed: list[Any] = []
        for partition, value in messages:
            self.producer.produce(self.topic, value=value, partition=partition,
                                  on_delivery=lambda err, _m: failed.append(err) if err else None)
        left = self.producer.flush(self.timeout)
        if left:
            self.producer.purge()
            self.producer.flush(0)
        return not left and not failed


__all__ = ["EdgeClient", "KafkaSender", "decode"]
