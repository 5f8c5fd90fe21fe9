# A local stand-in for redis:7.2-bookworm (the celery profile's broker), for machines that
# cannot pull it: Debian bookworm's redis-server (7.0, not 7.2) and redis-cli on PATH, and
# `redis-server <config file>` as the command, as docker-compose.yaml gives the official
# image. What differs: the minor version; no entrypoint of its own (the official one drops
# root to its redis user; docker-compose.yaml runs it as uid 50000 anyway).
ARG DEBIAN_BASE=ndmg-local/debian:bookworm
FROM ${DEBIAN_BASE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/* \
    && redis-server --version
WORKDIR /data
CMD ["redis-server"]
