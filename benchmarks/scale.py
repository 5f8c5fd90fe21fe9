"""Scale benchmark: ndmg_participant under a real Airflow on Postgres.

For each N: Postgres (Debian's package, a fresh cluster in a temporary directory on
127.0.0.1, the database a deployment uses), Airflow's api-server, scheduler (LocalExecutor),
dag-processor and triggerer as processes, and a local AWS endpoint (moto, in this process)
that holds every Batch job RUNNING until all N wait in the triggerer, then lets them end
with the outputs an m2g container would leave. Prints per N:

  * wall time from trigger to the run's end, and seconds of orchestration per scan (wall
    time less the time the jobs were held RUNNING, over N);
  * DescribeJobs calls per poll interval while all N jobs are RUNNING (counted at the
    endpoint); bar: <= ceil(N / 100) + 1;
  * XCom bytes each run_scan task instance pulled (counted on the Execution API, through a
    proxy in this process); bar: constant in N;
  * task launches per scan (the task logs' "Worker startup parse complete" lines); bar: <= 1.1;
  * peak memory (PSS) of each Airflow process, children included; the Postgres database size.

Run: make bench-scale (N = 100 and 1,000), or
     .venv/bin/python benchmarks/scale.py --scans 100 1000 [--poll 5]
     --smoke: N = 6, the figures only (make test-live runs it so that it cannot rot).
Only 127.0.0.1 is used; AWS credentials are fake. Postgres runs as the 'postgres' user when
this runs as root (initdb refuses root).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import load  # noqa: E402  (the dataset, the Batch setup, the jobs' outputs)

from ndmg_cloud.demo import stack as demo  # noqa: E402

PARTS = ("api-server", "scheduler", "dag-processor", "triggerer")
PASSWORD = "bench-scale"
# the newest of Debian's PostgreSQL servers (apt-get install postgresql)
PG_BIN = max(
    (p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")),
    key=lambda p: int(p.parent.name),
    default=Path("/usr/lib/postgresql/15/bin"),
)
PARALLELISM = 4 * (os.cpu_count() or 2)


# ---------------------------------------------------------------- Postgres
class Postgres:
    """A throwaway cluster on 127.0.0.1: initdb, pg_ctl start, one database 'airflow'."""

    def __init__(self, workdir: Path):
        self.dir = workdir / "pg"
        self.port = demo.free_port()
        self.as_root = os.geteuid() == 0

    def _run(self, *args: str) -> str:
        command = [*args]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout

    def start(self) -> str:
        self.dir.mkdir(parents=True)
        if self.as_root:  # the cluster belongs to 'postgres', who must reach it
            shutil.chown(self.dir, "postgres", "postgres")
            for folder in (self.dir.parent, self.dir.parent.parent):
                os.chmod(folder, 0o755)
        data = self.dir / "data"
        self._run(str(PG_BIN / "initdb"), "-D", str(data), "-U", "airflow", "-A", "trust", "-E", "UTF8")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.dir} -c max_connections=300 -c fsync=off"
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(self.dir / "log"), "-w", "start")
        self._run(str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "airflow", "airflow")
        return f"postgresql+psycopg2://airflow@127.0.0.1:{self.port}/airflow"

    def query(self, sql: str) -> str:
        return self._run(
            str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "airflow", "-d", "airflow", "-Atc", sql
        ).strip()

    def stop(self) -> None:
        try:
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop")
        except subprocess.CalledProcessError:
            pass


# ---------------------------------------------------------------- counting
class ExecutionApiProxy:
    """Forwards the workers' Execution API calls to the api-server and counts the bytes of
    XCom each task instance (the JWT's subject) was sent."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.xcom_bytes: dict[str, int] = defaultdict(int)
        self.lock = threading.Lock()
        self.errors = 0  # requests the api-server did not answer

    def start(self) -> int:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=120)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                except OSError as err:  # the api-server is down: say so to the worker, quietly
                    proxy.errors += 1
                    self.send_error(502, f"api-server unreachable: {err}")
                    return
                if "/xcoms/" in self.path and self.command == "GET":
                    with proxy.lock:
                        proxy.xcom_bytes[_subject(self.headers.get("Authorization", ""))] += len(data)
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.server.server_address[1]


