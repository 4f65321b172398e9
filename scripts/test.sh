#!/usr/bin/env bash
# Installs everything the tests need, then runs lint, type checks and the test suite.
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

# Tools the tests drive as independent clients/servers (Debian packages):
# iperf3 and wrk through the tcp-lb, curl and openssl s_client against TLS and socks5,
# redis-cli against the RESP controller, h2load and nghttp through the h2 modes, chromium
# (driven by Playwright's Python package) against the dashboard.
need=()
command -v iperf3 >/dev/null || need+=(iperf3)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v chromium >/dev/null || need+=(chromium)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v slowhttptest >/dev/null || need+=(slowhttptest)
# A C compiler and Python's headers: the install compiles the data path (setup.py).
command -v gcc >/dev/null || need+=(gcc)
python3 -c 'import os, sysconfig; exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' ||
  need+=(python3-dev)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    SUDO=""
  else
    SUDO="sudo"
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'

echo "== ruff"
python3 -m ruff check setup.py src tests bench fuzz
python3 -m ruff format --check setup.py src tests bench fuzz
echo "== mypy --strict"
python3 -m mypy
# pytest exit code 5 (no tests collected) fails the run.
run_pytest() {
  set +e
  python3 -m pytest -p no:cacheprovider -p no:benchmark "$@"
  local rc=$?
  set -e
  if [ "$rc" = 5 ]; then
    echo "pytest collected no tests: failing" >&2
    exit 1
  fi
  if [ "$rc" != 0 ]; then
    exit "$rc"
  fi
}

# The install above compiled the data path (setup.py); tests/unit/test_build.py
# fails if it fell back to pure Python. Two processes: the suite's servers all use
# free ports and temporary directories.
echo "== pytest (compiled data path)"
run_pytest -n 2 "$@"

# The same modules interpreted, as installed where there is no C compiler: the
# sans-IO processors, the event-loop glue, server groups and upstreams, from a copy
# of the sources without the extensions.
echo "== pytest (pure Python data path)"
pure="$(mktemp -d)"
trap 'rm -rf "$pure"' EXIT
cp -r src/vproxy "$pure/vproxy"
find "$pure" -name '*.so' -delete
VPROXY_PURE_PYTHON=1 PYTHONPATH="$pure" run_pytest -n 2 tests/unit/processor tests/unit/net \
  tests/unit/component/test_server_group.py tests/unit/component/test_upstream.py \
  tests/unit/test_build.py
