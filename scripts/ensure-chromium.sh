#!/usr/bin/env bash
# The browser test drives Debian's Chromium through playwright-core. Installs it when it is
# missing and we may (root); otherwise says how. Does nothing when it is there.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "waymark: the browser test needs Debian's chromium: run 'sudo apt-get install chromium'" >&2
  exit 1
fi
echo "waymark: installing chromium for the browser test (apt-get)..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
