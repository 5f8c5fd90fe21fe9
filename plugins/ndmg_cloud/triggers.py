"""The class path of ``ScanJobTrigger`` before ndmg-cloud's modules moved into packages.

Airflow's trigger table holds ``ndmg_cloud.triggers.ScanJobTrigger`` for every scan that was
waiting in a triggerer when the code was upgraded; the triggerer imports that path to resume
it (``tests/test_packages.py``). Nothing imports this module: the class lives in
``ndmg_cloud.orchestration.triggers``.
"""

from ndmg_cloud.orchestration.triggers import ScanJobTrigger

__all__ = ["ScanJobTrigger"]
