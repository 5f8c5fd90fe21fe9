"""The schedule records that are not schedules, as this file's import error (Airflow DAG
import errors list it; the airflow dag-processor parses this file), each naming its record and field. This file makes no DAG, so its
error stops no other schedule: dags/ndmg_schedules.py makes a DAG of every good record.
"""

from __future__ import annotations

from ndmg_cloud.orchestration.schedule_dags import read_records

_problems = read_records().messages()
if _problems:
    raise ValueError(
        f"{len(_problems)} schedule record(s) make no DAG:\n" + "\n".join(f"- {p}" for p in _problems) + "\n"
        "Fix each with `ndmg_cloud schedule add NAME --replace ...`, or `ndmg_cloud schedule remove NAME`."
    )
