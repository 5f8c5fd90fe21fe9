"""Benchmarks cannot rot: each runs here in its smoke mode (a tiny N) and must print its
figures. The full runs are `make bench`, `make bench-load` and `make bench-scale`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import postgres_bin, require_tool

ROOT = Path(__file__).resolve().parents[1]


def bench(name: str, *args: str, timeout: int = 600) -> str:
    """Run a benchmark as a person would from a shell: without the test session's Airflow,
    AWS and ndmg settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_", "NDMG_"))}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_the_discovery_benchmark_prints_its_figures():
    out = bench("discovery.py", "--smoke")
    assert re.search(r"S3 requests made:\s+1 \(ListObjectsV2\)", out)
    assert re.search(r"discover_scans on the key list in memory, no S3: [\d,]+ keys, 100 scans", out)
    assert re.search(r"parse_entities: .* -> [\d,]+ keys/s", out)
    assert "0 mismatches" in out


def test_the_dag_parse_benchmark_prints_its_figures():
    out = bench("dag_parse.py", "--smoke")
    assert re.search(r"ndmg_participant.py: median \d+\.\d+ s", out)
    assert re.search(r"difference:\s+-?\d+\.\d+ s", out)
    assert "botocore create_client calls: 0" in out


@pytest.mark.slow
def test_the_load_benchmark_prints_its_figures():
    out = bench("load.py", "--scans", "4")
    assert "report rows: 4 (discovered 4, succeeded 4" in out
    assert re.search(r"Batch API calls: \d+ \(\d+\.\d+ per scan\)", out)


@pytest.mark.slow
def test_the_scale_benchmark_prints_its_figures():
    """A real Airflow on Postgres, six scans on two triggerers (as N = 10,000 runs): every
    figure of make bench-scale is printed."""
    require_tool("the PostgreSQL server", postgres_bin() is not None, "postgresql")
    out = bench("scale.py", "--smoke", "--triggerers", "2", timeout=900)
    assert "== N = 6 scans: run success, 6 jobs submitted ==" in out
    assert re.search(r"DescribeJobs per poll interval:\s+\d+\.\d+ while all 6 RUNNING", out)
    assert re.search(r"XCom bytes pulled per run_scan TI:\s+min [\d,]+ / median [\d,]+ / max [\d,]+", out)
    assert re.search(r"task launches per scan:\s+0\.00  -> bar met: <= 0", out)  # the triggerer route: no worker launch
    assert re.search(r"submit route: triggerer", out)
    assert re.search(r"first-to-last SubmitJob:\s+\d+\.\d+ s", out)
    assert re.search(r"trigger to all submitted:\s+\d+\.\d+ s", out)
    assert re.search(r"Batch API calls, busiest second:\s+\d+ \(.*submitjob \d+.*\)  -> within the budget of 50/s", out)
    assert re.search(r"peak memory \(PSS, with children\):\s+api-server \d+ MB.*scheduler \d+ MB.*triggerer \d+ MB", out)
    assert re.search(r"Postgres database size:\s+\d+\.\d+ MB", out)
    assert re.search(r"peak memory .*triggerer \d+ MB, triggerer-2 \d+ MB", out)
    assert re.search(r"longest heartbeat lag:\s+.*scheduler \d+\.\d s.*triggerer \d+\.\d s.*-> scheduler bar (met|NOT met): <= 10 s", out)
    assert "triggerers:                         2 (the Batch API budget split evenly)" in out
    assert re.search(
        r"plain-script baselines, same endpoint and process: the seed's list \+ spec \+ SubmitJob \(no wait\) "
        r"\d+\.\d+ s/scan; and waiting .* \d+\.\d+ s/scan; this DAG \d+x the waiting script",
        out,
    )
