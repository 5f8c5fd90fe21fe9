# A local stand-in for python:3.11-slim-bookworm, for machines that cannot pull it (tests, CI
# without a registry): Debian bookworm (debootstrap's minimal base, ndmg-local/debian:bookworm)
# with a CPython 3.11 built from source into /usr/local, as the official image has one.
# Debian's own Python is 3.11.2, older than what the pinned packages need (soupsieve asks for
# 3.11.5), and python.org does not answer here, so container/local/make-images.sh copies in
# this machine's pyenv build (3.11.7, built on bookworm): its standard library, without the
# test suite or any site-packages. What differs from the official image: the patch release,
# the pip that the standard library's ensurepip bundles, and that pip trusts the system's CAs
# (/etc/pip.conf), which include those this machine added (make-images.sh copies them in),
# where the official image's pip trusts only its own bundle.
ARG DEBIAN_BASE=ndmg-local/debian:bookworm
FROM ${DEBIAN_BASE}
ENV LANG=C.UTF-8
COPY python/ /usr/local/
# the extension modules a pip install and our code reach for must load here
RUN ldconfig \
    && python3 -m ensurepip --default-pip \
    && ln -sf python3 /usr/local/bin/python \
    && ln -sf pip3 /usr/local/bin/pip \
    && printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >/etc/pip.conf \
    && python -c "import ssl, sqlite3, ctypes, bz2, lzma, zlib, uuid, readline, venv"
CMD ["python3"]
