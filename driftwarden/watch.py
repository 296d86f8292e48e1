"""``driftwarden watch``: follow a worker's verdicts from a terminal.

It polls the worker's ``GET /verdicts`` and prints one line per change of a verdict (model,
version, kind, state, severity, features) — what a new user wants to see after
``driftwarden produce``, without curl and jq. ``--until-drift`` makes it a check for scripts:
exit 0 at the first open incident, 1 when ``--timeout`` passes first.

>>> old = {}
>>> new = [{"model": "fraud", "version": "1", "kind": "data", "drift": True,
...         "state": "drifting", "severity": "critical", "features": ["amount"], "ts": 60.0}]
>>> [line.split("  ", 1)[1] for line in changes(old, new)]
['fraud v1 data: drifting (critical) features amount']
>>> changes(old, new)   # the same verdict again: nothing new to say
[]
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from driftwarden.errors import InputError

Key = tuple[str, str, str]


def fetch(url: str, token: str | None = None, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The worker's current verdicts (``url`` is the worker's web address)."""
    req = urllib.request.Request(url.rstrip("/") + "/verdicts")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - an http URL
            body = resp.read(64 << 20)
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise InputError(f"{url}: a read token is required (--token or "
                             "DRIFTWARDEN_TOKEN)") from None
        raise
    data = orjson.loads(body)
    if not isinstance(data, list):
        raise InputError(f"{url}/verdicts did not answer with a list of verdicts")
    return [v for v in data if isinstance(v, dict)]


def describe(v: dict[str, Any]) -> str:
    """One verdict as words: state, severity and features."""
    state = v.get("state") or ("drifting" if v.get("drift") else "ok")
    sev = f" ({v['severity']})" if v.get("severity") not in (None, "none") else ""
    feats = [str(f) for f in v.get("features") or []]
    more = f" and {len(feats) - 8} more" if len(feats) > 8 else ""
    shown = f" features {', '.join(feats[:8])}{more}" if feats else ""
    return f"{v.get('model')} v{v.get('version')} {v.get('kind')}: {state}{sev}{shown}"


def changes(seen: dict[Key, str], verdicts: Iterable[dict[str, Any]],
            now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> list[str]:
    """Lines for the verdicts that differ from what ``seen`` holds (which is updated)."""
    out = []
    for v in verdicts:
        key = (str(v.get("model")), str(v.get("version")), str(v.get("kind")))
        line = describe(v)
        if seen.get(key) != line:
            seen[key] = line
            out.append(f"{now():%H:%M:%S}  {line}")
    return out


def watch(url: str, *, echo: Callable[[str], None], interval: float = 2.0,
          until_drift: bool = False, timeout: float | None = None,
          token: str | None = None) -> int:
    """Poll ``url`` and echo changes; returns the exit code (see the module docstring)."""
    seen: dict[Key, str] = {}
    deadline = None if timeout is None else time.monotonic() + timeout
    waiting = False
    echo(f"watching {url}/verdicts (Ctrl-C stops)")
    while True:
        try:
            verdicts = fetch(url, token)
        except (urllib.error.URLError, OSError, orjson.JSONDecodeError) as exc:
            if not waiting:
                echo(f"waiting for the worker at {url} ({getattr(exc, 'reason', exc)})")
                waiting = True
        else:
            if waiting:
                echo("worker answered")
                waiting = False
            if not verdicts and not seen:
                seen[("", "", "")] = ""
                echo("no verdict yet: a model needs its baseline (warm-up) and one closed "
                     "slice; see /models for window_fill")
            for line in changes(seen, verdicts):
                echo(line)
            if until_drift and any(v.get("drift") for v in verdicts):
                return 0
        if deadline is not None and time.monotonic() >= deadline:
            echo(f"no drift within {timeout:g} s" if until_drift else "timeout")
            return 1 if until_drift else 0
        time.sleep(interval)