def _subject(authorization: str) -> str:
    """The task instance id a worker's token is for (the JWT's 'sub'; not verified here)."""
    try:
        payload = authorization.split()[-1].split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"]
    except (IndexError, ValueError, KeyError):
        return "?"


class Batch:
    """The endpoint's Batch: jobs held RUNNING until released; DescribeJobs calls timed."""

    def __init__(self):
        from moto.batch.models import JobStatus
        from moto.batch.responses import BatchResponse
        from moto.batch_simple import models

        load.jobs_write_their_outputs()  # what a finished job leaves on S3
        finish = models.BatchSimpleBackend._mark_job_as_finished
        self.held: list = []
        self.holding = True
        self.submitted = 0
        self.describe_calls: list[tuple[float, int]] = []
        self.calls: list[tuple[float, str]] = []  # every Batch API call, as it arrives at the endpoint
        lock = threading.Lock()
        batch = self

        def hold(backend, include_start_attempt, job):
            with lock:
                batch.submitted += 1
                if batch.holding:
                    backend.backend._jobs[job.job_id] = job
                    job.status = JobStatus.RUNNING
                    batch.held.append(lambda: finish(backend, include_start_attempt, job))
                    return None
            return finish(backend, include_start_attempt, job)

        real_describe = BatchResponse.describejobs

        def describe(response):
            batch.describe_calls.append((time.monotonic(), len(response._get_param("jobs"))))
            return real_describe(response)

        models.BatchSimpleBackend._mark_job_as_finished = hold
        BatchResponse.describejobs = describe
        for operation in ("submitjob", "describejobs", "listjobs", "terminatejob"):
            setattr(BatchResponse, operation, self._counted(operation, getattr(BatchResponse, operation)))

    def _counted(self, operation: str, real):
        def counted(response):
            self.calls.append((time.monotonic(), operation))
            return real(response)

        return counted

    def submit_times(self) -> list[float]:
        return sorted(t for t, operation in self.calls if operation == "submitjob")

    def release(self) -> None:
        self.holding = False
        held, self.held = self.held, []
        for end in held:
            end()


def _pss(process) -> int:
    try:
        return process.memory_full_info().pss
    except (AttributeError, OSError):
        return process.memory_info().rss


class Memory:
    """Peak memory (PSS) of each Airflow component's process tree, sampled twice a second."""

    def __init__(self, processes: dict[str, subprocess.Popen]):
        import psutil

        self.psutil, self.processes = psutil, processes
        self.peak: dict[str, float] = defaultdict(float)
        self.stopped = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self.stopped.wait(0.5):
            for name, process in self.processes.items():
                try:
                    root = self.psutil.Process(process.pid)
                    # PSS: shared pages divided among the processes that share them (the
                    # executor's forked workers share most of the scheduler's)
                    rss = sum(_pss(p) for p in [root, *root.children(recursive=True)])
                except self.psutil.Error:
                    continue
                self.peak[name] = max(self.peak[name], rss / 2**20)


DEFERRED_SCANS = "select count(*) from task_instance where task_id = 'run_scan' and state = 'deferred'"


class Heartbeats:
    """The longest time each kind of Airflow job (scheduler, triggerer, ...) went without a
    heartbeat in the database, sampled every second while the run goes on."""

    def __init__(self, postgres: Postgres):
        self.postgres = postgres
        self.worst: dict[str, float] = defaultdict(float)
        self.stopped = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        sql = "select job_type, extract(epoch from now() - latest_heartbeat) from job where state = 'running'"
        while not self.stopped.wait(1.0):
            try:
                rows = self.postgres.query(sql).splitlines()
            except subprocess.CalledProcessError:
                continue
            for row in rows:
                kind, _, lag = row.partition("|")
                if lag:
                    self.worst[kind] = max(self.worst[kind], float(lag))


