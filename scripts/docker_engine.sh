#!/usr/bin/env bash
# Best effort: a docker engine on this host with the sandbox image, so the docker tests run against a
# real engine (they skip, saying why, where none is reachable). Installs Debian's docker.io and
# debootstrap if missing, starts `dockerd --iptables=false --bridge=none` (the host's network is left
# alone; sandboxes use network_mode=none), and builds horizonrl-sandbox:bookworm with
# `horizonrl-env docker-image` (debootstrap + docker import, no registry). Needs root (or sudo) and
# ./.venv from scripts/install.sh. Exit status 0 even when the engine cannot run here.
set -uo pipefail
cd "$(dirname "$0")/.."
say() { echo "docker_engine: $*" >&2; }
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || { say "no apt-get: install docker yourself; docker tests will skip"; exit 0; }
  $SUDO apt-get install -y -q docker.io debootstrap >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q docker.io debootstrap >/dev/null 2>&1; } \
    || { say "could not install docker.io/debootstrap; docker tests will skip"; exit 0; }
fi
if ! docker info >/dev/null 2>&1; then
  LOG="${TMPDIR:-/tmp}/horizonrl-dockerd.log"
  $SUDO setsid nohup dockerd --iptables=false --bridge=none >"$LOG" 2>&1 < /dev/null &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { say "dockerd did not start (see $LOG); docker tests will skip"; exit 0; }
fi
if ! docker image inspect horizonrl-sandbox:bookworm >/dev/null 2>&1; then
  .venv/bin/horizonrl-env docker-image --tag horizonrl-sandbox:bookworm >/dev/null \
    || { say "could not build the sandbox image; docker tests will skip"; exit 0; }
fi
say "engine up, image horizonrl-sandbox:bookworm present"
