"""Dead-letter records: every message that could not be used, with why and where from.

The value is the original bytes, untouched (for a rejected record inside a batch message, the
record re-encoded as JSON, with its index in a header). Headers name the reason and the
source, and keep the original headers under an ``original.`` prefix.

>>> from driftwarden.schema import Rejection
>>> value, headers = dead_letter(b"{oops", [("ce_id", b"1")], Rejection("bad_json", "x"),
...                              "driftwarden.predictions", 2, 1041)
>>> value, dict(headers)["dw.reason"], dict(headers)["dw.source.offset"]
(b'{oops', b'bad_json', b'1041')
"""

from __future__ import annotations

from typing import Any

import orjson

from driftwarden.schema import Headers, Rejection, headers_dict

MAX_DETAIL = 500


def dead_letter(value: bytes, headers: Headers, rejection: Rejection, topic: str,
                partition: int, offset: int, record: Any = None
                ) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The (value, headers) to produce to the dead-letter topic for one rejection."""
    out = [("dw.reason", rejection.reason.encode()),
           ("dw.detail", rejection.detail[:MAX_DETAIL].encode("utf-8", "replace")),
           ("dw.source.topic", topic.encode()),
           ("dw.source.partition", str(partition).encode()),
           ("dw.source.offset", str(offset).encode())]
    if rejection.index is not None:
        out.append(("dw.source.index", str(rejection.index).encode()))
        if record is not None:
            value = orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)
    out += [(f"original.{k}", v) for k, v in headers_dict(headers).items()]
    return value, out
