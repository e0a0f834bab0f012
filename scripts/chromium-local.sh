#!/usr/bin/env bash
# Debian's headless Chromium and ChromeDriver, for ablate's browser test of `ablate serve`
# (tests/it/browser.rs), which starts ChromeDriver itself and stops it by PID.
#
#   scripts/chromium-local.sh install   install Debian's chromium and chromium-driver when
#                                       missing; prints the paths of both, one a line.
#   scripts/chromium-local.sh check     exit 0 when both are installed, 1 otherwise.
#
# Exit codes: 0 ok; 3 this machine cannot install them (not root, no apt-get); 1 anything else.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
DRIVER=/usr/bin/chromedriver

log() { echo "chromium-local: $*" >&2; }

installed() { [ -x "$CHROMIUM" ] && [ -x "$DRIVER" ]; }

case "${1:-}" in
check)
    installed
    ;;
install)
    if ! installed; then
        if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
            log "cannot install Chromium here (needs root and apt-get)"
            exit 3
        fi
        log "installing chromium and chromium-driver from Debian's packages"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            chromium chromium-driver fonts-dejavu-core >/dev/null
        installed || {
            log "installed, but $CHROMIUM or $DRIVER is missing"
            exit 1
        }
    fi
    echo "$CHROMIUM"
    echo "$DRIVER"
    ;;
*)
    echo "usage: $0 install|check" >&2
    exit 1
    ;;
esac
