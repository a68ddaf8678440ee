#!/usr/bin/env bash
# System packages the test suite needs, from Debian's archive: an OpenSSH server for the remote-device tests,
# qemu-user-static and debootstrap for the arm64 stand-in (edgeq devices setup raspberry-pi-5), Chromium
# (headless) for the test that opens report.html in a real browser.
# Idempotent; needs root (CI runs as root). Without root it says what is missing and the tests that need it skip.
set -euo pipefail
missing=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
[ -x /usr/bin/qemu-aarch64-static ] || missing+=(qemu-user-static)
[ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: not root; install these for the remote-device tests: ${missing[*]}" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
