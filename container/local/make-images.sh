#!/usr/bin/env bash
# `make images`: the project's scan and Airflow images, built for real on this machine's
# Docker daemon, on local bases made from Debian's packages where the official base cannot be
# pulled (no image registry answers here). Reuses what it built before: the Debian base is
# made once, Docker's build cache does the rest. Prints each build's time and the image's size.
# The m2g image is built too, on a stand-in of its base without FSL and AFNI (not packaged
# here), from the m2g and neuroparc sources in ../shared/third_party (see the m2g section).
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
REDIS=ndmg-local/redis:7.2-bookworm
LITE=ndmg-cloud-lite:local
AIRFLOW=ndmg-cloud-airflow:3.3.2 # the name docker-compose.yaml gives it
UV=ndmg-local/uv:0.9.5
M2G_BASE=ndmg-local/m2g:95d271f7-bookworm
M2G=ndmg-cloud-m2g:local

say() { echo "make images: $*"; }
fail() {
  say "$*" >&2
  exit 1
}
scratch=()
pids=() # background servers of this run (the m2g section's registry and git copies)
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "${scratch[@]}"' EXIT

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

# built TAG NOTE COMMAND...: run the command that builds TAG, logged; say its time and size
built() {
  local tag=$1 note=$2
  shift 2
  local started=$SECONDS
  if ! "$@" >>"$log" 2>&1; then
    say "building $tag failed; the end of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
  local size
  size=$(docker image inspect --format '{{.Size}}' "$tag")
  say "$tag built in $((SECONDS - started)) s, $((size / 1000000)) MB$note"
}

# build TAG DOCKERFILE CONTEXT [docker build arguments...]
build() {
  local tag=$1 dockerfile=$2 context=$3
  shift 3
  built "$tag" "" docker build --network host -f "$dockerfile" -t "$tag" "$@" "$context"
}

build "$PYTHON" "$python_context/python.Dockerfile" "$python_context" --build-arg "DEBIAN_BASE=$DEBIAN"
build "$LITE" container/Dockerfile.lite . --build-arg "PYTHON_BASE=$PYTHON"
build "$AIRFLOW_BASE" container/local/airflow.Dockerfile . --build-arg "PYTHON_BASE=$PYTHON"
build "$AIRFLOW" container/airflow.Dockerfile . --build-arg "PYTHON_BASE=$PYTHON" --build-arg "AIRFLOW_BASE=$AIRFLOW_BASE"
build "$POSTGRES" container/local/postgres.Dockerfile container/local --build-arg "DEBIAN_BASE=$DEBIAN"
build "$MOTO" container/local/moto.Dockerfile . --build-arg "PYTHON_BASE=$PYTHON"
build "$REDIS" container/local/redis.Dockerfile container/local --build-arg "DEBIAN_BASE=$DEBIAN"

# --- the m2g image (container/Dockerfile.m2g, built by container/build-m2g.sh as for ECR) on a
# stand-in of neurodata/m2g without FSL and AFNI (container/local/m2g-base.Dockerfile): CPython
# 3.7 (pyenv's, or NDMG_LOCAL_PYTHON37) with m2g's requirements from wheels built here once
# (cached in ~/.cache/ndmg-cloud), and m2g and neuroparc cloned from local git copies of the
# pinned sources (NDMG_THIRD_PARTY, default ../shared/third_party) served on 127.0.0.1 ---
# the sources and the CPython 3.7, found (and the m2g tarball's sha256 checked) by the script
# that also makes m2g's wheels: exit 3 when one is missing, 1 when the tarball is not the pinned one
set +e
found=$(scripts/m2g-env.sh paths 2>/tmp/ndmg-m2g-paths.err)
status=$?
set -e
read -r third_party python37 <<<"$found"
if [ "$status" = 3 ]; then
  say "the m2g image is not built: $(sed 's/^m2g-env: //' /tmp/ndmg-m2g-paths.err)"
elif [ "$status" != 0 ]; then
  fail "$(sed 's/^m2g-env: //' /tmp/ndmg-m2g-paths.err)"
elif [ ! -f "$python37/lib/libpython3.7m.so.1.0" ]; then
  fail "the CPython 3.7 in $python37 has no shared library (libpython3.7m.so.1.0): build it with --enable-shared (PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install 3.7)"
