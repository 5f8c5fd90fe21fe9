"""Where a scan's SubmitJob is made, and what the DAG carries to get there.

Two routes, one setting (``NDMG_SUBMIT_ROUTE``, read when the DAG file is parsed):

- ``triggerer`` (the default): the scheduler defers every scan task straight to the
  triggerer (Airflow's ``start_from_trigger``); the scan's trigger
  (``ndmg_cloud.orchestration.submit_trigger``) checks its sealed item, submits the job under
  the triggerer's Batch API budget and waits for it. A scan costs no worker launch unless it
  fails (a failure resumes on a worker, where retries and the reason apply).
- ``worker``: each scan task starts on a worker, which submits the job and defers the wait
  (``dag.test()`` runs only this one, having no triggerer: ``dagtest.run_dag`` sets it).

Every live Airflow of the tests takes the default; the live crash tier (tests/test_crash.py)
runs its scenarios on both routes. Known difference: a scan task its trigger ends never runs
on a worker, so Airflow does not render its label (the scan id): the Grid shows its map index; its ``batch_job`` XCom and the report
name the scan.

``own_params_only``: Airflow copies the DAG's params into every task, and the serialized DAG
holds every copy; the triggerer reads the serialized DAG once per scan it starts. This DAG's
form is 12.5 KB of schemas, so a task keeps only params of its own (as Airflow's
``HITLOperator`` does). A task's context still holds the DAG's params (Airflow merges the
DAG's into the task's when it runs), so no task sees anything different.
"""

from __future__ import annotations

import os
from typing import Any

ROUTE_ENV = "NDMG_SUBMIT_ROUTE"
TRIGGERER, WORKER = "triggerer", "worker"
ROUTES = (TRIGGERER, WORKER)
DEFAULT_ROUTE = TRIGGERER


def submit_route() -> str:
    """The route of this deployment's scan tasks (``NDMG_SUBMIT_ROUTE``)."""
    route = os.environ.get(ROUTE_ENV, DEFAULT_ROUTE).strip().lower() or DEFAULT_ROUTE
    if route not in ROUTES:
        raise ValueError(
            f"{ROUTE_ENV}={os.environ[ROUTE_ENV]!r} is not a submit route: set it to {TRIGGERER!r} (SubmitJob in the "
            f"triggerer, no worker launch per scan) or {WORKER!r} (each scan task starts on a worker)"
        )
    return route


def own_params_only(dag: Any) -> Any:
    """``dag``, each of whose tasks keeps only its own params (see the module docstring)."""
    from airflow.sdk.definitions.param import ParamsDict

    for task in dag.task_dict.values():  # mapped or not, a task's params are its attribute
        params = task.params if isinstance(task.params, ParamsDict) else ParamsDict(task.params)
        task.params = ParamsDict.filter_params_by_source(params, source="task")
    return dag
