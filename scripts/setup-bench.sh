#!/usr/bin/env bash
# What only the benchmarks need (idempotent): Debian's pssh (parallel-ssh). ansible-core, the
# other baseline, is in the lock (requirements/dev.txt) and so already in the venv.
# Usage: scripts/setup-bench.sh VENV_BIN
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
  log "ansible-core is missing from $bin: the venv is not the lock; run 'rm -rf .venv && make setup'"
  exit 1
fi
log "ready: $(parallel-ssh --version 2>&1 | head -1), $("$bin/ansible" --version | head -1)"
