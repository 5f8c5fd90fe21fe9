"""What the scan image runs: the scan runner (``ndmg-scan``), its self-check, the image
contract (``ndmg-image-contract``), the lite pipeline (``ndmg-lite``), the warm fork server
and the scrubbing of what a pipeline may see and print.

Imports only ``core``: the scan image installs ``core`` and ``scan``, nothing of Airflow.
"""
