#!/usr/bin/env bash
# `make images`: every image of this project, built for real on this machine's Docker daemon,
# on local bases made from Debian's packages where the official base cannot be pulled (no
# image registry answers here). Reuses what it built before: the Debian base is made once,
# Docker's build cache does the rest. Prints each build's time and the image's size.
#
#   container/local/make-images.sh            # Docker from Debian's packages if missing (root)
#
# NDMG_DEBIAN_MIRROR picks the Debian mirror (default http://deb.debian.org/debian).
set -euo pipefail
cd "$(dirname "$0")/../.."

mirror=${NDMG_DEBIAN_MIRROR:-http://deb.debian.org/debian}
log=/tmp/ndmg-images.log
: >"$log"

# The images and their tags: the tests (tests/docker_images.py) use the same names.
DEBIAN=ndmg-local/debian:bookworm
PYTHON=ndmg-local/python:3.11-slim-bookworm
LITE=ndmg-cloud-lite:local

say() { echo "make images: $*"; }

# --- Docker: Debian's docker.io (and debootstrap), a daemon on the vfs storage driver ---
if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "needs Docker and debootstrap: sudo apt-get install docker.io debootstrap" >&2
    exit 1
  fi
  say "installing docker.io and debootstrap from Debian's packages"
  apt-get update -qq >>"$log" 2>&1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io debootstrap >>"$log" 2>&1
fi
if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    say "no Docker daemon answers, and only root can start one here" >&2
    exit 1
  fi
  say "starting dockerd (storage driver vfs; its log: /tmp/ndmg-dockerd.log)"
  (setsid dockerd --storage-driver vfs >/tmp/ndmg-dockerd.log 2>&1 &)
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { say "dockerd did not start: see /tmp/ndmg-dockerd.log" >&2; exit 1; }
fi

# --- the Debian base: debootstrap's minimal bookworm with Debian's Python, imported once ---
if ! docker image inspect "$DEBIAN" >/dev/null 2>&1; then
  root=$(mktemp -d /tmp/ndmg-debian.XXXXXX)
  started=$SECONDS
  say "making $DEBIAN with debootstrap from $mirror (about a minute)"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$mirror" >>"$log" 2>&1 \
    || { say "debootstrap failed: see $log" >&2; exit 1; }
  # CAs this machine added itself (a TLS-inspecting proxy's, say) are trusted inside too, so
  # pip in a build reaches PyPI the way the host does; on most machines there are none.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >>"$log" 2>&1
  fi
  rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
  chmod 755 "$root" # mktemp's 700 would become the image's /, closed to every other user
  # an imported image has no environment: give it the PATH Debian's official image has
  tar -C "$root" -c . | docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$DEBIAN" >/dev/null
  rm -rf "$root"
  say "$DEBIAN made in $((SECONDS - started)) s"
fi

# build TAG DOCKERFILE CONTEXT [docker build arguments...]
build() {
  local tag=$1 dockerfile=$2 context=$3
  shift 3
  local started=$SECONDS
  if ! docker build --network host -f "$dockerfile" -t "$tag" "$@" "$context" >>"$log" 2>&1; then
    say "building $tag failed; the end of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
  local size
  size=$(docker image inspect --format '{{.Size}}' "$tag")
  say "$tag built in $((SECONDS - started)) s, $((size / 1000000)) MB"
}

build "$PYTHON" container/local/python.Dockerfile container/local --build-arg "DEBIAN_BASE=$DEBIAN"
build "$LITE" container/Dockerfile.lite . --build-arg "PYTHON_BASE=$PYTHON"
say "done; the build log: $log"