# ---------------------------------------------------------------- plain-script baselines
def plain_script(batch_stub: Batch, poll: int, tag: str, wait: bool) -> dict:
    """What a lab's hand-written script does against the same endpoint, with boto3 only:
    list the dataset, put one JSON per scan, SubmitJob one by one; the seed's ndmg_cloud
    stopped there (``wait=False``). With ``wait``, it also polls DescribeJobs with 100 ids
    a call every ``poll`` seconds (the jobs held RUNNING for as long as in the Airflow run)
    until all end, then checks each scan's manifest and graph with one listing: the least
    a script can do to say which scans succeeded. Returns its wall time and hold."""
    import boto3

    s3, batch = boto3.client("s3"), boto3.client("batch")
    batch_stub.holding = wait
    started = time.monotonic()
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=load.BUCKET, Prefix=load.PREFIX)
    dwis = [o["Key"] for page in pages for o in page.get("Contents", []) if o["Key"].endswith("_dwi.nii.gz")]
    jobs: dict[str, str] = {}
    out = f"{load.PREFIX}derivatives/{tag}/"
    for dwi in dwis:
        sub = dwi.rsplit("/", 1)[-1].split("_")[0]
        spec_key = f"{out}jobs/{sub}.json"
        spec = {
            "scan": {"scan_id": sub},
            "run_id": tag,
            "output_prefix": f"s3://{load.BUCKET}/{out}{sub}/",
            "expected_outputs": [f"connectomes/{sub}_connectome.csv"],
            "manifest": f"s3://{load.BUCKET}/{out}{sub}/manifest.json",
            "pipeline": {"name": "m2g"},
        }
        s3.put_object(Bucket=load.BUCKET, Key=spec_key, Body=json.dumps(spec).encode())
        command = ["ndmg-scan", "--spec", f"s3://{load.BUCKET}/{spec_key}"]
        jobs[
            batch.submit_job(jobName=f"{tag}-{sub}", jobQueue="ndmg-queue", jobDefinition="ndmg", containerOverrides={"command": command})[
                "jobId"
            ]
        ] = sub
    held = 0.0
    if wait:
        held_from = time.monotonic()
        time.sleep(poll * 4.5)  # as long as the Airflow run holds its jobs
        batch_stub.release()
        held = time.monotonic() - held_from
        waiting = set(jobs)
        while waiting:
            ids = sorted(waiting)
            for i in range(0, len(ids), 100):
                for job in batch.describe_jobs(jobs=ids[i : i + 100])["jobs"]:
                    if job["status"] in ("SUCCEEDED", "FAILED"):
                        waiting.discard(job["jobId"])
            if waiting:
                time.sleep(poll)
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=load.BUCKET, Prefix=out)
        present = {o["Key"] for page in pages for o in page.get("Contents", [])}
        done = sum(
            f"{out}{sub}/manifest.json" in present and f"{out}{sub}/connectomes/{sub}_connectome.csv" in present for sub in jobs.values()
        )
        if done != len(dwis):
            raise RuntimeError(f"plain script: {done} of {len(dwis)} scans have their outputs")
    wall = time.monotonic() - started
    return {"wall": wall, "per_scan": (wall - held) / len(dwis)}


