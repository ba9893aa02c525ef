#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium and its WebDriver for the dashboard test
# (tests/service/test_http.py), unless they are already there. Nothing downloads a browser
# of its own: selenium is pointed at these executables.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  echo "chromium and chromedriver already installed"
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver
