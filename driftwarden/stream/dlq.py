"""Dead-letter records: every message that could not be used, with why and where from.

The value is the original bytes, untouched (for a rejected record inside a batch message, the
record re-encoded as JSON, with its index in a header) — up to ``max_bytes``: a longer body is
cut there, and ``dw.truncated``, ``dw.original.bytes`` and ``dw.original.sha256`` say so, so a
dead letter always fits the producer's and the broker's message limits. Headers name the
reason and the source, and keep the original headers under an ``original.`` prefix (at most
``MAX_ORIGINAL_HEADERS`` of them and ``MAX_HEADER_BYTES`` in all; ``dw.headers.dropped``
counts the rest).

>>> from driftwarden.schema import Rejection
>>> value, headers = dead_letter(b"{oops", [("ce_id", b"1")], Rejection("bad_json", "x"),
...                              "driftwarden.predictions", 2, 1041)
>>> value, dict(headers)["dw.reason"], dict(headers)["dw.source.offset"]
(b'{oops', b'bad_json', b'1041')
>>> value, headers = dead_letter(b"x" * 100, [], Rejection("oversized", "x"), "t", 0, 1,
...                              max_bytes=10)
>>> len(value), dict(headers)["dw.truncated"], dict(headers)["dw.original.bytes"]
(10, b'1', b'100')
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

import orjson

from driftwarden.schema import Headers, Rejection, headers_dict

MAX_DETAIL = 500
MAX_ORIGINAL_HEADERS = 64
MAX_HEADER_BYTES = 16_384
DEFAULT_MAX_BYTES = 262_144


def dead_letter(value: bytes, headers: Headers, rejection: Rejection, topic: str,
                partition: int, offset: int, record: Any = None,
                max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The (value, headers) to produce to the dead-letter topic for one rejection."""
    out = [("dw.reason", rejection.reason.encode()),
           ("dw.detail", rejection.detail[:MAX_DETAIL].encode("utf-8", "replace")),
           ("dw.source.topic", topic.encode()),
           ("dw.source.partition", str(partition).encode()),
           ("dw.source.offset", str(offset).encode())]
    if rejection.index is not None:
        out.append(("dw.source.index", str(rejection.index).encode()))
        if record is not None:
            # a record orjson cannot encode: the whole message is kept instead
            with contextlib.suppress(TypeError, orjson.JSONEncodeError):
                value = orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)
    if len(value) > max_bytes:
        out += [("dw.truncated", b"1"), ("dw.original.bytes", str(len(value)).encode()),
                ("dw.original.sha256", hashlib.sha256(value).hexdigest().encode())]
        value = value[:max_bytes]
    room, dropped = MAX_HEADER_BYTES, 0
    for k, v in headers_dict(headers).items():
        size = len(k) + len(v) + 9
        if size > room or len(out) >= MAX_ORIGINAL_HEADERS + 10:
            dropped += 1
            continue
        room -= size
        out.append((f"original.{k}", v))
    if dropped:
        out.append(("dw.headers.dropped", str(dropped).encode()))
    return value, out
