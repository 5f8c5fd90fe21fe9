#!/usr/bin/env bash
# The real m2g (the pinned source in ../shared/third_party) installed with its own
# requirements on CPython 3.7, for the tests that run m2g's code (make test-m2g) and for the
# m2g image's stand-in base (make images). Both are cached in ~/.cache/ndmg-cloud:
#
#   scripts/m2g-env.sh paths    # prints the sources' folder and the CPython 3.7 prefix it found
#   scripts/m2g-env.sh wheels   # m2g's requirements as CPython 3.7 wheels; prints their folder
#   scripts/m2g-env.sh venv     # a CPython 3.7 virtualenv with those wheels and m2g; prints it
#
# The first `wheels` takes a few minutes (pip downloads and builds 128 wheels); a `venv` from
# the wheels takes about a minute; both are reused while what decides them is unchanged.
# Finds the sources in NDMG_THIRD_PARTY (else ../shared/third_party, /work/shared/third_party)
# and CPython 3.7 in NDMG_LOCAL_PYTHON37 (else pyenv's newest 3.7). Exits 3, naming what is
# missing, when either is; 1 when a step fails (its output is in /tmp/ndmg-m2g-env.log).
set -euo pipefail
cd "$(dirname "$0")/.."

M2G_TARBALL=m2g-95d271f7.tar.gz
M2G_SHA256=59527d00d146d109a9f7352e70b0d96aa1471ee13c7389e6300183011440d4cc # third_party/README.md
NEUROPARC_TARBALL=neuroparc-5a5e7469-atlases.tar.gz
CONSTRAINTS=container/local/m2g-constraints.txt
CACHE=${NDMG_CACHE:-$HOME/.cache/ndmg-cloud}
log=/tmp/ndmg-m2g-env.log

say() { echo "m2g-env: $*" >&2; }
fail() { # MESSAGE [EXIT CODE]
  say "$1"
  exit "${2:-1}"
}
what=${1:-}
[ "$what" = paths ] || [ "$what" = wheels ] || [ "$what" = venv ] || fail "usage: scripts/m2g-env.sh paths|wheels|venv" 2

third_party=${NDMG_THIRD_PARTY:-}
if [ -z "$third_party" ]; then
  for candidate in ../shared/third_party /work/shared/third_party; do
    [ -z "$third_party" ] && [ -f "$candidate/$M2G_TARBALL" ] && third_party=$(cd "$candidate" && pwd)
  done
fi
python37=${NDMG_LOCAL_PYTHON37:-}
if [ -z "$python37" ]; then # pyenv's newest 3.7 (3.7.16 after 3.7.9)
  for candidate in $(printf '%s\n' "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.7.* | sort -V); do
    [ -x "$candidate/bin/python3.7" ] && python37=$candidate
  done
fi
if [ -z "$third_party" ] || [ ! -f "$third_party/$M2G_TARBALL" ] || [ ! -f "$third_party/$NEUROPARC_TARBALL" ]; then
  fail "no m2g and neuroparc sources (set NDMG_THIRD_PARTY to the folder with $M2G_TARBALL and $NEUROPARC_TARBALL)" 3
fi
if [ -z "$python37" ] || [ ! -x "$python37/bin/python3.7" ]; then
  fail "no CPython 3.7 (pyenv install 3.7, or NDMG_LOCAL_PYTHON37=<its prefix>)" 3
fi
if [ "$(sha256sum "$third_party/$M2G_TARBALL" | cut -d' ' -f1)" != "$M2G_SHA256" ]; then
  fail "$third_party/$M2G_TARBALL is not the pinned m2g source (its sha256 differs from $M2G_SHA256)"
fi

if [ "$what" = paths ]; then
  echo "$third_party $python37"
  exit 0
fi

src=$(mktemp -d /tmp/ndmg-m2g-env.XXXXXX)
trap 'rm -rf "$src"' EXIT
tar -xzf "$third_party/$M2G_TARBALL" -C "$src"
requirements=$src/m2g-95d271f7/requirements.txt

# --- the wheels: keyed by what decides them (the requirements, the constraints, the PyYAML
# line below, the interpreter) ---
key=$({ cat "$requirements" "$CONSTRAINTS"; grep -F 'PyYAML==' "$0"; "$python37/bin/python3.7" -VV; } | sha256sum | cut -c1-12)
wheels=$CACHE/m2g-wheels-$key
if [ ! -f "$wheels/.complete" ]; then
  started=$SECONDS
  say "building m2g's requirements as CPython 3.7 wheels into $wheels (a few minutes, once)"
  rm -rf "$wheels" && mkdir -p "$wheels"
  { "$python37/bin/python3.7" -m venv "$src/venv" && "$src/venv/bin/pip" install --quiet wheel; } >>"$log" 2>&1 \
    || fail "no virtual environment with wheel for CPython 3.7: see $log"
  # PyYAML 3.12 (a requirement of a requirement) builds only without libyaml on its own:
  # its option alone, since a build option on a pip command turns off every binary wheel
  "$src/venv/bin/pip" wheel --no-deps -w "$wheels" PyYAML==3.12 --global-option=--without-libyaml >>"$log" 2>&1 \
    || fail "PyYAML 3.12 did not build: see $log"
  "$src/venv/bin/pip" wheel -w "$wheels" --find-links "$wheels" -r "$requirements" -c "$CONSTRAINTS" >>"$log" 2>&1 \
    || fail "m2g's requirements did not build as wheels: see $log"
  touch "$wheels/.complete"
  say "m2g's requirements: $(find "$wheels" -name '*.whl' | wc -l) wheels in $((SECONDS - started)) s"
fi
if [ "$what" = wheels ]; then
  echo "$wheels"
  exit 0
fi

# --- the virtualenv: the wheels, then m2g itself (its setup.py imports m2g, so after them) ---
venv=$CACHE/m2g-venv-$({ echo "$key"; echo "$M2G_SHA256"; } | sha256sum | cut -c1-12)
if [ ! -f "$venv/.complete" ]; then
  started=$SECONDS
  say "installing m2g 95d271f7 and its requirements into $venv (about a minute, once)"
  rm -rf "$venv"
  {
    "$python37/bin/python3.7" -m venv "$venv" \
      && "$venv/bin/pip" install --quiet --no-index --find-links "$wheels" -r "$requirements" -c "$CONSTRAINTS" \
      && "$venv/bin/pip" install --quiet --no-index --no-deps --no-build-isolation "$src/m2g-95d271f7"
  } >>"$log" 2>&1 || fail "m2g did not install into $venv: see $log"
  touch "$venv/.complete"
  say "m2g installed in $((SECONDS - started)) s"
fi
echo "$venv"
