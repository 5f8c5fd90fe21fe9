# Airflow for docker-compose.yaml: the official image plus this project's pinned packages.
FROM apache/airflow:3.3.2-python3.11

COPY --chown=airflow:root requirements.txt constraints.txt /opt/ndmg-cloud/
RUN pip install --no-cache-dir \
        -r /opt/ndmg-cloud/requirements.txt \
        -c /opt/ndmg-cloud/constraints.txt
