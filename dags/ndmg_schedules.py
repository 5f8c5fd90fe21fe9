"""The schedules: one DAG per record of the Variable ``ndmg_schedules``, ``ndmg_schedule_<name>``.

Each run takes the dataset's output location (waiting while another run holds it), then
runs ndmg_participant with the record's params, which skips what is already done.
Edit the records with ``ndmg_cloud schedule add|list|pause|resume|remove``; a bad record
makes no DAG and shows as the import error of dags/ndmg_schedule_errors.py.
Wiring only (the airflow dag-processor parses this file): what a record is, in ndmg_cloud.participant.schedules; the DAG, in
ndmg_cloud.orchestration.schedule_dags.
"""

from __future__ import annotations

import logging

from ndmg_cloud.orchestration.schedule_dags import read_records, schedule_dag

for _schedule in read_records().schedules:
    try:
        globals()[_schedule.dag_id] = schedule_dag(_schedule)
    except Exception:  # a bug in making one schedule's DAG must not take the others down
        logging.getLogger(__name__).exception("schedule %r made no DAG", _schedule.name)
