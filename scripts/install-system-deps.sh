#!/usr/bin/env bash
# Installs the system programs the integration tests start: redis-server, Chromium for the
# browser tests, and docker-compose (v1, Debian's) whose `config` checks the compose file without a
# Docker daemon. Skips what is already there; needs root (or sudo) and Debian/Ubuntu apt otherwise.
set -euo pipefail

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v docker-compose >/dev/null || missing+=(docker-compose)
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "installing ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
