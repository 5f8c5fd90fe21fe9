# A local stand-in for motoserver/moto:5.2.5 (the local-aws profile's AWS endpoint), for
# machines that cannot pull it: the same moto (the project's constraints.txt pins it) on the
# local Python base. What differs: the official image's entrypoint fixes `-H 0.0.0.0`; here
# the address is the command, 0.0.0.0 unless a test says 127.0.0.1.
ARG PYTHON_BASE=ndmg-local/python:3.11-slim-bookworm
FROM ${PYTHON_BASE}
COPY constraints.txt /tmp/constraints.txt
RUN pip install --no-cache-dir -c /tmp/constraints.txt "moto[server]==5.2.5"
ENV MOTO_PORT=5000
ENTRYPOINT ["moto_server"]
CMD ["-H", "0.0.0.0"]
