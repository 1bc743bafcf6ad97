#!/usr/bin/env bash
# Install horizonrl and everything it needs into ./.venv (system: bubblewrap for the sandboxes).
# torch is pinned to the CPU build through constraints.txt: without the pin pip may pull a
# CUDA build of several GB.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v bwrap >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get install -y -q bubblewrap >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q bubblewrap >/dev/null; }
  else
    echo "horizonrl needs bubblewrap (bwrap) for its local sandboxes; install it with your package manager" >&2
    exit 1
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -c constraints.txt -e ".[test]"