# ---------------------------------------------------------------- one N
def run_one(scans: int, poll: int, workdir: Path, triggerers: int = 1) -> dict:
    from ndmg_cloud.cli.airflowapi import Airflow

    endpoint_port = demo.free_port()
    endpoint = f"http://127.0.0.1:{endpoint_port}"
    home = workdir / f"airflow-{scans}"
    home.mkdir()
    postgres = Postgres(workdir / f"db-{scans}")
    processes: dict[str, subprocess.Popen] = {}
    server = demo.start_endpoint(endpoint_port)
    try:
        database = postgres.start()
        demo.configure_environment(home, endpoint)
        load.make_batch_setup(endpoint)
        load.make_dataset(scans)
        batch = Batch()
        baselines = {
            "seed": plain_script(batch, poll, "seed", wait=False),  # list, spec, submit: the old ndmg_cloud
            "plain": plain_script(batch, poll, "plain", wait=True),  # and wait, batched, and check outputs
        }
        batch.holding, batch.describe_calls, batch.submitted, batch.calls = True, [], 0, []  # the Airflow run's turn
        api_port = demo.free_port()
        proxy = ExecutionApiProxy(api_port)
        proxy_port = proxy.start()
        url = f"http://127.0.0.1:{api_port}"
        (home / "passwords.json").write_text(json.dumps({"admin": PASSWORD}))
        env = {
            **os.environ,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database,
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            # about 4 task processes per core: at 32 on 2 cores the scheduler's heartbeat lagged
            # over 30 s and it reset its own running tasks as orphans (docker-compose.yaml)
            "AIRFLOW__CORE__PARALLELISM": str(PARALLELISM),
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "1000",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__BASE_URL": url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{proxy_port}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "30",
            # each triggerer takes about its share of the scans (above it, a triggerer at capacity
            # logs so on every turn of its loop); the Batch API budget is split as evenly (budget.py)
            "AIRFLOW__TRIGGERER__CAPACITY": str(max(1000, math.ceil(scans / triggerers * 1.1))),
            "NDMG_TRIGGERERS": str(triggerers),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "NDMG_BATCH_POLL_SECONDS": str(poll),
            "NDMG_SUBMIT_RATE": "50",
            "NDMG_RETRY_DELAY_SECONDS": "5",
        }
        binary = str(Path(sys.executable).parent / "airflow")
        migrated = subprocess.run([binary, "db", "migrate"], env=env, capture_output=True, text=True)
        if migrated.returncode:
            raise RuntimeError(f"airflow db migrate failed:\n{migrated.stdout[-2000:]}\n{migrated.stderr[-3000:]}")
        commands = {name: name for name in PARTS} | {f"triggerer-{i}": "triggerer" for i in range(2, triggerers + 1)}
        for name, command in commands.items():
            log = open(home / f"{name}.log", "ab")
            processes[name] = subprocess.Popen([binary, command], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        memory = Memory(processes)
        heartbeats = Heartbeats(postgres)
        api = Airflow(url, "admin", PASSWORD)
        deadline = time.monotonic() + 300
        while not _dag_ready(api):
            if time.monotonic() > deadline:
                raise RuntimeError(f"Airflow did not come up; see {home}/api-server.log")
            time.sleep(2)

        started = time.monotonic()
        # the run refuses a dataset of more scans than max_scans (default 5,000), or whose
        # estimate is above max_cost_usd, before anything is spent: a lab running 10,000 raises both
        conf = {"bucket": load.BUCKET, "bidsdir": load.PREFIX, "dataset": "scale", "canary": False}
        run_id = api.trigger(conf | {"max_scans": max(scans, 5000), "max_cost_usd": None})
        quoted_run_id = run_id.replace("'", "''")  # a SQL string literal

        def run_state() -> str:
            """The run's state from the database: the REST API's dag run loads every task
            instance of the run (DagRun.dag_versions), 2.5 s of the api-server's CPU at 10,000,
            and asked every 2 s it starved the triggerers' Execution API calls."""
            return postgres.query(f"select state from dag_run where run_id = '{quoted_run_id}'")

        # deferred is not submitted on the triggerer route: wait for both (counted in the
        # database: listing 10,000 task instances through the REST API would load the api-server)
        while len(batch.submit_times()) < scans or int(postgres.query(DEFERRED_SCANS) or 0) < scans:
            if run_state() == "failed":
                failed = [f"{ti['task_id']}[{ti['map_index']}]" for ti in api.task_instances(run_id) if ti["state"] == "failed"]
                raise RuntimeError(
                    f"run {run_id} failed before its scans were all waiting: {', '.join(failed)} failed\n"
                    + "\n".join(
                        str(e) for e in api.task_log(run_id, next(ti for ti in api.task_instances(run_id) if ti["state"] == "failed"))
                    )[-3000:]
                )
            time.sleep(2)
        held_from = time.monotonic()
        time.sleep(poll * 0.5)  # every trigger picked up
        window_start, intervals = time.monotonic(), 4
        time.sleep(poll * intervals)
        window = [n for t, n in batch.describe_calls if window_start <= t < window_start + poll * intervals]
        batch.release()
        held = time.monotonic() - held_from
        while run_state() not in ("success", "failed"):
            time.sleep(2)
        wall = time.monotonic() - started
        state = run_state()
        memory.stopped.set()
        heartbeats.stopped.set()

        scan_tis = postgres.query("select id from task_instance where task_id = 'run_scan'").split()
        pulled = [proxy.xcom_bytes.get(ti, 0) for ti in scan_tis]
        launches = _launches(home / "logs", scans)
        submits = batch.submit_times()
        per_second: dict[int, dict[str, int]] = {}
        for t, operation in batch.calls:
            second = per_second.setdefault(int(t - started), {})
            second[operation] = second.get(operation, 0) + 1
        busiest = max(per_second.values(), key=lambda ops: sum(ops.values()), default={})
        if os.environ.get("NDMG_SCALE_KEEP"):  # profiling: every Batch call's arrival, from the trigger
            (home / "batch-calls.json").write_text(json.dumps([(round(t - started, 4), operation) for t, operation in batch.calls]))
        return {
            "scans": scans,
            "state": state,
            "wall": wall,
            "orchestration_per_scan": (wall - held) / scans,
            "describe_per_interval": len(window) / intervals,
            "ids_per_call": sum(window) / max(1, len(window)),
            "xcom_bytes": (min(pulled, default=0), statistics.median(pulled) if pulled else 0, max(pulled, default=0)),
            "launches_per_scan": launches,
            "route": os.environ.get("NDMG_SUBMIT_ROUTE", "triggerer"),
            "first_to_last_submit": submits[-1] - submits[0] if submits else 0.0,
            "trigger_to_all_submitted": submits[scans - 1] - started if len(submits) >= scans else float("nan"),
            "busiest_second": busiest,
            "peak_mb": dict(memory.peak),
            "triggerers": triggerers,
            "heartbeat_lag": dict(heartbeats.worst),
            "db_mb": int(postgres.query("select pg_database_size('airflow')")) / 2**20,
            "submitted": batch.submitted,
            "baselines": baselines,
        }
    except BaseException:
        _print_component_logs(home, processes)
        raise
    finally:
        for process in processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        server.stop()
        postgres.stop()


def _print_component_logs(home: Path, processes: dict[str, subprocess.Popen]) -> None:
    """A failed run: each Airflow component's state and the end of its log, on stderr; the
    logs are kept in /tmp/ndmg-scale-failed-<N>/."""
    kept = Path(tempfile.gettempdir()) / f"ndmg-scale-failed-{home.name.split('-')[-1]}"
    shutil.rmtree(kept, ignore_errors=True)
    kept.mkdir()
    for name, process in processes.items():
        state = "running" if process.poll() is None else f"exited {process.returncode}"
        log = home / f"{name}.log"
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
        if log.exists():
            shutil.copy(log, kept / log.name)
        print(f"--- airflow {name} ({state}), end of its log (all of it in {kept}):\n{tail}", file=sys.stderr)


def _dag_ready(api) -> bool:
    try:
        api._request("GET", "/api/v2/dags/ndmg_participant")
        return True
    except Exception:
        return False


def _launches(logs: Path, scans: int) -> float:
    total = 0
    for log in logs.glob("dag_id=ndmg_participant/run_id=*/task_id=run_scan/map_index=*/attempt=*.log"):
        total += log.read_text(errors="replace").count("Worker startup parse complete")
    return total / scans


# issue 22's bars, by N: first-to-last SubmitJob, trigger to all submitted, orchestration per scan (s)
BARS: dict[int, tuple[float | None, float | None, float | None]] = {1000: (60, 120, 0.15), 10000: (600, None, None)}


def _bar(value: float, bar: float | None, unit: str) -> str:
    return "" if bar is None else f"  -> bar {'met' if value <= bar else 'NOT met'}: <= {bar:g} {unit}"


def report(result: dict) -> None:
    n = result["scans"]
    bar_describe = math.ceil(n / 100) + 1
    low, median, high = result["xcom_bytes"]
    print(f"\n== N = {n:,} scans: run {result['state']}, {result['submitted']:,} jobs submitted ==")
    print(f"LocalExecutor parallelism:          {PARALLELISM} (4 per core); submit route: {result['route']}")
    first_to_last, to_all = BARS.get(n, (None, None, None))[:2]
    print(
        f"first-to-last SubmitJob:            {result['first_to_last_submit']:.1f} s{_bar(result['first_to_last_submit'], first_to_last, 's')}"
    )
    print(
        f"trigger to all submitted:           {result['trigger_to_all_submitted']:.1f} s{_bar(result['trigger_to_all_submitted'], to_all, 's')}"
    )
    busiest = result["busiest_second"]
    ops = ", ".join(f"{op} {count}" for op, count in sorted(busiest.items()))
    budget = float(os.environ.get("NDMG_BATCH_API_BUDGET") or 50)
    print(
        f"Batch API calls, busiest second:    {sum(busiest.values())} ({ops or 'none'})  -> "
        f"{'within' if sum(busiest.values()) <= budget else 'ABOVE'} the budget of {budget:g}/s"
    )
    print(f"wall time:                          {result['wall']:.0f} s")
    per_scan = BARS.get(n, (None, None, None))[2]
    print(
        f"orchestration per scan:             {result['orchestration_per_scan']:.3f} s (wall time less the jobs' RUNNING hold, over N)"
        + _bar(result["orchestration_per_scan"], per_scan, "s")
    )
    print(
        f"DescribeJobs per poll interval:     {result['describe_per_interval']:.2f} while all {n:,} RUNNING "
        f"({result['ids_per_call']:.0f} ids per call)  -> bar {'met' if result['describe_per_interval'] <= bar_describe else 'NOT met'}: <= {bar_describe}"
    )
    print(f"XCom bytes pulled per run_scan TI:  min {low:,} / median {median:,.0f} / max {high:,}")
    bar = 0.0 if result["route"] == "triggerer" else 1.1
    print(
        f"task launches per scan:             {result['launches_per_scan']:.2f}  -> bar {'met' if result['launches_per_scan'] <= bar else 'NOT met'}: <= {bar:g}"
    )
    print("peak memory (PSS, with children):   " + ", ".join(f"{k} {v:.0f} MB" for k, v in sorted(result["peak_mb"].items())))
    lags = result.get("heartbeat_lag", {})
    worst = lags.get("SchedulerJob", float("nan"))
    print(
        "longest heartbeat lag:              "
        + ", ".join(f"{kind.removesuffix('Job').lower()} {lag:.1f} s" for kind, lag in sorted(lags.items()))
        + f"  -> scheduler bar {'met' if worst <= 10 else 'NOT met'}: <= 10 s"
    )
    print(f"triggerers:                         {result.get('triggerers', 1)} (the Batch API budget split evenly)")
    print(f"Postgres database size:             {result['db_mb']:.1f} MB")
    seed, plain = result["baselines"]["seed"], result["baselines"]["plain"]
    print(
        f"plain-script baselines, same endpoint and process: the seed's list + spec + SubmitJob (no wait) "
        f"{seed['per_scan']:.3f} s/scan; and waiting (DescribeJobs 100 ids a call) + checking outputs "
        f"{plain['per_scan']:.3f} s/scan; this DAG {result['orchestration_per_scan'] / plain['per_scan']:.0f}x the waiting script"
    )


def triggerers_for(n: int) -> int:
    """Triggerers for N scans: one per 5,000 (docs/performance.md, sizing)."""
    return max(1, math.ceil(n / 5000))


def _measure(n: int, poll: int, triggerers: int | None = None) -> dict | None:
    """One N in a process of its own (a fresh Postgres, Airflow and endpoint); prints its figures."""
    command = [sys.executable, __file__, "--one", str(n), "--poll", str(poll), "--triggerers", str(triggerers or triggerers_for(n))]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode or not lines:
        print(f"N = {n}: the benchmark failed (exit {done.returncode})\n{done.stdout[-2000:]}\n{done.stderr[-12000:]}")
        return None
    result = json.loads(lines[-1][len(RESULT) :])
    report(result)
    return result


def fit(results: list[dict]) -> tuple[float, float]:
    """Least squares wall = base + per_scan x N over the runs."""
    xs, ys = [r["scans"] for r in results], [r["wall"] for r in results]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    per_scan = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum((x - mean_x) ** 2 for x in xs)
    return mean_y - per_scan * mean_x, per_scan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--poll", type=int, default=5, help="Batch poll interval in seconds (deployments: 30)")
    parser.add_argument("--smoke", action="store_true", help="N = 6: the figures only (make test-live)")
    parser.add_argument(
        "--largest-within",
        type=float,
        metavar="SECONDS",
        help="then run the largest N (a multiple of 50) that the runs above say finishes within SECONDS",
    )
    parser.add_argument(
        "--route", choices=["triggerer", "worker"], default="triggerer", help="NDMG_SUBMIT_ROUTE of the Airflow measured (route.py)"
    )
    parser.add_argument("--triggerers", type=int, help="triggerers of the Airflow measured (default: one per 5,000 scans)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # one N, in a process of its own
    args = parser.parse_args()
    os.environ["NDMG_SUBMIT_ROUTE"] = args.route  # the Airflow's components and --one's process inherit it
    if args.one:
        if keep := os.environ.get("NDMG_SCALE_KEEP"):  # profiling: keep the logs and the cluster's files
            Path(keep).mkdir(parents=True, exist_ok=True)
            workdir = Path(tempfile.mkdtemp(prefix="ndmg-scale-", dir=keep))
            print(RESULT + json.dumps(run_one(args.one, args.poll, workdir, args.triggerers or triggerers_for(args.one))))
            return 0
        with tempfile.TemporaryDirectory(prefix="ndmg-scale-") as tmp:
            print(RESULT + json.dumps(run_one(args.one, args.poll, Path(tmp), args.triggerers or triggerers_for(args.one))))
        return 0
    results = []
    for n in [6] if args.smoke else args.scans:
        results.append(_measure(n, args.poll, args.triggerers))
        if results[-1] is None:
            return 1
    if args.largest_within and len(results) >= 2:
        base, per_scan = fit(results)
        n = max(50, int((args.largest_within - base) / per_scan) // 50 * 50)
        print(
            f"\nthe runs above fit wall = {base:.0f} s + {per_scan:.2f} s x N: the largest N within "
            f"{args.largest_within:.0f} s is about {n:,}; running it"
        )
        results.append(_measure(n, args.poll))
        if results[-1] is None:
            return 1
        within = results[-1]["wall"] <= args.largest_within
        print(f"N = {n:,}: {results[-1]['wall']:.0f} s -> {'within' if within else 'NOT within'} {args.largest_within:.0f} s")
    if len(results) > 1:
        xcom = [r["xcom_bytes"][2] for r in results]
        print(
            f"\nXCom bytes per run_scan TI across N: max {xcom}  -> bar {'met' if max(xcom) - min(xcom) <= 16 else 'NOT met'}: constant in N"
        )
    return 0 if all(r["state"] == "success" for r in results) else 1


RESULT = "@@scale@@"

if __name__ == "__main__":
    raise SystemExit(main())
