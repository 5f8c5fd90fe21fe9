"""What a scan is and where everything lives: BIDS entities and scans, the S3 layout, the
atlases, the pipeline adapters, the job spec and the scan manifest.

Imported by every other package, the scan image's included; imports nothing of theirs.
"""
