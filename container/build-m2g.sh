#!/usr/bin/env bash
# Build the production scan image with its base pinned by digest, then show its contract.
#
#   container/build-m2g.sh 123456789012.dkr.ecr.us-east-1.amazonaws.com/ndmg-cloud-m2g:95d271f7
#
# M2G_BASE_TAG picks the neurodata/m2g tag whose current digest is pinned (default latest);
# the m2g code and the atlases are pinned by commit in Dockerfile.m2g whatever the base holds.
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 <image name:tag>" >&2
  exit 2
fi
image=$1
base_tag=${M2G_BASE_TAG:-neurodata/m2g:latest}
cd "$(dirname "$0")/.."

docker pull "$base_tag"
base=$(docker image inspect --format '{{index .RepoDigests 0}}' "$base_tag")
echo "base image: $base"
docker build -f container/Dockerfile.m2g --build-arg "M2G_BASE=$base" -t "$image" .
echo "image contract of $image:"
docker run --rm "$image" cat /opt/ndmg-cloud/image-contract.json
