#!/usr/bin/env bash
# Installs the external tools the test suite runs for real, when missing.
# As root on Debian it uses apt-get; otherwise it says what to install.
# Under CI=true a tool that is still missing is a failure.
set -euo pipefail
need=(redis-server nats-server ffmpeg ffprobe chromium)
pkg_of() { case "$1" in ffprobe) echo ffmpeg ;; *) echo "$1" ;; esac; }
missing=()
for t in "${need[@]}"; do command -v "$t" >/dev/null 2>&1 || missing+=("$(pkg_of "$t")"); done
if [ ${#missing[@]} -gt 0 ]; then
  pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test-tools: installing $pkgs"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/dev/null
  else
    echo "test-tools: missing $pkgs — install them (Debian: sudo apt-get install -y $pkgs)" >&2
  fi
fi
still=()
for t in "${need[@]}"; do command -v "$t" >/dev/null 2>&1 || still+=("$t"); done
if [ ${#still[@]} -gt 0 ]; then
  echo "test-tools: still missing: ${still[*]}" >&2
  if [ "${CI:-}" = true ]; then exit 1; fi
  echo "test-tools: tests that need them will skip (they fail under CI=true)" >&2
fi
# redis-server from apt starts a system instance; tests start their own on free ports.
echo "test-tools: ok ($(for t in "${need[@]}"; do command -v "$t" >/dev/null && printf '%s ' "$t"; done))"
