"""The baselines a worker starts with, from its config: ``[models.NAME] baseline = ...``.

* a file (CSV / Parquet): fitted once at start, for every version of the model;
* ``"store:latest"`` — each version's newest revision in the store (what ``driftwarden
  baseline fit`` stored, or the warm-up baseline an earlier worker recorded);
* ``"store:N"`` — revision N of each version;
* ``"store:VERSION/N"`` (or ``store:VERSION/latest``) — that one version's revision, for every
  version: a fixed reference, e.g. the champion's baseline for its challengers.

A version without a stored baseline warms up as usual. Revisions are read when the worker
starts (a revision stored later is used from the next start); a revision named but missing, or
a store that cannot be read, stops the start with one line — as a bad baseline file does.

>>> parse_store_ref("store:latest"), parse_store_ref("store:3"), parse_store_ref("store:1/2")
((None, None), (None, 3), ('1', 2))
>>> parse_store_ref("store:x")
Traceback (most recent call last):
...
driftwarden.errors.ConfigError: baseline 'store:x': give store:latest, store:REVISION or \
store:VERSION/REVISION (REVISION a number or latest)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from driftwarden.config import Settings
from driftwarden.detectors.baseline import Baseline
from driftwarden.errors import ConfigError, InputError

log = logging.getLogger("driftwarden.stream")
PREFIX = "store:"


def parse_store_ref(ref: str) -> tuple[str | None, int | None]:
    """(version or None for each version's own, revision or None for the newest)."""
    body = ref[len(PREFIX):]
    version, _, rev = body.rpartition("/")
    try:
        revision = None if rev == "latest" else int(rev)
        if revision is not None and revision < 1:
            raise ValueError(rev)
        if "/" in body and not version:
            raise ValueError(body)
    except ValueError:
        raise ConfigError(f"baseline {ref!r}: give store:latest, store:REVISION or "
                          "store:VERSION/REVISION (REVISION a number or latest)") from None
    return version or None, revision


def configured_models(settings: Settings) -> dict[str, dict[str, Any]]:
    """What the stream service needs of each configured model: feature names, task, and its
    baseline — ``baseline`` (every version) and/or ``baselines`` (by version)."""
    from driftwarden.batch import fit_baseline_file

    out: dict[str, dict[str, Any]] = {}
    store = None
    try:
        for name, m in settings.models.items():
            entry: dict[str, Any] = {"feature_names": m.feature_names, "task": m.task,
                                     "baseline": None, "baselines": {}}
            if m.baseline.startswith(PREFIX):
                version, revision = parse_store_ref(m.baseline)
                if store is None:
                    store = _store(settings)
                _from_store(store, name, version, revision, entry)
            elif m.baseline:  # a reference file is fitted once here: a bad one stops the start
                entry["baseline"] = fit_baseline_file(m.baseline, settings.detection, m.types)
            out[name] = entry
    finally:
        if store is not None:
            store.close()
    return out


def configured_baseline(models: Mapping[str, Mapping[str, Any]], model: str,
                        version: str) -> Baseline | None:
    """The baseline the config gives a model version (see :func:`configured_models`): its
    own revision, else the model's for every version."""
    entry = models.get(model, {})
    found: Baseline | None = entry.get("baselines", {}).get(version) or entry.get("baseline")
    return found


def _store(settings: Settings) -> Any:
    from driftwarden.store import database_url, open_store

    return open_store(database_url(settings), "baselines from the store: database")


def _from_store(store: Any, model: str, version: str | None, revision: int | None,
                entry: dict[str, Any]) -> None:
    from driftwarden.store import NotFound

    if version is not None:
        try:
            row = store.baseline(model, version, revision)
        except NotFound:
            raise InputError(f"models.{model}.baseline: no baseline revision "
                             f"{revision or 'latest'} of {model} v{version} in the store "
                             "(see `driftwarden baseline fit`)") from None
        entry["baseline"] = Baseline.from_state(row["summary"])
        log.info("baseline of %s: %s v%s revision %d from the store (every version)", model,
                 model, version, row["revision"])
        return
    rows = store.baseline_revisions(model, revision)
    if revision is not None and not rows:
        raise InputError(f"models.{model}.baseline: no version of {model} has a baseline "
                         f"revision {revision} in the store (see `driftwarden baseline fit`)")
    for v, row in rows.items():
        entry["baselines"][v] = Baseline.from_state(row["summary"])
    log.info("baselines of %s from the store: %s", model,
             ", ".join(f"v{v} revision {r['revision']}" for v, r in rows.items()) or
             "none yet (each version warms up)")


class BaselineFeed:
    """The baselines stage 2 fitted from warm-ups, for this worker's stage 1: a thread reads
    the compacted baselines topic (every partition, from its start, no consumer group) and
    queues them; :meth:`apply`, called on the event loop, hands them to every shard — so
    partials of those model versions are binned at the source instead of carrying records.
    A baseline that arrives late only costs bytes: the merge stage bins records itself."""

    def __init__(self, settings: Settings, shards: Any) -> None:
        import queue
        import threading

        self.settings = settings
        self.shards = shards
        self.queue: queue.SimpleQueue[tuple[str, str, Baseline]] = queue.SimpleQueue()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.received = 0

    def start(self) -> None:
        import threading

        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="driftwarden-baselines",
                                           daemon=True)
            self.thread.start()

    def stop(self) -> None:
        self.stopping.set()

    def apply(self) -> int:
        """Hand the queued baselines to the shards; how many."""
        n = 0
        while not self.queue.empty():
            model, version, baseline = self.queue.get_nowait()
            self.shards.set_baseline(model, version, baseline)
            n += 1
        return n

    def _run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        from driftwarden.kafka import client_config

        topic = self.settings.topics.baselines
        consumer = Consumer(client_config(self.settings, {
            "group.id": "driftwarden-baselines", "enable.auto.commit": False}), logger=log)
        try:
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)
                             for p in range(self.settings.kafka.partitions)])
            while not self.stopping.is_set():
                for m in consumer.consume(100, 0.5):
                    if m.error() is not None or m.value() is None:
                        continue
                    got = published_baseline(m.value() or b"", m.offset() or 0)
                    if got is not None:
                        self.queue.put(got)
                        self.received += 1
        except Exception:  # noqa: BLE001 - the feed is an optimisation: log, stop it
            log.exception("baseline feed stopped")
        finally:
            consumer.close()


