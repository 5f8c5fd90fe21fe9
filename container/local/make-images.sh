#!/usr/bin/env bash
# `make images`: the project's scan and Airflow images, built for real on this machine's
# Docker daemon, on local bases made from Debian's packages where the official base cannot be
# pulled (no image registry answers here). Reuses what it built before: the Debian base is
# made once, Docker's build cache does the rest. Prints each build's time and the image's size.
# (Not the m2g image: its base cannot be pulled, and FSL and AFNI are not packaged here.)
#
#   container/local/make-images.sh     # installs Debian's docker.io and debootstrap if missing (root)
#
# NDMG_DEBIAN_MIRROR picks the Debian mirror (default http://deb.debian.org/debian);
# NDMG_LOCAL_PYTHON the prefix of the CPython 3.11 (3.11.5 or newer, built on Debian bookworm)
# that the Python base copies (default: the newest pyenv 3.11, else the python3 on PATH).
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
fail() {
  say "$*" >&2
  exit 1
}
scratch=()
trap 'rm -rf "${scratch[@]}"' EXIT

# --- Docker: Debian's docker.io (and debootstrap), a daemon (overlay2, else vfs) ---
if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    fail "needs Docker and debootstrap: sudo apt-get install docker.io debootstrap"
  fi
  say "installing docker.io and debootstrap from Debian's packages"
  apt-get update -qq >>"$log" 2>&1 || fail "apt-get update failed: see $log"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io debootstrap >>"$log" 2>&1 \
    || fail "apt-get could not install docker.io and debootstrap: see $log"
fi

start_dockerd() { # DRIVER: true once a daemon on it answers
  say "starting dockerd (storage driver $1; its log: /tmp/ndmg-dockerd.log)"
  (setsid dockerd --storage-driver "$1" >/tmp/ndmg-dockerd.log 2>&1 &)
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && return 0
    grep -q "failed to start daemon" /tmp/ndmg-dockerd.log && return 1
    sleep 1
  done
  return 1
}
if ! docker info >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || fail "no Docker daemon answers, and only root can start one here"
  # overlay2 where the kernel has overlayfs (a layer costs only its changes); vfs copies the
  # whole file system for every layer: several times slower, and gigabytes more disk. overlay2
  # fails where /var/lib/docker itself is on overlayfs (Docker in a container): then vfs.
  started_driver=""
  if grep -qw overlay /proc/filesystems && start_dockerd overlay2; then
    started_driver=overlay2
  else
    pkill -x dockerd 2>/dev/null && sleep 3 || true
    start_dockerd vfs && started_driver=vfs
  fi
  [ -n "$started_driver" ] || fail "dockerd did not start: see /tmp/ndmg-dockerd.log"
fi

# --- the Debian base: debootstrap's minimal bookworm, with its security and point updates,
# and the libraries CPython loads (a change to this list or the mirror makes it again: the
# image carries them as a label; `docker rmi ndmg-local/debian:bookworm` makes it afresh) ---
packages=ca-certificates,libssl3,libffi8,libsqlite3-0,libbz2-1.0,liblzma5,libreadline8,libuuid1,libncursesw6,libgdbm6,zlib1g
recipe="$packages $mirror"
if [ "$(docker image inspect --format '{{index .Config.Labels "ndmg.recipe"}}' "$DEBIAN" 2>/dev/null)" != "$recipe" ]; then
  root=$(mktemp -d /tmp/ndmg-debian.XXXXXX)
  scratch+=("$root")
  started=$SECONDS
  say "making $DEBIAN with debootstrap from $mirror (about a minute)"
  debootstrap --variant=minbase --include="$packages" bookworm "$root" "$mirror" >>"$log" 2>&1 \
    || fail "debootstrap failed: see $log"
  cat >"$root/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
  # CAs this machine added itself (a TLS-inspecting proxy's, say) are trusted inside too, by
  # everything in the images built on this base, so that apt and pip in a build reach their
  # mirrors the way the host does; on most machines there are none.
  if [ -d /usr/local/share/ca-certificates ] && [ -n "$(ls -A /usr/local/share/ca-certificates)" ]; then
    cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >>"$log" 2>&1
  fi
  { chroot "$root" apt-get update -qq && DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get upgrade -y -qq; } >>"$log" 2>&1 \
    || fail "the Debian base's updates failed: see $log"
  rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
  chmod 755 "$root" # mktemp's 700 would become the image's /, closed to every other user
  # an imported image has no environment: give it the PATH Debian's official image has
  tar -C "$root" -c . | docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL ndmg.recipe=\"$recipe\"" --change 'CMD ["/bin/bash"]' - "$DEBIAN" >/dev/null
  say "$DEBIAN made in $((SECONDS - started)) s"
fi

# --- CPython 3.11 for the Python base (see python.Dockerfile) ---
patch_of() { # PREFIX: the patch number of its python3.11, or nothing
  "$1/bin/python3.11" -c 'import sys; print(sys.version_info[2] if sys.version_info[:2] == (3, 11) else "")' 2>/dev/null || true
}
python_prefix=${NDMG_LOCAL_PYTHON:-}
if [ -z "$python_prefix" ]; then
  best=-1
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.11.* \
    "$(python3 -c 'import sys; print(sys.base_prefix)' 2>/dev/null || true)"; do
    [ -x "$candidate/bin/python3.11" ] || continue
    patch=$(patch_of "$candidate")
    if [ -n "$patch" ] && [ "$patch" -gt "$best" ]; then
      best=$patch
      python_prefix=$candidate
    fi
  done
fi
patch=$([ -n "$python_prefix" ] && patch_of "$python_prefix" || true)
if [ -z "$patch" ] || [ "$patch" -lt 5 ]; then
  fail "needs a CPython 3.11.5 or newer built on Debian bookworm (found ${python_prefix:-none}): pyenv install 3.11, or NDMG_LOCAL_PYTHON=<its prefix>"
fi
python_context=$(mktemp -d /tmp/ndmg-python.XXXXXX)
scratch+=("$python_context")
mkdir "$python_context/python"
cp container/local/python.Dockerfile "$python_context/"
# the interpreter, its shared library and standard library; nothing else of the prefix (no
# scripts with this machine's paths, no pip.conf, no site-packages, no test suite)
tar -C "$python_prefix" -c --exclude='./lib/python3.11/site-packages/*' --exclude=./lib/python3.11/test \
  --exclude='__pycache__' ./bin/python3.11 ./bin/python3 ./lib/python3.11 ./lib/libpython3.11.so.1.0 ./lib/libpython3.so \
  | tar -C "$python_context/python" -x

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
