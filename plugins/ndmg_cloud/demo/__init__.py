"""The embedded default: a local AWS endpoint, Airflow on SQLite, a synthetic BIDS dataset of
DWI phantoms (``ndmg-synth``), and the ``make demo`` / ``make airflow`` flows (``ndmg-demo``).
"""