else
  build "$UV" container/local/uv.Dockerfile container/local --build-arg "PYTHON_BASE=$PYTHON"

  # m2g's requirements as CPython 3.7 wheels, built once (scripts/m2g-env.sh, shared with the
  # tests that run m2g's code)
  wheels=$(NDMG_THIRD_PARTY=$third_party NDMG_LOCAL_PYTHON37=$python37 scripts/m2g-env.sh wheels) \
    || fail "m2g's requirements are not built as wheels (see above)"
  src=$(mktemp -d /tmp/ndmg-m2g.XXXXXX)
  scratch+=("$src")
  tar -xzf "$third_party/m2g-95d271f7.tar.gz" -C "$src"
  requirements=$src/m2g-95d271f7/requirements.txt
  constraints=container/local/m2g-constraints.txt

  # the stand-in base: CPython 3.7 (as python.Dockerfile copies 3.11), the wheels, requirements.txt
  context=$src/base
  mkdir -p "$context/python3.7"
  cp container/local/m2g-base.Dockerfile "$requirements" "$constraints" "$context/"
  cp -r "$wheels" "$context/wheels"
  tar -C "$python37" -c --exclude='./lib/python3.7/site-packages/*' --exclude=./lib/python3.7/test --exclude='__pycache__' \
    ./bin/python3.7 ./lib/python3.7 ./lib/libpython3.7m.so.1.0 | tar -C "$context/python3.7" -x
  build "$M2G_BASE" "$context/m2g-base.Dockerfile" "$context" --build-arg "PYTHON_BASE=$PYTHON"

  # Dockerfile.m2g takes its base only by digest, as from a registry: push the stand-in to
  # Debian's docker-registry on 127.0.0.1, which gives it one
  if ! command -v docker-registry >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
      fail "the m2g image needs Debian's docker-registry (its base is taken by digest): sudo apt-get install docker-registry"
    fi
    say "installing docker-registry from Debian's packages"
    # not as the package's service (it would listen on every interface, port 5000): a
    # policy-rc.d that forbids starting services while it installs
    policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      policy=/usr/sbin/policy-rc.d
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
    fi
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-registry; } >>"$log" 2>&1 \
      || { [ -z "$policy" ] || rm -f "$policy"; fail "apt-get could not install docker-registry: see $log"; }
    [ -z "$policy" ] || rm -f "$policy"
    if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled docker-registry >/dev/null 2>&1; then
      systemctl disable --now docker-registry >>"$log" 2>&1 || true
    fi
  fi
  # started for this run only, on 127.0.0.1, storing under ~/.cache/ndmg-cloud
  registry=127.0.0.1:${NDMG_REGISTRY_PORT:-5055}
  if curl -s -o /dev/null "http://$registry/"; then
    fail "$registry is taken (an earlier run's registry? pkill -f 'docker-registry serve'); NDMG_REGISTRY_PORT picks another port"
  fi
  mkdir -p "$HOME/.cache/ndmg-cloud/registry"
  printf 'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n' "$HOME/.cache/ndmg-cloud/registry" "$registry" >"$src/registry.yml"
  (setsid docker-registry serve "$src/registry.yml" >/tmp/ndmg-registry.log 2>&1 & echo $! >"$src/registry.pid")
  pids+=("$(cat "$src/registry.pid")")
  for _ in $(seq 30); do curl -fsS "http://$registry/v2/" >/dev/null 2>&1 && break; sleep 1; done
  if ! kill -0 "${pids[-1]}" 2>/dev/null || ! curl -fsS "http://$registry/v2/" >/dev/null 2>&1; then
    fail "docker-registry did not start on $registry: see /tmp/ndmg-registry.log"
  fi
  docker tag "$M2G_BASE" "$registry/$M2G_BASE"
  docker push --quiet "$registry/$M2G_BASE" >>"$log" 2>&1 || fail "could not push $M2G_BASE to $registry: see $log"

  # m2g and neuroparc as git repositories, served read-only (git's dumb HTTP) on 127.0.0.1;
  # the same sources always make the same commit, so the build cache holds between runs
  served=$src/git
  mkdir -p "$served"
  repository() { # NAME TARBALL: the commit of a git repository made from the tarball
    local work=$src/$1
    mkdir -p "$work" && tar -xzf "$2" -C "$work" --strip-components=1
    (
      cd "$work"
      export GIT_AUTHOR_NAME=ndmg-cloud GIT_AUTHOR_EMAIL=make-images@localhost GIT_AUTHOR_DATE=2023-04-15T00:00:00Z
      export GIT_COMMITTER_NAME=ndmg-cloud GIT_COMMITTER_EMAIL=make-images@localhost GIT_COMMITTER_DATE=2023-04-15T00:00:00Z
      export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1 # no hooks, signing or excludes of this machine's
      git init -q && git add -A && git commit -q -m "$1 from $(basename "$2")" && git rev-parse HEAD
    )
    git clone -q --bare "$work" "$served/$1.git" && git -C "$served/$1.git" update-server-info
  }
  m2g_commit=$(repository m2g "$third_party/m2g-95d271f7.tar.gz")
  neuroparc_commit=$(repository neuroparc "$third_party/neuroparc-5a5e7469-atlases.tar.gz")
  port=${NDMG_GIT_PORT:-5056} # fixed, so that the build arguments, and the build cache, hold between runs
  if curl -s -o /dev/null "http://127.0.0.1:$port/"; then
    fail "127.0.0.1:$port is taken; NDMG_GIT_PORT picks another port"
  fi
  (setsid python3 -m http.server --bind 127.0.0.1 --directory "$served" "$port" >>"$log" 2>&1 & echo $! >"$src/git.pid")
  pids+=("$(cat "$src/git.pid")")
  for _ in $(seq 30); do curl -fsS "http://127.0.0.1:$port/m2g.git/HEAD" >/dev/null 2>&1 && break; sleep 0.2; done
  curl -fsS "http://127.0.0.1:$port/m2g.git/HEAD" >/dev/null 2>&1 || fail "the git copies are not served on 127.0.0.1:$port (taken? NDMG_GIT_PORT picks another): see $log"

  built "$M2G" " (m2g from the sources in $third_party, commit $m2g_commit; no FSL or AFNI)" \
    env M2G_BASE_TAG="$registry/$M2G_BASE" container/build-m2g.sh "$M2G" --network host --build-arg "UV_IMAGE=$UV" \
    --build-arg "M2G_REPO=http://127.0.0.1:$port/m2g.git" --build-arg "M2G_COMMIT=$m2g_commit" \
    --build-arg "NEUROPARC_REPO=http://127.0.0.1:$port/neuroparc.git" --build-arg "NEUROPARC_COMMIT=$neuroparc_commit"
fi
say "done; the build log: $log"
