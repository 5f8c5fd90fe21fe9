"""What ndmg-cloud adds to the Airflow api-server (registered by ``ndmg_cloud_plugin``):

- ``GET /ndmg-cloud/dags/<dag id>/runs/<run id>/report``: the run's report.html, read from S3
  with the deployment's AWS connection, for anyone Airflow lets read the DAG's runs. It is
  what the "Run report" extra link and ``ndmg_cloud participant --follow`` point at, so the
  report opens the same way on the embedded stack and on AWS.
- A middleware that refuses, at trigger time, conf keys that are not params of an ndmg DAG
  (Airflow itself would accept a typo such as ``parcelation`` and ignore it), and pipeline
  options the run would refuse once started (an atlas the pipeline cannot use, say).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse

from ndmg_cloud.core.layout import REPORT_HTML
from ndmg_cloud.orchestration.infra_access import deploy_refusal
from ndmg_cloud.orchestration.links import REPORT_ROUTE_PREFIX
from ndmg_cloud.orchestration.taskids import DAG_ID, INFRA_DAG_ID
from ndmg_cloud.participant.params import ParamError, check_conf_keys, check_options, resolve

log = logging.getLogger(__name__)

# report.html comes from the run's data (dataset names, reasons): serve it sandboxed, so no
# script in it could act as the signed-in user, with its inline styles and images only.
REPORT_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox allow-popups allow-popups-to-escape-sandbox"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
TRIGGER_PATH = re.compile(rf"(.*/)?api/v2/dags/{DAG_ID}/dagRuns/?")
INFRA_TRIGGER_PATH = re.compile(rf"(.*/)?api/v2/dags/{INFRA_DAG_ID}/dagRuns/?")


def _can_read_runs() -> Any:
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag

    return Depends(requires_access_dag(method="GET", access_entity=DagAccessEntity.RUN))


def stored_xcom(dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int | None = None) -> Any:
    """An XCom value as the metadata DB holds it, read in an Airflow server process (the
    api-server: this route, the cancel listener); None if there is none."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(XComModel.get_many(run_id=run_id, dag_ids=dag_id, task_ids=task_id, map_indexes=map_index, key=key)).first()
        return XComModel.deserialize_value(row) if row is not None else None


def report_html_of(dag_id: str, run_id: str) -> str | None:
    """Where run ``run_id``'s report.html is: ``<output>reports/<run id>/report.html`` of the
    run's own params (its trigger's conf, fixed when it was triggered); never an XCom's
    word. None if there is no such run of the participant DAG."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    if dag_id != DAG_ID:
        return None
    with create_session() as session:
        run = session.query(DagRun).filter(DagRun.dag_id == dag_id, DagRun.run_id == run_id).one_or_none()
        conf = dict(run.conf or {}) if run is not None else None
    if conf is None:
        return None
    try:
        config = resolve(conf, run_id)
    except ParamError:
        return None
    return config.outputs.report_uri(run_id, REPORT_HTML)


def read_report_html(uri: str) -> bytes:
    from ndmg_cloud.core.s3 import get_bytes
    from ndmg_cloud.orchestration.clients import s3_client

    return get_bytes(s3_client(), uri)


def create_app() -> FastAPI:
    app = FastAPI(title="ndmg-cloud", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/dags/{dag_id}/runs/{run_id}/report", response_class=HTMLResponse, dependencies=[_can_read_runs()])
    def run_report(dag_id: str, run_id: str) -> HTMLResponse:
        uri = report_html_of(dag_id, run_id)
        if not uri:
            raise HTTPException(404, f"no run {run_id!r} of {DAG_ID}")
        try:
            html = read_report_html(uri)
        except Exception as err:  # the detail (bucket, key, AWS's answer) goes to the log, not to the caller
            log.warning("cannot read the report of run %s at %s: %s", run_id, uri, err)
            raise HTTPException(404, f"run {run_id!r} has no report yet (or it cannot be read: see the api-server log)") from None
        return HTMLResponse(html, headers=REPORT_HEADERS)

    return app


MAX_TRIGGER_BODY = 1024 * 1024  # a trigger's JSON: params are a few kB; nothing larger is read


class RefuseUnknownParams:
    """ASGI middleware: a trigger of the ndmg DAG whose conf has a key that is not a param
    gets HTTP 400 naming the key and the closest param, as a schema violation does.

    It reads a body only for a caller Airflow authenticates (the same token check as its
    routes: bearer header, else the session cookie); anyone else's request goes on to Airflow
    untouched, unread, to be refused there. It reads at most ``MAX_TRIGGER_BODY`` bytes,
    buffered in a list (linear), and answers 413 beyond that."""

    def __init__(self, app: Callable[..., Awaitable[None]]):
        self.app = app

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Callable[..., Awaitable[None]]
    ) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not TRIGGER_PATH.fullmatch(scope["path"]):
            await self.app(scope, receive, send)
            return
        if not await authenticated(scope):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > MAX_TRIGGER_BODY:
            await _too_large(scope, receive, send)
            return
        messages: list[dict[str, Any]] = []
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_TRIGGER_BODY:
                await _too_large(scope, receive, send)
                return
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        problem = trigger_conf_problem(b"".join(chunks))
        if problem:
            await JSONResponse({"detail": problem}, status_code=400)(scope, receive, send)
            return
        pending = iter(messages)

        async def replay() -> dict[str, Any]:
            return next(pending, None) or await receive()

        await self.app(scope, replay, send)


async def authenticated(scope: dict[str, Any]) -> bool:
    """Whether the request carries a token Airflow's auth manager accepts."""
    return await authenticated_user(scope) is not None


