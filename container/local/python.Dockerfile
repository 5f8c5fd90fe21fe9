# A local stand-in for python:3.11-slim-bookworm, for machines that cannot pull it (tests, CI
# without a registry): Debian bookworm's own Python 3.11 (from Debian's packages, imported as
# ndmg-local/debian:bookworm by container/local/make-images.sh), with pip in a venv that is
# first on PATH, so `python`, `pip` and the console scripts pip installs work as they do in
# the official image. What differs: Debian's 3.11.2 rather than the newest 3.11 patch
# release, and the venv in /usr/local/python rather than a Python built into /usr/local.
ARG DEBIAN_BASE=ndmg-local/debian:bookworm
FROM ${DEBIAN_BASE}
ENV PATH=/usr/local/python/bin:$PATH \
    LANG=C.UTF-8
RUN python3 -m venv /usr/local/python \
    && ln -s /usr/local/python/bin/python /usr/local/bin/python
CMD ["python3"]
