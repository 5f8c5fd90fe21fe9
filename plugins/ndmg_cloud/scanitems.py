"""The class path of ``ScanItems`` before ndmg-cloud's modules moved into packages.

A ``release_scans`` XCom of a run started before the move names
``ndmg_cloud.scanitems.ScanItems``; Airflow's serde imports that path to read it, so a run in
flight across the upgrade still finishes (``tests/test_packages.py``). Nothing imports this
module: the class lives in ``ndmg_cloud.orchestration.scanitems``.
"""

from ndmg_cloud.orchestration.scanitems import LegacyScanItems as ScanItems

__all__ = ["ScanItems"]
