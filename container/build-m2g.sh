#!/usr/bin/env bash
# Build the production scan image with its base pinned by digest, then show its contract.
#
#   container/build-m2g.sh 123456789012.dkr.ecr.us-east-1.amazonaws.com/ndmg-cloud-m2g:95d271f7
#   container/build-m2g.sh IMAGE [docker build options...]   # passed on, e.g. --build-arg M2G_REPO=...
#
# M2G_BASE_TAG picks the neurodata/m2g tag whose current digest is pinned (default latest);
# the m2g code and the atlases are pinned by commit in Dockerfile.m2g whatever the base holds.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 <image name:tag> [docker build options...]" >&2
  exit 2
fi
image=$1
shift
base_tag=${M2G_BASE_TAG:-neurodata/m2g:latest}
cd "$(dirname "$0")/.."

docker pull "$base_tag"
# the digest under this repository's name (an image pulled under several names has several)
repository=${base_tag%:*}
base=$(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$base_tag" | grep -m 1 "^${repository}@sha256:" || true)
if [ -z "$base" ]; then
  echo "no digest of $repository for $base_tag: is it a local image? push or pull it first" >&2
  exit 1
fi
echo "base image: $base"
docker build -f container/Dockerfile.m2g --build-arg "M2G_BASE=$base" "$@" -t "$image" .
echo "image contract of $image:"
docker run --rm "$image" cat /opt/ndmg-cloud/image-contract.json
