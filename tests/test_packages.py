"""The house rules of ``plugins/ndmg_cloud/``: one package per side, imports only downwards,
Airflow and FastAPI only in ``orchestration``, a scan image free of the orchestrator, the
package data a wheel needs, and the class paths Airflow stored before the packages existed.

The import contract is read from the source (every import statement, those inside functions
included), so a wrong-way import fails here whether or not any test executes it.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "plugins" / "ndmg_cloud"
FACTS = Path(__file__).resolve().parent / "facts"

# package -> the packages its modules may import (itself included). The order is the
# layering, from the bottom: core, scan, participant, report, group, infra, orchestration,
# then the two front doors, cli and demo.
LOWER = ("core", "scan", "participant", "report", "group", "infra")
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "scan": {"core", "scan"},
    "participant": {"core", "scan", "participant"},
    "report": {"core", "participant", "report"},
    "group": {"core", "participant", "report", "group"},
    "infra": {"core", "participant", "infra"},
    "orchestration": {*LOWER, "orchestration"},
    "cli": {*LOWER, "orchestration", "cli", "demo"},
    "demo": {*LOWER, "orchestration", "cli", "demo"},
}
# Modules at the old class paths Airflow stored (trigger table, XCom) before the split: they
# re-export from orchestration, and nothing imports them.
LEGACY = {"ndmg_cloud.triggers": "orchestration", "ndmg_cloud.scanitems": "orchestration"}
ORCHESTRATOR_ONLY = ("airflow", "fastapi", "starlette")
# What the scan image does not install (container/scan-pyproject.toml, *-requirements.txt).
NOT_IN_SCAN_IMAGE = ("airflow", "fastapi", "starlette", "bids", "jinja2", "networkx", "moto")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def side(module: str) -> str | None:
    """The package (side) a module of ndmg_cloud belongs to; None for the package root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else None


def imports_of(path: Path, known: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, module) of every import in the file: ndmg_cloud modules resolved to the module
    (``from ndmg_cloud.scan import lite`` -> ndmg_cloud.scan.lite), others by their top name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.append((node.lineno, full if full in known else node.module))
        elif isinstance(node, ast.ImportFrom):  # relative: resolved against the file's package
            raise AssertionError(f"{path}:{node.lineno}: relative import; name the module in full (ndmg_cloud....)")
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return found


def contract_violations() -> list[str]:
    known = modules()
    problems = []
    for module, path in known.items():
        where = f"{path.relative_to(ROOT)}"
        mine = side(module)
        for line, target in imports_of(path, known):
            top = target.split(".")[0]
            if top in ORCHESTRATOR_ONLY and mine != "orchestration" and module not in LEGACY:
                problems.append(f"{where}:{line} imports {target}: only ndmg_cloud.orchestration may import {top}")
            if top != "ndmg_cloud" or target == "ndmg_cloud":
                continue
            if target in LEGACY:
                problems.append(f"{where}:{line} imports {target}, a legacy class path kept for Airflow; import {LEGACY[target]}")
                continue
            theirs = side(target)
            if module in LEGACY:
                if theirs != LEGACY[module]:
                    problems.append(f"{where}:{line} imports {target}: a legacy path only re-exports from {LEGACY[module]}")
                continue
            if mine is None:
                problems.append(f"{where}:{line} imports {target}: the package root imports nothing")
            elif theirs is None:
                problems.append(f"{where}:{line} imports {target}, which belongs to no package")
            elif theirs not in ALLOWED[mine]:
                problems.append(
                    f"{where}:{line}: {mine} imports {theirs} ({target}); {mine} may import only " + ", ".join(sorted(ALLOWED[mine]))
                )
    return problems


