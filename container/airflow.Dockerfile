# Airflow for docker-compose.yaml: the official image, this project's pinned packages (the
# lite pipeline's included) and the project itself, so that `ndmg_cloud`, `ndmg-scan` and
# `python -m ndmg_cloud.scan.runner` (the local backend's subprocess) work in every container.

# The bases: the official images by default; `make images` gives local stand-ins made from
# Debian's packages (container/local/) where no registry answers.
ARG PYTHON_BASE=python:3.11-slim-bookworm
ARG AIRFLOW_BASE=apache/airflow:3.3.2-python3.11

# The project as a wheel, built apart: the Airflow image gets the installed package and its
# console scripts, not a source tree it would have to make writable for the build.
FROM ${PYTHON_BASE} AS wheel
WORKDIR /src
COPY pyproject.toml ./
COPY plugins/ndmg_cloud ./plugins/ndmg_cloud
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${AIRFLOW_BASE}
COPY --chown=airflow:root requirements.txt constraints.txt container/runner-requirements.txt \
     container/lite-requirements.txt /opt/ndmg-cloud/
RUN pip install --no-cache-dir \
        -r /opt/ndmg-cloud/requirements.txt \
        -r /opt/ndmg-cloud/lite-requirements.txt \
        -c /opt/ndmg-cloud/constraints.txt
COPY --from=wheel /wheels /opt/ndmg-cloud/wheels
RUN pip install --no-cache-dir --no-deps /opt/ndmg-cloud/wheels/ndmg_cloud-*.whl \
    && mkdir -m 700 /opt/airflow/secrets
# /opt/airflow/secrets: where airflow-init generates the JWT secret, the Fernet key and the
# admin password (a named volume there starts with this owner and mode 700).
