# A local stand-in for neurodata/m2g, the base of container/Dockerfile.m2g, for machines that
# cannot pull it: what Dockerfile.m2g's steps expect of the base, except FSL and AFNI (no
# Debian or PyPI package here provides them). So an image built on it proves the build steps
# and the image-contract step, and its canary must fail naming the missing programs.
#
# What it has, as neurodata/m2g has: Python 3.7 with pip3.7 and m2g's requirements.txt (the
# pinned commit's), git, an empty /m2g_atlases. What differs: Debian bookworm, not Ubuntu
# bionic; this machine's pyenv CPython 3.7 copied in (make-images.sh), not deadsnakes'; the
# requirements installed from wheels make-images.sh built (PyYAML 3.12 without libyaml; the
# two packages below them that m2g-constraints.txt holds back, see there); no
# m2g installed (Dockerfile.m2g installs it at its pinned commit); no FSL, AFNI, C-PAC, c3d
# or ICA-AROMA. And a CPython 3.11 (this is built on the local Python base): the official
# image has none, and Dockerfile.m2g's uv would download one, which cannot be done here.
ARG PYTHON_BASE=ndmg-local/python:3.11-slim-bookworm
FROM ${PYTHON_BASE}
# uv, like pip here, trusts the system's CAs (those this machine added included)
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# git, and the libraries the requirements' wheels load and the official image has (VTK, which
# m2g imports through fury, wants X11 and OpenGL; scikit-learn OpenMP)
# hadolint ignore=DL3008
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        git libx11-6 libxrender1 libgl1 libgomp1 >/dev/null \
    && rm -rf /var/lib/apt/lists/*
COPY python3.7/ /usr/local/
COPY requirements.txt /tmp/m2g-requirements.txt
COPY m2g-constraints.txt /tmp/m2g-constraints.txt
COPY wheels/ /tmp/wheels/
RUN ldconfig \
    && python3.7 -m ensurepip --altinstall >/dev/null \
    && pip3.7 install --quiet --no-cache-dir --no-index --find-links /tmp/wheels -r /tmp/m2g-requirements.txt -c /tmp/m2g-constraints.txt \
    && rm -rf /tmp/wheels /tmp/m2g-requirements.txt /tmp/m2g-constraints.txt \
    && mkdir /m2g_atlases \
    && python3.7 -c "import dipy, nibabel, bids, numpy, scipy, boto3, vtk, fury, graspologic"
ENTRYPOINT ["m2g"]
