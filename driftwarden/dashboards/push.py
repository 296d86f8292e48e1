"""Upload the dashboards to a Grafana server with ``grafana-client`` (the client only uploads;
the JSON comes from :mod:`driftwarden.dashboards`).

Idempotent: a dashboard whose stored model already equals the built one is left alone, so
pushing twice changes nothing (no new dashboard version in Grafana's history). The folder is
created when missing. Every failure — Grafana down, slow, refusing the token — becomes one
:class:`~driftwarden.errors.InputError` line, never a traceback.

>>> push_all("http://127.0.0.1:9", token=None, timeout=0.5)  # doctest: +ELLIPSIS
Traceback (most recent call last):
driftwarden.errors.InputError: Grafana at http://127.0.0.1:9: ...
"""

from __future__ import annotations

from typing import Any

from driftwarden.config import safe_url
from driftwarden.dashboards import build_all
from driftwarden.errors import InputError

FOLDER_UID = "driftwarden"
# what Grafana adds to a stored dashboard model; not part of what we compare
_SERVER_FIELDS = ("id", "version")


def _same(stored: dict[str, Any], built: dict[str, Any]) -> bool:
    s = {k: v for k, v in stored.items() if k not in _SERVER_FIELDS}
    b = {k: v for k, v in built.items() if k not in _SERVER_FIELDS}
    return s == b


def push_all(url: str, *, token: str | None, folder: str = "driftwarden",
             overwrite: bool = True, timeout: float = 10.0) -> list[tuple[str, str]]:
    """Push every dashboard into ``folder``; returns ``(uid, "created" | "updated" |
    "unchanged")`` per dashboard."""
    from grafana_client import GrafanaApi
    from grafana_client.client import GrafanaClientError, GrafanaException

    api = GrafanaApi.from_url(url, credential=token, timeout=timeout)
    try:
        try:
            api.folder.get_folder(FOLDER_UID)
        except GrafanaClientError as exc:
            if exc.status_code != 404:
                raise
            api.folder.create_folder(folder, uid=FOLDER_UID)
        out = []
        for built in build_all():
            try:
                stored = api.dashboard.get_dashboard(built["uid"])["dashboard"]
            except GrafanaClientError as exc:
                if exc.status_code != 404:
                    raise
                stored = None
            if stored is not None and _same(stored, built):
                out.append((built["uid"], "unchanged"))
                continue
            api.dashboard.update_dashboard({
                "dashboard": {**built, "id": None}, "folderUid": FOLDER_UID,
                "overwrite": overwrite, "message": "driftwarden dashboards push"})
            out.append((built["uid"], "created" if stored is None else "updated"))
        return out
    except GrafanaException as exc:
        raise InputError(f"Grafana at {safe_url(url)}: {exc.message}") from None
    except Exception as exc:  # noqa: BLE001 - connection refused, DNS, TLS: one line
        raise InputError(f"Grafana at {safe_url(url)}: {type(exc).__name__}: {exc}") from None

