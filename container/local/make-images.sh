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
AIRFLOW_BASE=ndmg-local/airflow:3.3.2-python3.11
POSTGRES=ndmg-local/postgres:16
MOTO=ndmg-local/moto:5.2.5
LITE=ndmg-cloud-lite:local
AIRFLOW=ndmg-cloud-airflow:3.3.2 # the name docker-compose.yaml gives it

say() { echo "make images: $*"; }

# --- Docker: Debian's docker.io (and debootstrap), a daemon (overlay2, else vfs) ---
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
  # overlay2 where the kernel has overlayfs (a layer costs its changes); vfs copies the whole
  # file system for every layer: several times slower, and gigabytes more disk
  driver=vfs
  grep -qw overlay /proc/filesystems && driver=overlay2
  say "starting dockerd (storage driver $driver; its log: /tmp/ndmg-dockerd.log)"
  (setsid dockerd --storage-driver "$driver" >/tmp/ndmg-dockerd.log 2>&1 &)
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { say "dockerd did not start: see /tmp/ndmg-dockerd.log" >&2; exit 1; }
fi

# --- the Debian base: debootstrap's minimal bookworm with the libraries CPython loads ---
# (a change to this list makes the base again: the image carries it as a label)
packages=ca-certificates,libssl3,libffi8,libsqlite3-0,libbz2-1.0,liblzma5,libreadline8,libuuid1,libncursesw6,libgdbm6,zlib1g
if [ "$(docker image inspect --format '{{index .Config.Labels "ndmg.packages"}}' "$DEBIAN" 2>/dev/null)" != "$packages" ]; then
  root=$(mktemp -d /tmp/ndmg-debian.XXXXXX)
  started=$SECONDS
  say "making $DEBIAN with debootstrap from $mirror (about a minute)"
  debootstrap --variant=minbase --include="$packages" bookworm "$root" "$mirror" >>"$log" 2>&1 \
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
    --change "LABEL ndmg.packages=$packages" --change 'CMD ["/bin/bash"]' - "$DEBIAN" >/dev/null
  rm -rf "$root"
  say "$DEBIAN made in $((SECONDS - started)) s"
fi

# --- CPython 3.11 for the Python base: this machine's pyenv build (see python.Dockerfile) ---
python_prefix=${NDMG_LOCAL_PYTHON:-}
if [ -z "$python_prefix" ]; then
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.11.*; do
    patch=${candidate##*/3.11.}
    [ -x "$candidate/bin/python3.11" ] && [[ $patch =~ ^[0-9]+$ ]] && [ "$patch" -ge 5 ] && python_prefix=$candidate
  done
fi
if [ -z "$python_prefix" ]; then
  say "needs a CPython 3.11.5 or newer built on Debian bookworm: pyenv install 3.11, or NDMG_LOCAL_PYTHON=<its prefix>" >&2
  exit 1
fi
python_context=$(mktemp -d /tmp/ndmg-python.XXXXXX)
trap 'rm -rf "$python_context"' EXIT
mkdir "$python_context/python"
cp container/local/python.Dockerfile "$python_context/"
tar -C "$python_prefix" -c --exclude='./lib/python3.11/site-packages/*' --exclude=./lib/python3.11/test \
  --exclude='__pycache__' --exclude='./bin/pip*' --exclude='./bin/2to3*' --exclude='./bin/idle*' . | tar -C "$python_context/python" -x

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

build "$PYTHON" "$python_context/python.Dockerfile" "$python_context" --build-arg "DEBIAN_BASE=$DEBIAN"
build "$LITE" container/Dockerfile.lite . --build-arg "PYTHON_BASE=$PYTHON"
build "$AIRFLOW_BASE" container/local/airflow.Dockerfile . --build-arg "PYTHON_BASE=$PYTHON"
build "$AIRFLOW" container/airflow.Dockerfile . --build-arg "PYTHON_BASE=$PYTHON" --build-arg "AIRFLOW_BASE=$AIRFLOW_BASE"
build "$POSTGRES" container/local/postgres.Dockerfile container/local --build-arg "DEBIAN_BASE=$DEBIAN"
build "$MOTO" container/local/moto.Dockerfile . --build-arg "PYTHON_BASE=$PYTHON"
say "done; the build log: $log"
