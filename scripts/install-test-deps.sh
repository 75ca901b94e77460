#!/usr/bin/env bash
# Install the system packages the test suite needs beyond the virtualenv.
#
# Today that is Chromium, which the report test uses to open report.html headless, and
# bubblewrap (bwrap), the sandbox `eval --task code` runs model-written programs in (the
# sandbox tests are skipped without it). Safe to run repeatedly: it installs only what is
# missing, and it only tries apt-get when running as root on a Debian/Ubuntu system.
set -euo pipefail

have_chromium() {
  command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
    || command -v google-chrome >/dev/null 2>&1
}

packages=()
if have_chromium; then
  echo "install-test-deps: chromium already installed"
else
  packages+=(chromium fonts-dejavu-core)
fi
if command -v bwrap >/dev/null 2>&1; then
  echo "install-test-deps: bubblewrap already installed"
else
  packages+=(bubblewrap)
fi
if [ "${#packages[@]}" = 0 ]; then
  exit 0
fi

if [ "$(id -u)" != "0" ]; then
  echo "install-test-deps: not root; install these yourself: apt-get install ${packages[*]}" >&2
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-test-deps: no apt-get; install these yourself: ${packages[*]}" >&2
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# A stale package list makes "install" fail with 404s, so refresh it first.
apt-get update -qq || echo "install-test-deps: apt-get update failed; trying install anyway" >&2
for pkg in "${packages[@]}"; do
  if apt-get install -y -qq --no-install-recommends "$pkg"; then
    echo "install-test-deps: $pkg installed"
  else
    echo "install-test-deps: could not install $pkg; the tests that need it will be skipped" >&2
  fi
done
