"""The run report: report.json, report.csv and report.html (with its figures) of one run.

Imports ``participant`` and ``core``.
"""