def import_cycles() -> list[list[str]]:
    """Circles among ndmg_cloud's modules (Tarjan's strongly connected components)."""
    known = modules()
    graph = {m: sorted({t for _, t in imports_of(p, known) if t in known and t != m}) for m, p in known.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_every_module_belongs_to_one_package():
    loose = [m for m in modules() if side(m) is None and m != "ndmg_cloud" and m not in LEGACY]
    assert not loose, f"modules outside the packages {sorted(ALLOWED)}: {loose}"
    assert {side(m) for m in modules()} - {None} == set(ALLOWED)


def test_imports_follow_the_package_table():
    problems = contract_violations()
    assert not problems, "\n".join(problems)


def test_no_import_circles():
    assert import_cycles() == []


def test_a_wrong_way_import_is_caught(tmp_path, monkeypatch):
    """The contract is not vacuous: a core module that imports orchestration, a scan module
    that imports Airflow and a circle are each refused with the file and line named."""
    probe = PACKAGE / "core" / "_contract_probe.py"
    other = PACKAGE / "core" / "_contract_probe_b.py"
    try:
        probe.write_text("from ndmg_cloud.orchestration import taskids\nimport airflow\nfrom ndmg_cloud.core import _contract_probe_b\n")
        other.write_text("from ndmg_cloud.core import _contract_probe\n")
        problems = contract_violations()
        assert any("_contract_probe.py:1: core imports orchestration" in p for p in problems), problems
        assert any("_contract_probe.py:2 imports airflow: only ndmg_cloud.orchestration" in p for p in problems), problems
        assert ["ndmg_cloud.core._contract_probe", "ndmg_cloud.core._contract_probe_b"] in import_cycles()
    finally:
        probe.unlink(missing_ok=True)
        other.unlink(missing_ok=True)


# The scan side, run with the orchestrator's libraries made unimportable: a finder first on
# sys.meta_path refuses them, in the runner and in every Python process it starts.
BLOCKER = """
import sys
BLOCKED = {blocked!r}

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is not in the scan image")
        return None

sys.meta_path.insert(0, Blocked())
"""


@pytest.fixture
def scan_image_python(tmp_path):
    """The environment of a process that cannot import what the scan image does not hold."""
    site = tmp_path / "blocker"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.format(blocked=NOT_IN_SCAN_IMAGE))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return env


def test_the_blocker_blocks(scan_image_python):
    done = subprocess.run([sys.executable, "-c", "import jinja2"], env=scan_image_python, capture_output=True, text=True)
    assert done.returncode == 1 and "jinja2 is not in the scan image" in done.stderr


@pytest.mark.parametrize("entry", ["runner", "selfcheck", "contract", "lite", "warm", "scrub"])
def test_scan_entry_points_import_without_the_orchestrator(scan_image_python, entry):
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import ndmg_cloud.scan.{entry}; import sys; print(sorted(m for m in sys.modules if m.startswith('ndmg_cloud')))",
        ],
        env=scan_image_python,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    loaded = {side(m) for m in json.loads(done.stdout.replace("'", '"'))} - {None}
    assert loaded <= {"core", "scan"}, loaded


