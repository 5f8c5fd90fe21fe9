"""Airflow's side: the task callables of each DAG (participant_tasks, group_tasks,
infra_tasks), the Batch operators, the trigger and its shared poller,
the UI links, the api-server plugin (report route, trigger-conf check), the cancel
listener, the AWS clients from Airflow connections, and the task ids.

The only package that imports Airflow or FastAPI; it may import every package below it.
"""
