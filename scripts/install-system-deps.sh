#!/usr/bin/env bash
# Installs the Debian and npm packages teelab's tests and demo need, when they are missing.
# Idempotent and quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# Node.js builds the JupyterLab extension (labextension/, via jlpm); Chromium runs the browser tests
# (tests/extension/test_browser.py drives /usr/bin/chromium headless through Playwright's Python package).
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
# PostgreSQL server binaries: the key broker's shared-deployment tests start a throwaway cluster.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# configurable-http-proxy for the JupyterHub tests, pinned in package.json / package-lock.json.
if [ -f package.json ] && [ ! -x node_modules/.bin/configurable-http-proxy ]; then
  echo "installing npm packages (configurable-http-proxy)"
  npm ci --silent --no-audit --no-fund
fi
