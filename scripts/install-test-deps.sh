#!/bin/sh
# Installs what the test suite needs from the system's package manager:
# Debian's chromium, for the report page's browser tests
# (tests/test_report_browser.py).  Idempotent: does nothing when
# /usr/bin/chromium is there already.  Needs root (or sudo) to install;
# without the browser those tests are skipped, saying why.
set -eu

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: no apt-get here; install Chromium as /usr/bin/chromium" \
         "(the browser tests are skipped without it)" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-test-deps: not root and no sudo: cannot install chromium" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q chromium
test -x /usr/bin/chromium
