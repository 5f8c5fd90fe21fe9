# make demo    - the whole DAG on the embedded default (local AWS endpoint, lite pipeline)
# make test    - create .venv (first time), install the test tools (scripts/install-test-tools.sh)
#                and run the test suite
# make test-live - the slow live tier: Airflow components killed mid-run
# make test-m2g - the real m2g (pinned source, CPython 3.7): its parser, discovery, tracking, graphs
# make images  - build every image on this machine's Docker (local Debian bases: no registry)
# make test-images - the images run as containers: a scan, a run through Batch
# make lint    - ruff (lint and format check) and mypy, as configured in pyproject.toml
# make airflow - airflow standalone on the embedded stack, to trigger the DAG from the UI
# make bench - print the discovery / DAG parse benchmark figures
# make bench-scale - a real Airflow on Postgres at N = 100, 1,000 and 10,000 (benchmarks/scale.py)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-m2g test-live test-images images test-tools lint format airflow bench bench-load bench-scale screenshots lock clean

# uv (pinned in constraints.txt, installed by pip) installs the locked versions in seconds
# where pip takes minutes; it resolves against the same constraints.txt.
UV := $(VENV)/bin/uv pip install --quiet --python $(PY)

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt uv
	$(UV) -r requirements-dev.txt -c constraints.txt
	$(UV) --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ndmg-demo

airflow: $(STAMP)
	$(VENV)/bin/ndmg-demo --standalone

test: $(STAMP) test-tools
	$(PY) -m pytest -q --durations=20 tests -m "not crash and not slow and not images and not m2g"

# the real m2g's code on what this project gives it (tests/test_m2g_real.py): m2g 95d271f7 from
# ../shared/third_party with its own requirements in a CPython 3.7 virtualenv, made by
# scripts/m2g-env.sh and cached in ~/.cache/ndmg-cloud (first time about 2.5 minutes)
test-m2g: $(STAMP)
	$(PY) -m pytest -q --durations=10 tests -m m2g

# Chromium, Docker Compose (no engine) and the PostgreSQL server from Debian's packages, when
# missing and installable (root, apt-get); otherwise the tests that drive them are skipped
test-tools:
	@scripts/install-test-tools.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# apply ruff's fixes and formatting (make lint checks them)
format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# ~21 minutes: Airflow's components killed and restarted mid-run (tests/test_crash.py), and the
# dag.test() twins and long live tests marked slow
test-live: $(STAMP) test-tools
	$(PY) -m pytest -q tests -m "crash or slow"

# Docker (Debian's docker.io, a daemon started on overlay2, else vfs), a Debian base made with
# debootstrap, the local stand-ins for the official bases, then the project's images on them;
# reuses what it built before (first time about 5 minutes)
images:
	container/local/make-images.sh

# the images as containers: the lite scan image against the local AWS endpoint, and a run
# whose Batch jobs are containers of it (tests/test_images.py)
test-images: $(STAMP) test-tools images
	$(PY) -m pytest -q tests -m images

bench: $(STAMP)
	$(PY) benchmarks/discovery.py
	$(PY) benchmarks/dag_parse.py

# the trigger form, the mapped scans and report.html in headless Chromium
screenshots: $(STAMP)
	$(PY) scripts/ui_screenshots.py --out ui-screenshots

# ~13 minutes: a 1,100-scan run of the whole DAG on the embedded stack
bench-load: $(STAMP)
	$(PY) benchmarks/load.py --scans 1100

# a real Airflow (api-server, scheduler, dag-processor, triggerers) on Postgres (Debian's
# package: apt-get install postgresql), N = 100, 1,000 and 10,000 scans held RUNNING, then
# ended; one triggerer per 5,000 scans (about 40 minutes on 2 cores)
bench-scale: $(STAMP)
	$(PY) benchmarks/scale.py --scans 100 1000 10000

# Re-pin everything after changing requirements*.txt.
lock:
	rm -rf $(VENV).lock && $(PYTHON) -m venv $(VENV).lock
	$(VENV).lock/bin/pip install --quiet -c constraints.txt uv
	$(VENV).lock/bin/uv pip install --quiet --python $(VENV).lock/bin/python -r requirements-dev.txt
	$(VENV).lock/bin/pip freeze --exclude-editable > constraints.txt
	rm -rf $(VENV).lock

clean:
	rm -rf $(VENV)
