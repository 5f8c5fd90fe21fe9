"""`make demo` (the README's first command) runs the whole DAG on the embedded default,
prints only its own lines, and serves the report from Airflow when asked."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import requests

DEMO = str(Path(sys.executable).parent / "ndmg-demo")


def demo_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_"))}


def test_demo_runs_every_scan_prints_only_its_lines_and_serves_the_report(tmp_path):
    demo = subprocess.Popen(
        [DEMO, "--out", str(tmp_path / "out"), "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=demo_env(),
    )
    lines = []
    for line in demo.stdout:
        lines.append(line.rstrip("\n"))
        if "press Enter to stop" in line:
            break
    served = next((line for line in lines if line.startswith("the same report served by Airflow: ")), None)
    assert served, "\n".join(lines) + demo.stderr.read()
    url = served.split(": ", 1)[1]
    password = re.search(r"password (\S+)\)", lines[-1]).group(1)
    base = url.split("/ndmg-cloud/", 1)[0]
    token = requests.post(f"{base}/auth/token", json={"username": "admin", "password": password}, timeout=10).json()
    page = requests.get(url, headers={"Authorization": f"Bearer {token['access_token']}"}, timeout=30)
    demo.stdin.write("\n")
    demo.stdin.flush()
    rest, errors = demo.communicate(timeout=120)
    assert demo.returncode == 0, errors
    assert page.status_code == 200 and "sub-06" in page.text and "<html" in page.text

    # quiet: nothing on stderr, no library warnings among the demo's lines
    assert errors == ""
    assert not [line for line in lines if re.search(r"warning|deprecat|error", line, re.I)]
    table = [line for line in lines if line.startswith("sub-")]
    assert len(table) == 11  # 5 subjects x 2 sessions + 1 session-less
    assert all(" succeeded " in line for line in table)
    assert any(line.startswith("sub-06 ") for line in table)  # the session-less subject
    assert "11 scans: 11 succeeded, 0 failed, 0 missing outputs, 0 invalid" in lines
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["summary"]["succeeded"] == 11

    # the group level: the phantoms' subjects are told apart, and the figures are copied
    said = next(line for line in lines if line.startswith("discriminability "))
    value, p_value = re.match(r"discriminability ([\d.]+), p-value ([\d.e-]+) \(1000 label shuffles", said).groups()
    assert float(value) >= 0.9 and float(p_value) < 0.05, said
    assert "group level of grid3: 11 scans of 6 subjects used, 0 left out" in lines
    group = json.loads((tmp_path / "out" / "group.json").read_text())
    assert group["discriminability"]["value"] == float(value) and group["nodes"] == 27
    assert 'class="discriminability"' in (tmp_path / "out" / "group.html").read_text()
    assert f"group:  {(tmp_path / 'out' / 'group.html').as_uri()}" in lines
    assert "<html" in (tmp_path / "out" / "report.html").read_text()
    assert f"report: {(tmp_path / 'out' / 'report.html').as_uri()}" in lines
    assert (tmp_path / "out" / "airflow.log").stat().st_size > 0  # the chatter went here


def test_the_standalone_demo_notifies_a_queue_and_new_subject_uploads_the_next_subject(s3, tmp_path, monkeypatch, capsys):
    """What `make airflow` sets up for a "new scans" schedule, and `ndmg-demo --new-subject`."""
    import boto3

    from ndmg_cloud.demo import run, stack
    from ndmg_cloud.orchestration.new_scans import created_keys

    s3.create_bucket(Bucket=stack.BUCKET)
    for n in range(1, 7):
        s3.put_object(Bucket=stack.BUCKET, Key=f"{stack.BIDSDIR}/sub-{n:02d}/anat/sub-{n:02d}_T1w.nii.gz", Body=b"x")
    queue = stack.watch_dataset()

    assert run.new_subject(pause_seconds=0) == 0
    out = capsys.readouterr().out
    assert f"uploaded sub-07 to s3://{stack.BUCKET}/{stack.BIDSDIR}/ as 5 objects, 0 s apart:" in out  # T1w, DWI, bval, bvec, JSON sidecar
    sqs = boto3.client("sqs")
    heard = []
    while messages := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages"):
        for message in messages:
            heard += [key for _, key in created_keys(message["Body"])]
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
    assert sorted(heard) == sorted(line.strip() for line in out.splitlines() if line.startswith(f"  {stack.BIDSDIR}/"))
    assert all(key.startswith(f"{stack.BIDSDIR}/sub-07/") for key in heard)

    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert run.main(["--new-subject"]) == 2
    assert "export what it printed" in capsys.readouterr().err
