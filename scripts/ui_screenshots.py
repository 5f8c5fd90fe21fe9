"""Screenshots of the Airflow UI and the report, in a real (headless) Chromium.

Starts the embedded stack (local AWS endpoint, synthetic dataset, airflow standalone on a
free port, everyone admin), triggers ndmg_participant (backend=local, pipeline=lite),
waits for it and for the ndmg_group run its reports Asset triggers, then takes: the
trigger form, the grid with the mapped scans, report.html and group.html.

    .venv/bin/python scripts/ui_screenshots.py [--out ui-screenshots] [--chromium /usr/bin/chromium]

Needs Chromium (Debian: apt-get install chromium). Exits non-zero if a page lacks what it
should show.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))

from ndmg_cloud.demo import stack as demo  # noqa: E402

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def wait(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(1)
    raise SystemExit(f"ui_screenshots: timed out waiting for {what}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("ui-screenshots"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    import requests
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="ndmg-ui-"))
    moto_port, port = demo.free_port(), demo.free_port()
    demo.configure_environment(work / "airflow", f"http://127.0.0.1:{moto_port}")
    url = f"http://127.0.0.1:{port}"
    os.environ.update(
        {
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        }
    )
    server = demo.start_endpoint(moto_port)
    airflow = None
    try:
        demo.airflow("db", "migrate")
        demo.airflow("pools", "set", "ndmg_local", "2", "local backend")
        demo.upload_dataset(work)  # 11 phantom scans
        log = open(work / "standalone.log", "w")
        airflow = demo.start_standalone(stdout=log, stderr=subprocess.STDOUT)
        session = requests.Session()
        wait(lambda: session.get(f"{url}/api/v2/dags/ndmg_participant", timeout=5).status_code == 200, 240, "the DAG in the API")

        conf = demo.RUN_CONF
        run = session.post(f"{url}/api/v2/dags/ndmg_participant/dagRuns", json={"logical_date": None, "conf": conf}, timeout=10).json()
        run_id = run["dag_run_id"]
        wait(
            lambda: session.get(f"{url}/api/v2/dags/ndmg_participant/dagRuns/{run_id}", timeout=5).json()["state"] in ("success", "failed"),
            600,
            "the run",
        )

        def group_run() -> dict | None:
            runs = session.get(f"{url}/api/v2/dags/ndmg_group/dagRuns", timeout=5).json()["dag_runs"]
            done = [r for r in runs if r["run_type"] == "asset_triggered" and r["state"] in ("success", "failed")]
            return done[0] if done else None

        wait(group_run, 300, "the ndmg_group run of the reports Asset")
        import boto3

        from ndmg_cloud.core.layout import GROUP_HTML, split_uri
        from ndmg_cloud.participant.params import resolve

        group_html = work / GROUP_HTML
        bucket, key = split_uri(resolve(conf, run_id).outputs.group_uri("grid3", GROUP_HTML))
        boto3.client("s3").download_file(bucket, key, str(group_html))

        args.out.mkdir(parents=True, exist_ok=True)
        problems = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})

            def shoot(path: str, png: str, expected: tuple[str, ...], click: str | None = None) -> None:
                page.goto(f"{url}{path}", wait_until="networkidle")
                page.wait_for_timeout(2000)
                if click:
                    page.get_by_role("button", name=click).first.click()
                    page.wait_for_timeout(2000)
                page.screenshot(path=str(args.out / png), full_page=True)
                text = page.inner_text("body")
                problems.extend(f"{png} lacks {e!r}" for e in expected if e not in text)

            run_page = f"/dags/ndmg_participant/runs/{run_id}"
            shoot(run_page, "grid.png", ("run_scan_local", "verify_and_report", "discover"))
            shoot(f"{run_page}/tasks/run_scan_local/mapped", "mapped-scans.png", ("sub-01_ses-1", "sub-05"))
            shoot("/dags/ndmg_participant", "trigger-form.png", ("Dataset", "Pipeline", "AWS Batch", "Run control"), click="Trigger")
            page.get_by_role("dialog").get_by_role("button", name="Dataset").click()
            page.wait_for_timeout(1000)
            page.screenshot(path=str(args.out / "trigger-form-dataset.png"), full_page=True)

            from ndmg_cloud.orchestration.links import airflow_report_url

            page.goto(airflow_report_url(url, run_id), wait_until="load")  # served by the api-server plugin
            page.screenshot(path=str(args.out / "report.png"), full_page=True)
            if "sub-01_ses-1" not in page.inner_text("body"):
                problems.append("report.html lacks the scans")
            page.goto(group_html.as_uri(), wait_until="load")
            page.screenshot(path=str(args.out / "group.png"), full_page=True)
            if "discriminability" not in page.inner_text("body") or group_run()["state"] != "success":
                problems.append("group.html lacks discriminability, or the ndmg_group run failed")
            browser.close()

        for name in ("trigger-form.png", "trigger-form-dataset.png", "grid.png", "mapped-scans.png", "report.png", "group.png"):
            print(f"screenshot: {(args.out / name).resolve()}")
        if problems:
            print("ui_screenshots: " + "; ".join(problems), file=sys.stderr)
            return 1
        return 0
    finally:
        if airflow is not None:
            demo.stop_process_group(airflow)
        server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
