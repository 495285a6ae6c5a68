#!/usr/bin/env bash
# The lab in containers, with one command: builds the lab-node image from our binaries and
# Debian's packages (no registry), makes the lab's certificates, and starts NATS, the
# coordinator and three agents with docker-compose (docker/lab/compose.yaml).
#
#   scripts/lab-up.sh            # release binaries (cargo build --release first)
#   scripts/lab-up.sh down       # stop and remove the lab (certificates stay)
#
# Environment: LAB_BIN_DIR (default target/release), LAB_PROJECT (default parti-sim-lab),
# LAB_DIR (certificates and configs, default docker/lab/state).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_dir="${LAB_BIN_DIR:-$root/target/release}"
project="${LAB_PROJECT:-parti-sim-lab}"
state="${LAB_DIR:-$root/docker/lab/state}"
compose=(docker-compose -p "$project" -f "$root/docker/lab/compose.yaml")

log() { printf 'lab-up: %s\n' "$*" >&2; }

export LAB_CERTS="$state/certs" LAB_CONFIGS="$state/configs"
if [ "${1:-}" = "down" ]; then
  LAB_IMAGE=none "${compose[@]}" down -v --remove-orphans
  exit 0
fi

for binary in coordinator agent simctl; do
  [ -x "$bin_dir/$binary" ] || { log "$bin_dir/$binary missing: cargo build --release (or set LAB_BIN_DIR)"; exit 2; }
done
"$root/scripts/setup.sh" >/dev/null
base="$("$root/scripts/lab-image.sh")"

# The node image: the base and our four binaries, tagged by their content.
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp "$bin_dir/coordinator" "$bin_dir/agent" "$bin_dir/simctl" "$context/"
cp -L "$root/.tools/bin/nats-server" "$context/nats-server"
cp "$root/docker/lab/Dockerfile" "$context/"
tag="$(cat "$context"/* | sha256sum | cut -c1-12)"
export LAB_IMAGE="parti-sim/lab-node:$tag"
if ! docker image inspect "$LAB_IMAGE" >/dev/null 2>&1; then
  log "building $LAB_IMAGE"
  docker build -q --build-arg "BASE=$base" -t "$LAB_IMAGE" "$context" >/dev/null
fi

mkdir -p "$state/configs"
if [ ! -f "$LAB_CERTS/ca.pem" ]; then
  "$bin_dir/simctl" certs init --dir "$LAB_CERTS" --coordinator-host coordinator \
    --agent host-1,host-2,host-3 >/dev/null
fi
# The certificates are read by root in the containers; the keys stay 0600.
cp "$root"/configs/*.yaml "$state/configs/"

"${compose[@]}" up -d
log "up: docker-compose -p $project -f docker/lab/compose.yaml exec coordinator simctl agents"