def published_baseline(value: bytes, offset: int = -1) -> tuple[str, str, Baseline] | None:
    """(model, version, baseline) of one baselines-topic message; None (logged) for one that
    is not a baseline stage 2 published."""
    import msgspec

    try:
        body = msgspec.msgpack.decode(value)
        return str(body["model"]), str(body["version"]), Baseline.from_state(body["baseline"])
    except Exception as exc:  # noqa: BLE001 - not ours: skip it, say so
        log.warning("baselines topic: skipped a message at offset %s: %s", offset,
                    str(exc)[:200])
        return None


def read_published(settings: Settings, bootstrap_servers: str | None = None,
                   timeout: float = 10.0) -> dict[tuple[str, str], Baseline]:
    """Every baseline on the baselines topic now (newest per model version): read once from
    the start of each partition to its end. Raises :class:`~driftwarden.errors.InputError`
    when the broker does not answer within ``timeout`` seconds."""
    import time

    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from driftwarden.kafka import client_config

    topic = settings.topics.baselines
    consumer = Consumer(client_config(settings, {
        "group.id": "driftwarden-baselines", "enable.auto.commit": False},
        bootstrap_servers), logger=log)
    out: dict[tuple[str, str], Baseline] = {}
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            return out  # no topic: nothing published yet
        starts, ends = {}, {}
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                       timeout=timeout)
            if high > low:
                starts[p], ends[p] = low, high
        # from each partition's first offset kept (compaction may have removed offset 0,
        # and an offset out of range would reset to the end and read nothing)
        consumer.assign([TopicPartition(topic, p, starts[p]) for p in ends])
        deadline = time.monotonic() + timeout
        while ends:
            if time.monotonic() > deadline:
                raise InputError(f"reading the baselines topic {topic} took more than "
                                 f"{timeout:.0f} s")
            for m in consumer.consume(500, 0.5):
                if m.error() is not None:
                    continue
                offset = m.offset() or 0
                if offset + 1 >= ends.get(m.partition() or 0, 0):
                    ends.pop(m.partition() or 0, None)
                got = published_baseline(m.value() or b"", offset)
                if got is not None:
                    out[(got[0], got[1])] = got[2]
    except KafkaException as exc:
        raise InputError(f"cannot read the baselines topic {topic}: {exc}") from None
    finally:
        consumer.close()
    return out
