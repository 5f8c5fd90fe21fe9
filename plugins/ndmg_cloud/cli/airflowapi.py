"""The Airflow REST API v2 as ``ndmg_cloud`` uses it: token auth, the few calls the CLI
makes, every HTTP failure turned into one line for a user (``CliError``), and why a failed
run failed (the failing tasks' exceptions, read from their logs)."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ndmg_cloud.orchestration.taskids import DAG_ID, TASK_ORDERS


class CliError(RuntimeError):
    """What went wrong, for the user, in one line."""


class NotFound(CliError):
    """Airflow answered 404."""


class Unreachable(CliError):
    """Nothing answers at the Airflow URL."""


class Conflict(CliError):
    """Airflow answered 409: what was to be created exists."""


class NoReport(CliError):
    """The run has no report (verify_and_report has not written one)."""


class Airflow:
    """The few Airflow REST API v2 calls the CLI makes."""

    # A busy metadata DB (SQLite under `airflow standalone`: "database is locked") answers
    # 500 "Database error"; every call is asked again (a trigger names its run id, so a
    # repeat can never start a second run: Airflow answers 409 for a run id it has). A read
    # (GET) that gets no answer in time is asked again too: it changes nothing.
    BUSY_RETRIES, BUSY_WAIT_SECONDS = 3, 2.0
    TIMEOUT_SECONDS = 30

    def __init__(self, url: str, username: str | None, password: str | None):
        self.url = url.rstrip("/")
        self.username, self.password = username, password
        self._token: str | None = None

    def _request(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        import requests

        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        for attempt in range(self.BUSY_RETRIES + 1):
            try:
                response = requests.request(method, self.url + path, json=body, headers=headers, timeout=self.TIMEOUT_SECONDS)
            except (requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema, requests.exceptions.InvalidURL):
                raise CliError(
                    f"the Airflow URL {self.url!r} is not a URL: give http://host:port "
                    "(--airflow-url or NDMG_AIRFLOW_URL, e.g. http://localhost:8080)"
                ) from None
            except requests.ConnectionError:
                raise Unreachable(
                    f"cannot reach Airflow at {self.url}: is it running? (make airflow starts one; set --airflow-url or NDMG_AIRFLOW_URL)"
                ) from None
            except requests.Timeout:
                if method == "GET" and attempt < self.BUSY_RETRIES:
                    continue
                raise CliError(
                    f"Airflow at {self.url} did not answer {method} {path} within {self.TIMEOUT_SECONDS} s "
                    f"({attempt + 1} time(s) asked): it may be busy; try again"
                ) from None
            if response.status_code != 500 or "Database error" not in response.text:
                break
            if attempt == self.BUSY_RETRIES:
                break
            time.sleep(self.BUSY_WAIT_SECONDS * (attempt + 1))
        if response.status_code in (401, 403):
            raise CliError(
                f"Airflow at {self.url} refused the credentials of user {self.username!r}: check --username and NDMG_AIRFLOW_PASSWORD"
            )
        if response.status_code in (400, 422):
            raise CliError(f"Airflow refused the request: {_detail(response)}")
        if response.status_code == 404:
            raise NotFound(f"not found on Airflow at {self.url}: {path} ({_detail(response)})")
        if response.status_code == 409:
            raise Conflict(f"Airflow at {self.url} already has what {method} {path} would create: {_detail(response)}")
        if response.status_code >= 300:
            raise CliError(f"Airflow answered {response.status_code} to {method} {path}: {_detail(response)}: its api-server log says more")
        try:
            return response.json() if response.content else None
        except ValueError:
            raise CliError(
                f"{self.url} answered {method} {path} with something that is not JSON: "
                "is --airflow-url (NDMG_AIRFLOW_URL) the Airflow api-server?"
            ) from None

    def token(self) -> str:
        if self._token is None:
            if not self.username or not self.password:
                raise CliError(
                    "no Airflow password: export NDMG_AIRFLOW_PASSWORD (the admin password "
                    "`make airflow` printed; with AIRFLOW_HOME set to that Airflow's home it is read from there)"
                )
            answer = self._request("POST", "/auth/token", {"username": self.username, "password": self.password}, auth=False)
            self._token = str(answer["access_token"])
        return self._token

    def trigger(self, conf: dict[str, Any], dag_id: str = DAG_ID) -> str:
        """Start a run of ``dag_id`` with ``conf``; its run id. The run id is chosen here, so
        that a trigger repeated because the DB was busy starts one run, never two."""
        run_id = f"manual__{datetime.now(UTC).isoformat()}"
        try:
            self._request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"dag_run_id": run_id, "logical_date": None, "conf": conf})
        except Conflict:  # a busy answer hid that an earlier attempt of this trigger created it
            if self.run(run_id, dag_id).get("conf") != conf:
                raise
        return run_id

    def run(self, run_id: str, dag_id: str = DAG_ID) -> dict[str, Any]:
        try:
            run: dict[str, Any] = self._request("GET", _run_path(run_id, dag_id))
            return run
        except NotFound:
            raise CliError(
                f"{dag_id} has no run {run_id!r} on Airflow at {self.url}: "
                "`ndmg_cloud status` shows the latest run; the grid lists them all"
            ) from None

    def latest_run(self) -> str:
        runs = self._request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?order_by=-run_after&limit=1")["dag_runs"]
        if not runs:
            raise CliError(f"{DAG_ID} has no runs yet on Airflow at {self.url}: start one with `ndmg_cloud participant`")
        return str(runs[0]["dag_run_id"])

    def task_instances(self, run_id: str, dag_id: str = DAG_ID) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = self._request("GET", f"{_run_path(run_id, dag_id)}/taskInstances?limit=100&offset={offset}")
            out += page["task_instances"]
            offset += 100
            if offset >= (page.get("total_entries") or 0):
                return out

    def xcom(self, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1, dag_id: str = DAG_ID) -> Any:
        entry = self._request("GET", f"{_run_path(run_id, dag_id)}/taskInstances/{task_id}/xcomEntries/{key}?map_index={map_index}")
        return entry["value"]

    def task_log(self, run_id: str, ti: dict[str, Any], dag_id: str = DAG_ID) -> list[Any]:
        """The whole log of a task instance's latest try: structured entries (dicts), or
        plain lines when Airflow could not parse it."""
        path = f"{_run_path(run_id, dag_id)}/taskInstances/{ti['task_id']}/logs/{ti['try_number']}"
        content: list[Any] = self._request("GET", f"{path}?full_content=true&map_index={ti['map_index']}")["content"]
        return content

    def variable(self, key: str) -> str | None:
        """A Variable's value (None when there is none)."""
        try:
            return str(self._request("GET", f"/api/v2/variables/{quote(key, safe='')}")["value"])
        except NotFound:
            return None

    def set_variable(self, key: str, value: str, description: str, exists: bool) -> None:
        body = {"key": key, "value": value, "description": description}
        if exists:
            self._request("PATCH", f"/api/v2/variables/{quote(key, safe='')}", body)
        else:
            self._request("POST", "/api/v2/variables", body)

    def dag(self, dag_id: str) -> dict[str, Any] | None:
        """What Airflow knows of a DAG (None: it has not parsed one of that id)."""
        try:
            found: dict[str, Any] = self._request("GET", f"/api/v2/dags/{quote(dag_id, safe='')}")
            return found
        except NotFound:
            return None

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self._request("PATCH", f"/api/v2/dags/{quote(dag_id, safe='')}", {"is_paused": paused})

    def runs(self, dag_id: str, limit: int = 5) -> list[dict[str, Any]]:
        """The latest runs of a DAG, newest first."""
        found: list[dict[str, Any]] = self._request(
            "GET", f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns?order_by=-run_after&limit={limit}"
        )["dag_runs"]
        return found

    def fail_run(self, run_id: str) -> None:
        self._request("PATCH", _run_path(run_id), {"state": "failed"})


