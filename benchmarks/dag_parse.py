"""DAG parse benchmark: dags/ndmg_participant.py versus a bare DAG, each in a fresh interpreter.

Every measurement is a new ``python -c`` process with a temporary AIRFLOW_HOME. The process
first imports the heavy modules the DAG file needs anyway (airflow.sdk, pendulum, the
amazon provider's BatchOperator), then times only the execution of the DAG file, loaded
the way Airflow's DAG processor loads it (SourceFileLoader under a unique module name).
The bare DAG has the same imports and one trivial task, and does not import ndmg_cloud.

Prints figures, asserts nothing. Bars:
  * median(real) - median(bare) <= 0.2 s;
  * parsing the DAG creates no AWS client (botocore create_client / boto3.client calls: 0).

Run: .venv/bin/python benchmarks/dag_parse.py   (or `make bench`; `--smoke`: one run each,
as `make test` runs it so that the benchmark cannot rot)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DAGS = ROOT / "dags"
PLUGINS = ROOT / "plugins"
REAL_DAG = DAGS / "ndmg_participant.py"
REPEATS = 5
BAR_SECONDS = 0.2
MARK = "@@BENCH@@"

BARE_DAG = '''\
"""A bare DAG with the same imports as ndmg_participant.py, minus ndmg_cloud."""

from __future__ import annotations

import os

import pendulum
from airflow.providers.amazon.aws.operators.batch import BatchOperator  # noqa: F401
from airflow.sdk import Param, dag, task


@dag(
    dag_id="bare",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"x": Param(1, type="integer")},
)
def bare():
    @task
    def hello():
        return os.getpid()

    hello()


bare()
'''

# Runs in the fresh interpreter. argv[1] = DAG file.
PARSE_ONE = textwrap.dedent(
    f"""
    import importlib.machinery, importlib.util, json, sys, time, traceback
    t_start = time.perf_counter()
    import airflow.sdk, pendulum
    import airflow.providers.amazon.aws.operators.batch
    t_heavy = time.perf_counter() - t_start

    # Record every AWS client made from here on.
    import boto3, boto3.session, botocore.session
    calls = []
    def wrap(owner, name, label):
        orig = getattr(owner, name)
        def spy(*args, **kwargs):
            calls.append((label, "".join(traceback.format_stack(limit=6)[:-1])))
            return orig(*args, **kwargs)
        setattr(owner, name, spy)
    wrap(botocore.session.Session, "create_client", "botocore.session.Session.create_client")
    wrap(boto3.session.Session, "client", "boto3.session.Session.client")
    wrap(boto3.session.Session, "resource", "boto3.session.Session.resource")
    wrap(boto3, "client", "boto3.client")
    wrap(boto3, "resource", "boto3.resource")

    from airflow.sdk.definitions._internal.contextmanager import DagContext
    from airflow.sdk import DAG
    path = sys.argv[1]
    mod_name = "unusual_prefix_bench_" + str(abs(hash(path)))
    DagContext.current_autoregister_module_name = mod_name

    t0 = time.perf_counter()
    loader = importlib.machinery.SourceFileLoader(mod_name, path)
    spec = importlib.util.spec_from_loader(mod_name, loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    loader.exec_module(module)
    seconds = time.perf_counter() - t0

    dags = {{d.dag_id: len(d.tasks) for d, _ in DagContext.autoregistered_dags}}
    dags.update({{v.dag_id: len(v.tasks) for v in vars(module).values() if isinstance(v, DAG)}})
    print("{MARK}" + json.dumps({{
        "seconds": seconds,
        "heavy_imports": t_heavy,
        "dags": dags,
        "aws_clients": len([c for c in calls if c[0] == "botocore.session.Session.create_client"]),
        "aws_calls": [c[0] for c in calls],
        "first_call_stack": calls[0][1] if calls else "",
        "ndmg_modules": sorted(m for m in sys.modules if m.startswith("ndmg_cloud")),
    }}))
    """
)

DAGBAG = textwrap.dedent(
    f"""
    import json, sys, time
    t0 = time.perf_counter()
    from airflow.dag_processing.dagbag import DagBag
    t1 = time.perf_counter()
    bag = DagBag(dag_folder=sys.argv[1])
    t2 = time.perf_counter()
    print("{MARK}" + json.dumps({{
        "import": t1 - t0, "dagbag": t2 - t1,
        "dags": {{k: len(v.tasks) for k, v in bag.dags.items()}},
        "errors": {{str(k): str(v)[:500] for k, v in bag.import_errors.items()}},
    }}))
    """
)


def run(code: str, arg: str, env: dict[str, str]) -> tuple[dict, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, arg], env=env, cwd=str(ROOT), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :]), wall
    print(f"subprocess failed (rc {proc.returncode}) for {arg}:")
    print(proc.stdout[-3000:])
    print(proc.stderr[-3000:])
    return {}, wall


def bar(ok: bool, what: str) -> str:
    return f"  -> bar {'met' if ok else 'NOT met'}: {what}"


def main() -> int:
    global REPEATS
    if "--smoke" in sys.argv[1:]:
        REPEATS = 1
    with tempfile.TemporaryDirectory(prefix="ndmg-bench-") as tmp:
        home = Path(tmp) / "airflow_home"
        bare_dir = Path(tmp) / "bare_dags"
        home.mkdir()
        bare_dir.mkdir()
        bare_file = bare_dir / "bare_dag.py"
        bare_file.write_text(BARE_DAG)

        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_"))}
        env.update(
            {
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS),
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
                "PYTHONDONTWRITEBYTECODE": "",
            }
        )
        env.pop("PYTHONDONTWRITEBYTECODE")
        bare_env = dict(env, AIRFLOW__CORE__DAGS_FOLDER=str(bare_dir))

        print(f"python: {sys.executable}")
        print(f"real DAG: {REAL_DAG.relative_to(ROOT)}; bare DAG: same imports, 1 task, no ndmg_cloud")
        # Warm-up (writes airflow.cfg, fills .pyc caches); not counted.
        run(PARSE_ONE, str(REAL_DAG), env)
        run(PARSE_ONE, str(bare_file), bare_env)

        real, bare_runs, last_real, last_bare = [], [], {}, {}
        for _ in range(REPEATS):  # interleaved, so drift hits both alike
            r, _ = run(PARSE_ONE, str(REAL_DAG), env)
            b, _ = run(PARSE_ONE, str(bare_file), bare_env)
            if r:
                real.append(r["seconds"])
                last_real = r
            if b:
                bare_runs.append(b["seconds"])
                last_bare = b
        if not real or not bare_runs:
            print("could not measure; see errors above")
            return 1

        fmt = lambda xs: ", ".join(f"{x:.3f}" for x in xs)  # noqa: E731
        med_real, med_bare = statistics.median(real), statistics.median(bare_runs)
        diff = med_real - med_bare
        print(f"\n== DAG file execution, fresh interpreter, heavy modules pre-imported ({REPEATS} runs each) ==")
        print(f"heavy pre-imports (airflow.sdk, pendulum, amazon batch operator): {last_real['heavy_imports']:.3f} s (not counted)")
        print(f"ndmg_participant.py: median {med_real:.3f} s  (runs: {fmt(real)})  dags {last_real['dags']}")
        print(f"bare DAG:            median {med_bare:.3f} s  (runs: {fmt(bare_runs)})  dags {last_bare['dags']}")
        print(f"difference:          {diff:.3f} s")
        print(bar(diff <= BAR_SECONDS, f"difference {diff:.3f} s <= {BAR_SECONDS} s"))
        print(f"ndmg_cloud modules imported by the parse: {', '.join(last_real['ndmg_modules'])}")

        print("\n== AWS clients created while parsing ndmg_participant.py ==")
        print(f"botocore create_client calls: {last_real['aws_clients']} (all boto3/botocore client calls: {len(last_real['aws_calls'])})")
        if last_real["aws_calls"]:
            print(f"calls: {last_real['aws_calls']}\nfirst call from:\n{last_real['first_call_stack']}")
        print(bar(last_real["aws_clients"] == 0 and not last_real["aws_calls"], "0 AWS clients during parse"))

        print("\n== DagBag(dag_folder=dags/), one fresh interpreter, for information ==")
        d, wall = run(DAGBAG, str(DAGS), env)
        if d:
            print(f"import DagBag: {d['import']:.3f} s; DagBag(...): {d['dagbag']:.3f} s; whole process: {wall:.3f} s")
            print(f"dags: {d['dags']}; import errors: {d['errors'] or 'none'}")
    return 0


if __name__ == "__main__":
    t_start = time.perf_counter()
    rc = main()
    print(f"\ntotal script time: {time.perf_counter() - t_start:.1f} s")
    sys.exit(rc)
