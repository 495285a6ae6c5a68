#!/usr/bin/env bash
# The README's run command: install what is needed, then run the main job.
# Until the simulator (simctl) exists, the main job is parti's demo: a managed nats-server,
# four workers sharing 16 partitions, a graceful leave and a crash, every message checked.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
./scripts/setup.sh
exec cargo run --release -p parti --example demo
