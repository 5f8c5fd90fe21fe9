"""One run of ``ndmg_participant`` without Airflow: the params and their resolution, the
discovery, the job specs, the run plan, the canary, the lease, the cost, submission pacing,
the local backend, and the verification and reconciliation of what the jobs left.

Imports ``core`` and ``scan``.
"""
