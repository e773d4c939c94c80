#!/usr/bin/env bash
# Debian's Chromium for the headless-browser UI test (Playwright cannot download browsers here).
# Idempotent: does nothing when /usr/bin/chromium exists. Never fails the build: if Chromium
# cannot be installed (no root, no apt, no network) the browser test skips and says why.
set -uo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: apt-get not found; the browser test will be skipped" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install_browser: not root and no sudo; the browser test will be skipped" >&2
        exit 0
    fi
fi
echo "install_browser: installing Debian's chromium" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { $SUDO apt-get update -q && $SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core; } >&2; then
    echo "install_browser: apt-get could not install chromium; the browser test will be skipped" >&2
fi
exit 0
