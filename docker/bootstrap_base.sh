#!/usr/bin/env bash
# Build the serving base image (Debian bookworm minbase + python3) without pulling anything:
# debootstrap from this machine's apt mirror, then `docker import`. Skips when the image exists.
# Needs root, a running engine (docker/start_engine.sh) and the Debian mirror over HTTP.
#
# Environment:
#   MLOPS_BASE_IMAGE     tag to create (default mlops-base:bookworm)
#   MLOPS_DEBIAN_MIRROR  mirror URL (default: the first .../debian URI in /etc/apt/sources*)
#   MLOPS_BASE_REBUILD=1 rebuild even if the tag exists
set -euo pipefail

IMAGE="${MLOPS_BASE_IMAGE:-mlops-base:bookworm}"

if [[ "${MLOPS_BASE_REBUILD:-0}" != 1 ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "$IMAGE: already present, skipping ($(docker image inspect -f '{{.Size}}' "$IMAGE") bytes)"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "bootstrap_base.sh: must run as root (debootstrap chroots)" >&2
  exit 1
fi
command -v debootstrap >/dev/null || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}

mirror="${MLOPS_DEBIAN_MIRROR:-}"
if [[ -z "$mirror" ]]; then
  # deb822 "URIs: http://deb.debian.org/debian" or one-line "deb http://... bookworm main";
  # the -security archive has no bookworm suite, so take the plain .../debian one.
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null |
    grep -oE '(https?|file)://[^ ]*/debian/?( |$)' | head -n 1 | tr -d ' ' || true)
fi
if [[ -z "$mirror" ]]; then
  echo "bootstrap_base.sh: no Debian mirror found in /etc/apt/sources*; set MLOPS_DEBIAN_MIRROR" >&2
  exit 1
fi

root=$(mktemp -d /var/tmp/mlops-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "$IMAGE: debootstrap bookworm from $mirror into $root"
# python3-venv brings ensurepip's wheels so the builder stage can create a venv.
debootstrap --variant=minbase --include=python3,python3-venv bookworm "$root" "$mirror" >"$root.log" 2>&1 || {
  echo "bootstrap_base.sh: debootstrap failed; last lines of $root.log:" >&2
  tail -n 30 "$root.log" >&2
  exit 1
}
rm -f "$root.log"

# Slim: no package caches, docs, man pages or locales in an image that only runs python.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
  "$root"/usr/share/locale/* "$root"/var/log/*.log "$root"/var/cache/debconf/*-old
find "$root"/usr/lib/python3* -name '__pycache__' -type d -prune -exec rm -rf {} + 2>/dev/null || true

tar --numeric-owner -C "$root" -c . | docker import \
  --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' \
  --message "debootstrap --variant=minbase bookworm + python3 from $mirror" \
  - "$IMAGE" >/dev/null
echo "$IMAGE: built ($(docker image inspect -f '{{.Size}}' "$IMAGE") bytes)"