def _run_path(run_id: str, dag_id: str = DAG_ID) -> str:
    return f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}"


def _detail(response: Any) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text
    return detail if isinstance(detail, str) else json.dumps(detail)


def password_from_airflow_home(username: str | None) -> str | None:
    """The password the simple auth manager generated for ``username`` in AIRFLOW_HOME (what
    `airflow standalone`, and so `make airflow`, printed), if there is one."""
    home = os.environ.get("AIRFLOW_HOME")
    path = os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE") or (
        home and os.path.join(home, "simple_auth_manager_passwords.json.generated")
    )
    if not path or not username:
        return None
    try:
        found = json.loads(Path(path).read_text()).get(username)
    except (OSError, ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


def error_of(log: list[Any]) -> str | None:
    """The exception a task failed with, from its log: Airflow logs it as a structured entry
    with ``error_detail`` (the exception first, then its causes); else the last error line."""
    for entry in reversed(log):
        if isinstance(entry, dict) and entry.get("error_detail"):
            detail = entry["error_detail"][0]
            return f"{detail.get('exc_type')}: {detail.get('exc_value')}"
    for entry in reversed(log):
        if isinstance(entry, dict) and entry.get("level") in ("error", "critical"):
            return str(entry.get("event"))
        if isinstance(entry, str) and ("Error" in entry or "Exception" in entry):
            return entry.strip()
    return None


def failures(airflow: Airflow, run_id: str, tis: list[dict[str, Any]], limit: int = 5, dag_id: str = DAG_ID) -> list[str]:
    """ "<task> failed: <why>" for the failed tasks of a run, in the order the DAG runs them."""
    order = {task_id: i for i, task_id in enumerate(TASK_ORDERS[dag_id])}
    failed = sorted(
        (ti for ti in tis if ti["state"] == "failed"),
        key=lambda ti: (order.get(ti["task_id"], len(order)), ti["map_index"]),
    )
    lines = []
    for ti in failed[:limit]:
        name = ti["task_id"]
        if ti["map_index"] >= 0:
            name += f" [{ti.get('rendered_map_index') or ti['map_index']}]"
        try:
            why = error_of(airflow.task_log(run_id, ti, dag_id))
        except CliError:
            why = None
        if not why:
            suffix = f"/mapped/{ti['map_index']}" if ti["map_index"] >= 0 else ""
            why = f"see its log: {airflow.url}/dags/{dag_id}/runs/{quote(run_id, safe='')}/tasks/{ti['task_id']}{suffix}"
        lines.append(f"{name} failed: {one_line(why)}")
    if len(failed) > limit:
        lines.append(f"... and {len(failed) - limit} more failed tasks")
    return lines


def one_line(text: object) -> str:
    return " ".join(str(text).split())