async def authenticated_user(scope: dict[str, Any]) -> Any:
    """The user of the request's token (bearer header, else the session cookie, as Airflow's
    routes read it), or None if there is none Airflow's auth manager accepts."""
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
    from airflow.api_fastapi.core_api.security import resolve_user_from_token
    from fastapi import Request

    request = Request(scope)
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    token = credentials if scheme.lower() == "bearer" and credentials else request.cookies.get(COOKIE_NAME_JWT_TOKEN)
    try:
        return await resolve_user_from_token(token)
    except Exception:
        return None


async def _too_large(scope: dict[str, Any], receive: Any, send: Any) -> None:
    detail = f"a trigger's body may be at most {MAX_TRIGGER_BODY // 1024} KiB: send the params only"
    await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


class AdminOnlyTriggers:
    """ASGI middleware: a trigger of ``ndmg_infra`` by anyone but a deployment admin
    (``infra_access``) gets HTTP 403 saying so; every other request goes on untouched."""

    def __init__(self, app: Callable[..., Awaitable[None]]):
        self.app = app

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Callable[..., Awaitable[None]]
    ) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not INFRA_TRIGGER_PATH.fullmatch(scope["path"]):
            await self.app(scope, receive, send)
            return
        user = await authenticated_user(scope)
        if user is None:  # Airflow refuses it (401/403) without reading it
            await self.app(scope, receive, send)
            return
        refusal = deploy_refusal(user.get_name())
        if refusal:
            await JSONResponse({"detail": refusal}, status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def trigger_conf_problem(body: bytes) -> str | None:
    try:
        conf = json.loads(body or b"{}").get("conf") or {}
    except (ValueError, AttributeError):
        return None  # not ours to judge: Airflow answers malformed bodies itself
    if not isinstance(conf, dict):
        return None
    try:
        check_conf_keys(conf)
        check_options(conf)
    except ParamError as err:
        return str(err)
    return None


REPORT_APP = {"app": create_app(), "url_prefix": REPORT_ROUTE_PREFIX, "name": "ndmg-cloud run reports"}
UNKNOWN_PARAMS_MIDDLEWARE = {"middleware": RefuseUnknownParams, "name": "ndmg-cloud unknown params"}
ADMIN_ONLY_MIDDLEWARE = {"middleware": AdminOnlyTriggers, "name": "ndmg-cloud ndmg_infra for admins"}
