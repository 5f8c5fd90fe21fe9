# A local stand-in for apache/airflow:3.3.2-python3.11, for machines that cannot pull it:
# the same Airflow (the project's constraints.txt pins it) on the local Python base, laid out
# as the official image lays it out for what our airflow.Dockerfile and docker-compose.yaml
# use: user `airflow` (uid 50000, group 0) whose `pip install` adds to the Airflow
# installation, AIRFLOW_HOME=/opt/airflow owned by that user, curl for the healthchecks, and
# the PostgreSQL drivers (psycopg2, and asyncpg for Airflow's async engine). What differs:
# no dumb-init entrypoint (compose gives every service a command, so Airflow runs as the
# container's first process), none of the official image's other extras, and the local
# Python base's CPython (python.Dockerfile).
ARG PYTHON_BASE=ndmg-local/python:3.11-slim-bookworm
FROM ${PYTHON_BASE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 50000 --gid 0 --create-home --home-dir /home/airflow airflow \
    && mkdir -p /opt/airflow \
    && chown airflow:0 /opt/airflow \
    && python -m venv /home/airflow/.local \
    && chown -R airflow:0 /home/airflow/.local
ENV AIRFLOW_HOME=/opt/airflow \
    PATH=/home/airflow/.local/bin:$PATH
USER 50000
WORKDIR /opt/airflow
COPY constraints.txt /tmp/constraints.txt
# and, as in the official image, the folders a named volume may be mounted on, owned by airflow
RUN pip install --no-cache-dir -c /tmp/constraints.txt apache-airflow==3.3.2 psycopg2-binary asyncpg \
    && mkdir -p /opt/airflow/dags /opt/airflow/logs /opt/airflow/plugins
ENTRYPOINT []
CMD ["airflow", "version"]
