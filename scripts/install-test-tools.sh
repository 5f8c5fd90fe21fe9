#!/usr/bin/env bash
# The programs some tests drive, from Debian's packages: Chromium (the trigger form in a real
# browser, tests/test_ui.py), Docker Compose without the engine (docker-compose.yaml resolved
# as Compose reads it, tests/test_compose.py) and the PostgreSQL server (the scale
# benchmark's smoke test, make test-live) and iptables (the scan instances' metadata wall, run
# in a network namespace, tests/test_infra.py). `make test` and `make test-live` run this first.
#
# Installs what is missing when it can (root and apt-get); otherwise it says what is missing
# and the tests that need it are skipped, each with one line naming the tool and this
# command. .ci/run sets NDMG_REQUIRE_TEST_TOOLS=1: there a missing tool fails those tests.
set -uo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium)
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
[ -x /usr/lib/postgresql/15/bin/initdb ] || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing the test tools from Debian's packages: ${missing[*]} (once; a minute or two)"
  log=/tmp/ndmg-test-tools.log
  apt-get update -qq >"$log" 2>&1
  for tool in "${missing[@]}"; do
    # Chromium with its recommended fonts; Compose and PostgreSQL without (no Docker engine)
    flags=(--no-install-recommends)
    [ "$tool" = chromium ] && flags=()
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${flags[@]}" "$tool" >>"$log" 2>&1; then
      echo "warning: apt-get could not install $tool (see $log); the tests that drive it are skipped"
    fi
  done
else
  echo "note: ${missing[*]} not installed (root and apt-get needed: sudo apt-get install ${missing[*]});"
  echo "      the tests that drive them are skipped, each naming what it needs"
fi
exit 0
