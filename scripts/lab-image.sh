#!/usr/bin/env bash
# Builds the Docker image of a bare lab host without any registry: a Debian rootfs made by
# debootstrap from Debian's mirror, imported with `docker import`. A host of the image has its
# own filesystem, sshd (key login as root), python3 for Ansible, iptables and tc — and no
# project binary: the playbook brings those.
#
# Idempotent: the tag carries a hash of this recipe, and an existing image is kept. Prints
# the tag.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUITE="bookworm"
MIRROR="${LAB_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES="openssh-server,python3,iptables,iproute2,procps"
recipe="$(cat "$0" "$root/docker/lab-host/init" | sha256sum | cut -c1-12)"
IMAGE="parti-sim/lab-host:$SUITE-$recipe"

log() { printf 'lab-image: %s\n' "$*" >&2; }

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "$IMAGE"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
if ! command -v debootstrap >/dev/null 2>&1; then
  log "installing debootstrap"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq debootstrap >/dev/null
fi
rootfs="$(mktemp -d /var/tmp/parti-sim-rootfs.XXXXXX)"
trap '$SUDO rm -rf "$rootfs"' EXIT
log "debootstrap $SUITE ($PACKAGES) from $MIRROR"
$SUDO debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >/dev/null
# Keys are made by each host at its first start, never baked into the image.
$SUDO rm -f "$rootfs"/etc/ssh/ssh_host_*
$SUDO install -m 0755 "$root/docker/lab-host/init" "$rootfs/usr/local/sbin/lab-host-init"
$SUDO rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
log "importing $IMAGE"
$SUDO tar -C "$rootfs" -c . | docker import -c 'CMD ["/usr/local/sbin/lab-host-init"]' - "$IMAGE" >/dev/null
echo "$IMAGE"