@pytest.mark.parametrize("program", ["ndmg-scan", "ndmg-image-contract", "ndmg-lite"])
def test_scan_programs_answer_without_the_orchestrator(scan_image_python, program):
    done = subprocess.run([str(Path(sys.executable).parent / program), "--help"], env=scan_image_python, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


def test_a_scan_runs_to_success_without_the_orchestrator(s3, scan_image_python, tmp_path):
    """The runner downloads a phantom scan, runs lite and uploads its
    graphs and manifest, in processes (the runner and the pipeline it starts) where Airflow, FastAPI, pybids, Jinja and networkx
    cannot be imported."""
    from ndmg_cloud.demo.synthetic import make_dataset

    from datasets import write_specs

    make_dataset(tmp_path / "phantoms", subjects=1, sessions=1, sessionless=0)
    _, specs = write_specs(s3, tmp_path / "phantoms", bucket="lab-scan-image")
    spec = specs["sub-01_ses-1"]
    env = {k: v for k, v in scan_image_python.items() if k != "NDMG_WARM"}  # as in a scan image: no warm server
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ndmg-scan"), "--spec", spec["spec_uri"]], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    bucket, key = spec["manifest"].removeprefix("s3://").split("/", 1)
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert manifest["status"] == "success"
    assert any(o["path"].endswith("_grid3_connectome.csv") for o in manifest["outputs"])


def build_wheel(pyproject: Path, tmp_path: Path) -> Path:
    """A wheel built from a copy of the sources with ``pyproject`` (the checkout is not
    written to), by the uv the project installs."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "plugins" / "ndmg_cloud", src / "plugins" / "ndmg_cloud", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(pyproject, src / "pyproject.toml")
    shutil.copy(ROOT / "README.md", src / "README.md")
    out = tmp_path / "dist"
    uv = Path(sys.executable).parent / "uv"
    done = subprocess.run([str(uv), "build", "--wheel", "--out-dir", str(out), str(src)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    return wheel


def test_the_scan_image_install_holds_core_and_scan_only(tmp_path, scan_image_python):
    wheel = build_wheel(ROOT / "container" / "scan-pyproject.toml", tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    code = {n for n in names if n.startswith("ndmg_cloud/")}
    packages = {n.split("/")[1] for n in code if n.count("/") > 1}
    assert packages == {"core", "scan"}, packages
    assert "ndmg_cloud/core/data/neuroparc-labels.json" in code
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert set(line.split(" = ")[0] for line in entry_points.splitlines() if " = " in line) == {
        "ndmg-scan",
        "ndmg-image-contract",
        "ndmg-lite",
    }
    # installed alone, the runner imports and reads the atlases' package data
    target = tmp_path / "site"
    subprocess.run(
        [str(Path(sys.executable).parent / "uv"), "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)], check=True
    )
    env = {**scan_image_python, "PYTHONPATH": os.pathsep.join([str(target), scan_image_python["PYTHONPATH"]])}
    probe = "import ndmg_cloud, ndmg_cloud.scan.runner; from ndmg_cloud.core.atlases import catalogue; print(ndmg_cloud.__file__, len(catalogue('m2g').atlases))"
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    where, atlases = done.stdout.split()
    assert where.startswith(str(target)) and int(atlases) > 40


def test_the_scan_image_install_carries_the_projects_name_and_version():
    import tomllib

    main = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    scan = tomllib.loads((ROOT / "container" / "scan-pyproject.toml").read_text())["project"]
    assert (scan["name"], scan["version"]) == (main["name"], main["version"])  # the contract's runner version
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {k: v for k, v in scripts.items() if k in scan["scripts"]} == scan["scripts"]


def test_the_cloudformation_template_ships_in_the_wheel(tmp_path):
    """An installed ndmg-cloud (docker-compose's Airflow image, a wheel) finds the template the
    ndmg_infra DAG deploys: package data, not a path relative to a checkout."""
    wheel = build_wheel(ROOT / "pyproject.toml", tmp_path)
    assert "ndmg_cloud/infra/ndmg-batch.yaml" in zipfile.ZipFile(wheel).namelist()
    target = tmp_path / "site"
    subprocess.run(
        [str(Path(sys.executable).parent / "uv"), "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)], check=True
    )
    probe = "import ndmg_cloud; from ndmg_cloud.infra.stack import template_body; print(ndmg_cloud.__file__); print(template_body())"
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    where, body = done.stdout.split("\n", 1)
    assert where.startswith(str(target))
    assert body.strip() == (PACKAGE / "infra" / "ndmg-batch.yaml").read_text().strip()


STORED = json.loads((FACTS / "stored-before-packages.json").read_text())


def test_a_trigger_stored_before_the_split_resumes():
    """The triggerer imports the class path in its trigger table and builds the trigger from
    the stored kwargs (airflow.jobs.triggerer_job_runner: import_string, then cls(**kwargs))."""
    from airflow.sdk._shared.module_loading import import_string

    from ndmg_cloud.orchestration.triggers import ScanJobTrigger

    classpath, kwargs = STORED["trigger"]
    assert classpath == "ndmg_cloud.triggers.ScanJobTrigger"
    trigger = import_string(classpath)(**kwargs)
    assert isinstance(trigger, ScanJobTrigger)
    # a trigger stored before the lease heartbeat resumes without one
    assert trigger.serialize() == ("ndmg_cloud.orchestration.triggers.ScanJobTrigger", {**kwargs, "lease": None})


def test_a_release_scans_xcom_stored_before_the_split_is_read():
    """A mapped scan task of a run in flight reads release_scans' XCom with Airflow's serde;
    one written before the split names ndmg_cloud.scanitems.ScanItems."""
    code = (
        "import json, sys\n"
        "from airflow.sdk import serde\n"
        "import ndmg_cloud.orchestration.scanitems as current\n"  # what the DAG file imports
        "items = serde.deserialize(json.loads(sys.argv[1]))\n"
        "print(type(items) is current.ScanItems, len(items), items.uri, items.width)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, json.dumps(STORED["scan_items_xcom"])], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    data = STORED["scan_items_xcom"]["__data__"]
    assert done.stdout.splitlines()[-1].split() == ["True", str(data["count"]), data["uri"], str(data["width"])]
