# A local stand-in for ghcr.io/astral-sh/uv (Dockerfile.m2g copies /uv from it), for machines
# that cannot pull it: the same uv release's binary, taken from its wheel on PyPI.
ARG PYTHON_BASE=ndmg-local/python:3.11-slim-bookworm
FROM ${PYTHON_BASE} AS wheel
ARG UV_VERSION=0.9.5
RUN pip download --quiet --no-deps --only-binary :all: "uv==${UV_VERSION}" -d /tmp/uv \
    && python3 -m zipfile -e /tmp/uv/uv-*.whl /tmp/uv/x \
    && install -m 755 /tmp/uv/x/uv-*.data/scripts/uv /uv \
    && /uv --version

FROM scratch
COPY --from=wheel /uv /uv
