"""A whole DAG run in this process (``dag.test()``): what ``make demo`` and the load
benchmark run on the embedded stack."""

from __future__ import annotations

from typing import Any

from ndmg_cloud.orchestration.taskids import DAG_ID


def run_dag(conf: dict[str, Any], dag_id: str = DAG_ID) -> str:
    """Run ``dag_id`` from the configured DAG folder (``[core] dags_folder``) to its end;
    its run id. ``dag.test()`` runs no triggerer of its own to start tasks in: the scan
    tasks take the worker route (``route.py``)."""
    import os

    from ndmg_cloud.orchestration.route import ROUTE_ENV, WORKER

    os.environ[ROUTE_ENV] = WORKER
    from airflow.configuration import conf as airflow_conf
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=airflow_conf.get("core", "dags_folder")).dags[dag_id]
    return str(dag.test(run_conf=conf).run_id)
