#!/usr/bin/env bash
# Installs what the local stack and the test suite need, and nothing twice:
# Debian's redis-server, clickhouse-server (18.16) and zookeeper when missing, and a virtualenv in .venv
# with the project and its dev extras (re-installed only when pyproject.toml changes).
set -euo pipefail
cd "$(dirname "$0")/../.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
[ -x /usr/sbin/clickhouse-server ] || command -v clickhouse-server >/dev/null 2>&1 || need+=(clickhouse-server)
command -v clickhouse-client >/dev/null 2>&1 || need+=(clickhouse-client)
# ZooKeeper for the replicated ClickHouse cluster test (tests/integration/cluster)
[ -f /usr/share/java/zookeeper.jar ] || need+=(zookeeper)
# headless Chromium and its driver for the console's browser tests (tests/browser)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# Node.js for the official openai Node SDK test (tests/node)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
# `bootstrap.sh bench`: also the load generator the benchmarks drive, and valgrind (callgrind
# counts instructions per request: bench/instructions.py)
if [ "${1:-}" = "bench" ]; then
  command -v wrk >/dev/null 2>&1 || need+=(wrk)
  command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
fi
if [ "${#need[@]}" -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  echo "bootstrap: installing ${need[*]} from Debian's packages"
  $sudo apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.floopy-installed
want=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "bootstrap: installing Python dependencies into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
  echo "$want" > "$stamp"
fi

# the openai Node SDK, at the version package-lock.json pins (npm registry), re-installed only
# when the lock file changes
node_stamp=tests/node/node_modules/.floopy-installed
node_want=$(sha256sum tests/node/package-lock.json | cut -c1-16)
if [ "$(cat "$node_stamp" 2>/dev/null || true)" != "$node_want" ]; then
  echo "bootstrap: installing the openai Node SDK into tests/node"
  npm ci --prefix tests/node --no-audit --no-fund --loglevel=error >/dev/null
  echo "$node_want" > "$node_stamp"
fi
