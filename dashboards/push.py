"""Upload the committed dashboards to a running Grafana through its HTTP API.

For a Grafana that does not provision them from files (deploy/grafana does that for the compose
stack; Grafana refuses to overwrite a provisioned dashboard through the API). The caller reads
the token from `GRAFANA_TOKEN` or a file; nothing here reads a secret.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

from grafana_client import GrafanaApi
from grafana_client.client import GrafanaClientError

PUSH_MESSAGE = "churnwatch dashboards (python -m churnwatch.dashboards.build)"


def load_dashboards() -> list[dict[str, Any]]:
    """The committed dashboards (package data `json/*.json`), sorted by uid."""
    folder = resources.files("churnwatch.dashboards").joinpath("json")
    dashboards = [
        json.loads(entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".json")
    ]
    return sorted(dashboards, key=lambda dashboard: dashboard["uid"])


def folder_uid(title: str) -> str:
    """A folder uid derived from its title, so repeated pushes find the same folder.

    >>> folder_uid("churnwatch")
    'churnwatch'
    >>> folder_uid("Customer Success / churn")
    'customer-success-churn'
    """
    uid = re.sub(r"[^a-z0-9_-]+", "-", title.lower())[:40].strip("-")
    if not uid:
        raise ValueError(f"cannot derive a Grafana folder uid from the folder title {title!r}")
    return uid


def upload_payload(dashboard: dict[str, Any], target_folder_uid: str) -> dict[str, Any]:
    """The body of `POST /api/dashboards/db` saving `dashboard` in the folder, overwriting.

    The dashboard's numeric `id` is dropped: Grafana finds an existing copy by `uid`.
    """
    body = {key: value for key, value in dashboard.items() if key != "id"}
    body["id"] = None
    return {
        "dashboard": body,
        "folderUid": target_folder_uid,
        "overwrite": True,
        "message": PUSH_MESSAGE,
    }


def ensure_folder(api: GrafanaApi, title: str) -> str:
    """The uid of the folder titled `title`, created if missing."""
    uid = folder_uid(title)
    try:
        api.folder.get_folder(uid)
    except GrafanaClientError as error:
        if error.status_code != 404:
            raise
        api.folder.create_folder(title, uid=uid)
    return uid


def push_dashboards(
    grafana_url: str,
    token: str | None,
    folder: str = "churnwatch",
    basic_auth: tuple[str, str] | None = None,
) -> list[str]:
    """Upload every churnwatch dashboard to the Grafana at `grafana_url`; return their uids.

    `token` is a service-account token (sent as a bearer token); without one, `basic_auth` is a
    (user, password) pair. The folder is created if missing; dashboards are overwritten.
    """
    credential: str | tuple[str, str] | None = token or basic_auth
    if credential is None:
        raise ValueError(
            "pushing dashboards needs a Grafana token (GRAFANA_TOKEN) or a user and password"
        )
    api = GrafanaApi.from_url(grafana_url, credential=credential)
    target_folder_uid = ensure_folder(api, folder)
    pushed = []
    for dashboard in load_dashboards():
        api.dashboard.update_dashboard(upload_payload(dashboard, target_folder_uid))
        pushed.append(dashboard["uid"])
    return pushed
