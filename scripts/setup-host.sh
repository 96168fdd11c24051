#!/usr/bin/env bash
# Idempotent host set-up: Debian packages and a running Docker engine.
# Safe to run again; each step checks before it acts.
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }

need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v mmdebstrap >/dev/null 2>&1 || need_pkgs+=(mmdebstrap)
[ -x /usr/sbin/sshd ] || need_pkgs+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || need_pkgs+=(openssh-client)
[ -x /usr/bin/chromium ] || need_pkgs+=(chromium)  # browser tests of the web console (Playwright)
command -v npm >/dev/null 2>&1 || need_pkgs+=(npm)  # make web / web-check build the console with esbuild
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# Docker engine: start Debian's dockerd without a bridge (loopback-only machine).
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd (no bridge, no iptables)"
  mkdir -p /var/log
  setsid nohup dockerd --bridge=none --iptables=false --ip-masq=false \
    >/var/log/cronium-dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { log "dockerd did not start; see /var/log/cronium-dockerd.log"; exit 1; }
fi
log "docker engine ready: $(docker version --format '{{.Server.Version}}')"
