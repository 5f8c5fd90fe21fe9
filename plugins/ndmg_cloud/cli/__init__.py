"""The ``ndmg_cloud`` command (``participant | status | kill | report | group | estimate |
setup | teardown | atlases``) and its client of Airflow's REST API.
"""
