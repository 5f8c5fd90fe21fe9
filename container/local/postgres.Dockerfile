# A local stand-in for postgres:16, for machines that cannot pull it: Debian bookworm's
# PostgreSQL (15, not 16), with an entrypoint that honours what docker-compose.yaml gives the
# official image: POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB create the role and the
# database on the first start into an empty /var/lib/postgresql/data (a volume), password
# authentication from anywhere but the local socket, `pg_isready` for the healthcheck, and
# `postgres -c ...` as the command, SIGINT (a fast shutdown) to stop. What differs: the major
# version; none of the official image's other variables (POSTGRES_INITDB_ARGS,
# /docker-entrypoint-initdb.d); it runs as uid 999 from the start, so it never takes over a
# bind-mounted folder; POSTGRES_PASSWORD is required on every start, not only the first.
ARG DEBIAN_BASE=ndmg-local/debian:bookworm
FROM ${DEBIAN_BASE}
# the postgres user of the official image (uid 999), made before Debian's package would pick one;
# no cluster of Debian's own (the entrypoint makes one in the volume), as the official image does
# hadolint ignore=DL3008
RUN groupadd --system --gid 999 postgres \
    && useradd --system --uid 999 --gid postgres --home-dir /var/lib/postgresql postgres \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-common \
    && sed -ri 's/#(create_main_cluster) .*$/\1 = false/' /etc/postgresql-common/createcluster.conf \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
USER 999
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
CMD ["postgres"]
