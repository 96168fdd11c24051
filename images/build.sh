#!/usr/bin/env bash
# Build the runtime images locally, with no image registry:
#   1. a Debian 13 (trixie) rootfs per runtime from mmdebstrap (packages.txt), imported as
#      cronium/rootfs-<rt>:trixie, with the exact installed package versions written to
#      /usr/share/cronium/packages.txt inside it (`docker run --rm IMAGE cat` that file);
#   2. images/<rt>/Dockerfile on top of it (user 1000, helper SDK, tini) tagged
#      cronium/runtime-<rt>:<VERSION>.
# Idempotent: a rootfs is rebuilt only when its packages.txt changes, an image only when
# its inputs change (the inputs' hash is stored as a label).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(cat "$here/VERSION")
suite=trixie  # python 3.13, nodejs 20; a rootfs is rebuilt when this or packages.txt changes
runtimes=${*:-bash python node}

log() { printf '[images] %s\n' "$*" >&2; }

label_of() { docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }

for rt in $runtimes; do
  [ -f "$here/$rt/packages.txt" ] || { log "unknown runtime '$rt' (expected bash, python or node)"; exit 2; }
  rootfs="cronium/rootfs-$rt:$suite"
  pkg_hash=$( (echo "$suite"; cat "$here/$rt/packages.txt") | sha256sum | cut -c1-16)
  if [ "$(label_of "$rootfs" org.cronium.packages)" != "$pkg_hash" ]; then
    log "building rootfs $rootfs with mmdebstrap (≈30 s)"
    include=$(grep -v '^#' "$here/$rt/packages.txt" | paste -sd, -)
    mmdebstrap --quiet --variant=minbase --include="$include" \
      --customize-hook='mkdir -p "$1"/usr/share/cronium && dpkg-query --admindir="$1"/var/lib/dpkg -W -f "\${Package}=\${Version}\n" | sort > "$1"/usr/share/cronium/packages.txt' \
      --customize-hook='rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*' \
      "$suite" - http://deb.debian.org/debian \
      | docker import --change "LABEL org.cronium.packages=$pkg_hash" - "$rootfs" >/dev/null
  fi
  image="cronium/runtime-$rt:$version"
  # the image is rebuilt when its Dockerfile, the SDK or the rootfs under it changes
  in_hash=$( (docker image inspect --format '{{.Id}}' "$rootfs"; cat "$here/$rt/Dockerfile" "$here/$rt/packages.txt"; find "$here/sdk" -type f -print0 | sort -z | xargs -0 cat) | sha256sum | cut -c1-16)
  if [ "$(label_of "$image" org.cronium.inputs)" != "$in_hash" ]; then
    log "building $image"
    docker build --quiet --network host --label "org.cronium.inputs=$in_hash" \
      -f "$here/$rt/Dockerfile" -t "$image" "$here" >/dev/null
  fi
  log "$image ready ($(docker image inspect --format '{{.Id}}' "$image" | cut -c1-19))"
done
