#!/usr/bin/env bash
# What only the benchmarks need (idempotent): Debian's pssh (parallel-ssh) and ansible-core
# from PyPI in the project's venv. Usage: scripts/setup-bench.sh VENV_BIN
set -euo pipefail
bin=${1:-.venv/bin}
log() { printf '[bench-setup] %s\n' "$*" >&2; }
if ! command -v parallel-ssh >/dev/null 2>&1; then
  log "installing Debian package pssh"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends pssh >/dev/null
fi
if [ ! -x "$bin/ansible" ]; then
  log "installing ansible-core into the venv"
  "$bin/pip" install -q -e '.[bench]'
fi
log "ready: $(parallel-ssh --version 2>&1 | head -1), $("$bin/ansible" --version | head -1)"
