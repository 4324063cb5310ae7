#!/usr/bin/env bash
# Everything the test suite needs on a fresh machine: the test model, and headless
# Chromium (Debian's chromium + chromium-driver) for the report's screenshot test.
# Idempotent. Usage: scripts/setup-tests.sh && cargo test --locked
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/fetch-test-model.sh"

if [ -x /usr/bin/chromium ]; then
  echo "chromium present: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
else
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
  fi
  echo "installing chromium and chromium-driver (apt-get)"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
  /usr/bin/chromium --version
fi
